"""Run folders: resume by running the same command, exactness after SIGKILL, skip / retrain / refuse, signals."""
import csv
import json

import pytest
import torch

from tests.helpers import TINY, run_cli, train
from vitstem.config import ConfigError
from vitstem.train import Interrupted

pytestmark = pytest.mark.e2e  # every test here trains (kill-and-resume, DDP)

# 3 epochs of 8 steps, mixup (NumPy + torch RNG in the training step), a checkpoint every 3 steps.
EXACT = [o for o in TINY if not o.startswith(("trainer.limit_train_batches", "trainer.max_epochs"))] + [
    "data.train_size=64", "data.val_size=32", "trainer.max_epochs=3", "trainer.deterministic=true",
    "mixup=xiao", "callbacks.checkpoint.every_n_steps=3", "optimizer.lr=3e-3"]


def _results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def _val_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(r["step"], r["val/acc1"], r["val/loss"]) for r in csv.DictReader(f) if r.get("val/acc1")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    return train(EXACT, run_dir), run_dir


def test_two_deterministic_runs_are_identical(uninterrupted, tmp_path):
    first, first_dir = uninterrupted
    second = train(EXACT, tmp_path)
    for key in ("final_val_acc1", "best_val_acc1", "final_train_loss", "steps"):
        assert second[key] == first[key], key
    assert _val_rows(tmp_path) == _val_rows(first_dir)


@pytest.mark.parametrize("kill_step", [7, 16])  # mid-epoch 0 (last checkpoint: step 6) and an epoch boundary
def test_a_run_killed_with_sigkill_resumes_exactly(uninterrupted, tmp_path, kill_step):
    expected, expected_dir = uninterrupted
    kill = f"+callbacks.kill={{_target_: tests.helpers.SignalAt, step: {kill_step}, signal: SIGKILL}}"
    killed = run_cli(*EXACT, kill, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert killed.returncode == -9 and not (tmp_path / "results.json").exists()
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == (kill_step // 3) * 3 or saved["global_step"] == 16
    resumed = run_cli(*EXACT, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = _results(tmp_path)
    assert results["status"] == "finished" and results["resumed_from"] == str(tmp_path / "checkpoints" / "last.ckpt")
    for key in ("final_val_acc1", "best_val_acc1", "final_train_loss", "steps", "epochs"):
        assert results[key] == expected[key], key
    assert _val_rows(tmp_path) == _val_rows(expected_dir)  # metrics.csv kept its earlier rows, no duplicates


def test_a_finished_run_is_not_retrained(uninterrupted, tmp_path):
    train(TINY, tmp_path)
    before = (tmp_path / "results.json").read_text()
    again = run_cli(*TINY, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert again.returncode == 0 and "not retrained" in again.stderr + again.stdout
    assert (tmp_path / "results.json").read_text() == before
    fresh = run_cli(*TINY, "retrain=true", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    sibling = tmp_path.with_name(tmp_path.name + "-retrain1")
    assert _results(sibling)["status"] == "finished" and (tmp_path / "results.json").read_text() == before


def test_a_folder_of_other_settings_is_refused(tmp_path):
    with pytest.raises(Interrupted):
        train(TINY + ["trainer.limit_train_batches=4",
                      "+callbacks.stop={_target_: tests.helpers.SignalAt, step: 2, signal: SIGUSR1}"], tmp_path)
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(ConfigError, match=r"holds a run with other settings \(optimizer.lr: .* -> 0.001"):
        train(TINY + ["trainer.limit_train_batches=4", "optimizer.lr=1e-3"], tmp_path)
    assert (tmp_path / "results.json").read_text() == before


@pytest.mark.parametrize("signal", ["SIGTERM", "SIGINT"])  # SIGUSR1: the tests below
def test_a_signal_saves_a_checkpoint_and_the_rerun_finishes(tmp_path, signal):
    overrides = TINY + ["trainer.limit_train_batches=6", "callbacks.checkpoint.every_n_steps=null"]
    stop = f"+callbacks.stop={{_target_: tests.helpers.SignalAt, step: 2, signal: {signal}}}"
    with pytest.raises(Interrupted, match=f"stopped by {signal}"):
        train(overrides + [stop], tmp_path)
    interrupted = _results(tmp_path)  # the signal arrives after step 2's checkpoint hook: acted on after step 3
    assert interrupted["status"] == "interrupted" and interrupted["steps"] == 3
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    results = train(overrides, tmp_path)
    assert results["status"] == "finished" and results["steps"] == 6 and results["resumed_from"]


def test_wandb_continues_the_same_run_after_a_resume(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = TINY + ["logger=wandb", "trainer.limit_train_batches=4"]
    with pytest.raises(Interrupted):
        train(overrides + ["+callbacks.stop={_target_: tests.helpers.SignalAt, step: 2, signal: SIGUSR1}"], tmp_path)
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    assert train(overrides, tmp_path)["status"] == "finished"
    offline = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(f"-{run_id}" in p.name for p in offline)  # "-1" added within one second
