"""DDP on two CPU processes (gloo) trains the same weights as one process with the same global batch.

Full-batch training (64 images, global batch 64 = 2 x 32 or 1 x 64): every step sees the whole training
set, so the order in which a sampler deals it out (Lightning's DistributedSampler under DDP, the
DataLoader's own shuffle in one process) cannot matter, and any difference is DDP's own: gradients
averaged across ranks, each rank a different half, the lr scaled by the global batch, synced validation
metrics. SGD, because Adam's update ignores a gradient's scale and would hide gradients summed instead of
averaged. The patchify stem has no BatchNorm: with BN each rank normalises with its own half unless
``trainer.sync_batchnorm=true``, which torch runs on GPUs only.
"""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import train

pytestmark = pytest.mark.e2e  # every test here trains (kill-and-resume, DDP)

FULL_BATCH = ["model=vit_p_32", "model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.img_size=16",
              "data.train_size=64", "data.val_size=64", "trainer.max_epochs=8", "scheduler.warmup=0", "optimizer=sgd",
              "trainer.accelerator=cpu", "trainer.deterministic=true", "trainer.enable_progress_bar=false"]


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def val_losses(run_dir):
    return [float(r["val/loss"]) for r in csv.DictReader(open(run_dir / "metrics.csv")) if r["val/loss"]]


def test_two_cpu_ranks_with_half_batches_train_what_one_process_trains(tmp_path):
    ddp_dir = tmp_path / "ddp"
    ddp_run = [*FULL_BATCH, "trainer.devices=2", "trainer.strategy=ddp", "data.loader.batch_size=32"]
    proc = subprocess.run([sys.executable, "-m", "vitstem.train", *ddp_run, f"hydra.run.dir={ddp_dir}"],
                          capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ddp = json.loads((ddp_dir / "results.json").read_text())
    one = train(FULL_BATCH + ["data.loader.batch_size=64"], tmp_path / "one")
    assert ddp["status"] == one["status"] == "finished"
    assert ddp["global_batch_size"] == one["global_batch_size"] == 64 and ddp["steps"] == one["steps"] == 8

    train(FULL_BATCH + ["data.loader.batch_size=64", "optimizer.lr=0.2"], tmp_path / "twice")
    summed = max_diff(weights(tmp_path / "twice"), weights(tmp_path / "one"))  # as if gradients were summed
    assert max_diff(weights(ddp_dir), weights(tmp_path / "one")) < 1e-6 and summed > 1e-3
    assert val_losses(ddp_dir) == pytest.approx(val_losses(tmp_path / "one"), rel=1e-6)
    assert ddp["final_val_acc1"] == one["final_val_acc1"]
