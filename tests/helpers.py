"""Test helpers: compose the real Hydra config and run ``vitstem-train`` in-process on tiny settings."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from vitstem.paths import CONF_DIR


# A model small enough for a CPU test: 1 block of width 32 at 16 px.
TINY = ["model=vit_p_32", "model.depth=1", "model.embed_dim=32", "model.num_heads=2",
        "data.img_size=16", "model.img_size=16",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "data.loader.batch_size=8", "scheduler.warmup=0",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]


def compose_config(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """The config ``vitstem-train <overrides>`` would run, with its Hydra runtime fields set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="test"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.run_dir = str(run_dir)
    return cfg


def train(overrides: list[str], run_dir: Path) -> dict:
    """Run ``vitstem-train`` in-process with ``overrides`` into ``run_dir``; return its results."""
    from vitstem.train import run

    cfg = compose_config(overrides, run_dir)
    with open_dict(cfg):
        del cfg.hydra
    return run(cfg)


def run_cli(*args, cwd):
    """``python -m vitstem.train *args`` in a subprocess (the real CLI: exit code, stderr)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "vitstem.train", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)
