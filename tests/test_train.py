"""vitstem-train end to end: results.json, learning, logging, composition and early errors."""
import csv
import json

import pytest
import torch
from hydra.errors import MissingConfigException

from tests.helpers import TINY, compose_config, run_app, run_cli, train
from vitstem.config import unlisted_keys, validate, values_of
from vitstem.paths import CONF_DIR

RESULT_KEYS = {"status", "final_val_acc1", "best_val_acc1", "final_val_err1", "best_val_err1", "epochs", "steps",
               "wall_time_s", "train_images_per_s", "diverged_at_step", "overrides", "git_commit", "versions"}


@pytest.mark.e2e
def test_default_config_writes_a_complete_run_directory(tiny_run, tiny_results):
    tmp_path, results = tiny_run, tiny_results  # tests/conftest.py: train(TINY, tiny_run) returned tiny_results
    assert RESULT_KEYS <= set(results)
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(results, default=str))
    assert results["status"] == "finished" and results["steps"] == 2 and results["epochs"] == 1
    assert results["diverged_at_step"] is None
    assert 0 <= results["final_val_acc1"] <= 100
    assert results["final_val_err1"] == pytest.approx(100 - results["final_val_acc1"])
    assert results["overrides"] == TINY
    assert {"torch", "timm", "lightning", "python"} <= set(results["versions"])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and (tmp_path / "config.yaml").is_file()
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and any(k.startswith("model.blocks.0.attn.qkv") for k in ckpt["state_dict"])
    columns = set(next(csv.reader(open(tmp_path / "metrics.csv"))))
    assert {"train/loss", "train/lr", "val/loss", "val/acc1", "val/acc5", "train/images_per_s"} <= columns


@pytest.mark.e2e
def test_a_short_run_learns(tmp_path):
    """A 2-block ViT on 16 px synthetic shapes: far above the 10% chance level in ~300 steps."""
    results = train(["model=vit_p_32", "model.depth=2", "model.embed_dim=64", "model.img_size=16",
                     "data.train_size=2048", "data.val_size=500", "data.loader.batch_size=64",
                     "trainer.max_epochs=6", "scheduler.warmup=20", "scheduler.warmup_unit=steps",
                     "trainer.enable_progress_bar=false"], tmp_path)
    assert results["status"] == "finished" and results["steps"] == 6 * 32
    assert results["final_val_acc1"] > 40, results


@pytest.mark.e2e
def test_divergence_is_detected_and_recorded(tmp_path):
    results = train(TINY + ["optimizer.lr=1e30", "trainer.limit_train_batches=6"], tmp_path)
    assert results["status"] == "diverged"
    assert results["diverged_at_step"] is not None and results["steps"] <= 6
    assert results["final_val_acc1"] is None and results["final_val_err1"] is None  # no result from blown-up weights
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()  # nor a checkpoint of them


@pytest.mark.e2e
def test_wandb_offline_writes_its_run_files(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    results = train(TINY + ["logger=wandb", "name=wandbtest", "tags=[a,b]"], tmp_path)
    assert results["status"] == "finished"
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    import wandb
    assert wandb.run is None  # closed at the end of the job
    assert (tmp_path / "metrics.csv").is_file()  # the CSV logger runs beside it


def group_options():
    """Every (group, option) pair; a study's forms (``conf/sweep/<study>/tiny.yaml``) are options of ``sweep``.
    ``conf/paper/`` holds the papers' tables, data that experiments include (tests/test_recipes.py), not a choice."""
    for group_dir in sorted(p for p in CONF_DIR.rglob("*") if p.is_dir() and p.name not in ("loader", "paper")):
        group = group_dir.relative_to(CONF_DIR).as_posix()
        prefix = ""
        if group.startswith("sweep/"):
            group, prefix = "sweep", group.split("/", 1)[1] + "/"
        for option in sorted(group_dir.glob("*.yaml")):
            yield group, prefix + option.stem


def parent_choice(group: str) -> list[str]:
    """For a nested group (``data/augment``), a parent option whose defaults list includes it."""
    if "/" not in group or group.startswith("hydra/"):  # Hydra's own groups (hydra/launcher) need no parent
        return []
    if f"- {group}:" in (CONF_DIR / "train.yaml").read_text():  # chosen by the root config itself (data/augment)
        return []
    parent, child = group.rsplit("/", 1)
    for option in sorted((CONF_DIR / parent).glob("*.yaml")):
        if f"{child}:" in option.read_text():
            return [f"{parent}={option.stem}"]
    raise AssertionError(f"no {parent} option uses {group}")


@pytest.mark.parametrize("group,option", list(group_options()))
def test_every_config_group_option_composes(group, option):
    cfg = compose_config(parent_choice(group) + [f"{group}={option}"])
    assert cfg.hydra.runtime.choices[group] == option
    assert cfg.model.name and cfg.optimizer.lr > 0 and cfg.data.loader.batch_size >= 1
    validate(cfg)  # and passes the schema
    assert not (keys := unlisted_keys(values_of(cfg))), f"not in vitstem/config.py's schema nor UNCHECKED: {keys[0][0]}"


def test_unknown_group_option_names_the_choices():
    with pytest.raises(MissingConfigException, match="Could not find 'model/vit_nope'"):
        compose_config(["model=vit_nope"])


@pytest.mark.e2e
@pytest.mark.parametrize("override,message", [
    ("optimizer.lr=-0.1", "optimizer.lr=-0.1 must be positive"),
    ("model/stem=conv_xiao_4gf", "multiply to 16, not patch_size=4"),
])
def test_bad_override_fails_before_training(tmp_path, override, message):
    proc = run_app(override, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and results["steps"] == 0 and message in results["error"]
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.e2e
def test_help_and_cfg_job(tmp_path):
    helped = run_cli("--help", cwd=tmp_path)
    assert helped.returncode == 0
    stems = next(line for line in helped.stdout.splitlines() if line.strip().startswith("model/stem:"))
    assert "conv_small, " in stems and "conv_xiao_18gf, " in stems and "optimizer: adam, adamw, lamb, sgd" in helped.stdout
    shown = run_cli("--cfg", "job", "model=vit_c_32", "model/attention=relu", cwd=tmp_path)
    assert shown.returncode == 0
    for line in ("depth: 3", "channels: 32", "activation: relu", "embed_dim: 128"):
        assert line in shown.stdout
    assert not list(tmp_path.rglob("results.json"))  # --cfg prints and runs nothing


def test_component_checks_also_fail_before_training(tmp_path):
    """Checks owned by a component (the synthetic set's smallest image) stop the run before step 0, naming the key."""
    from vitstem.config import ConfigError

    with pytest.raises(ConfigError, match=r"data.img_size=4: the synthetic data set renders images of 8 px or more"):
        train(TINY + ["data.img_size=4"], tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and results["steps"] == 0
