"""Run folders: resume by running the same command, exactness at every boundary and stop, skip / retrain / refuse,
signals."""
import csv
import json
import os
import signal as signals

import pytest
import torch

from tests.helpers import TINY, run_app, run_forked, train
from tests.runs.stops import Killed
from vitstem.config import ConfigError
from vitstem.train import Interrupted

pytestmark = pytest.mark.e2e  # every test here trains (kill-and-resume, DDP)

# 3 epochs of 8 steps, mixup (NumPy + torch RNG in the training step), a checkpoint every 3 steps.
EXACT = [o for o in TINY if not o.startswith(("trainer.limit_train_batches", "trainer.max_epochs"))] + [
    "data.train_size=64", "data.val_size=32", "trainer.max_epochs=3", "trainer.deterministic=true",
    "mixup=xiao", "callbacks.checkpoint.every_n_steps=3", "optimizer.lr=3e-3"]
# The boundary matrix: 2 epochs of 2 steps, a checkpoint after every step (so that a kill finds one anywhere).
SMALL = [o for o in EXACT if not o.startswith(("data.train_size", "data.val_size", "trainer.max_epochs",
                                               "callbacks.checkpoint.every_n_steps"))] + [
    "data.train_size=16", "data.val_size=8", "trainer.max_epochs=2", "callbacks.checkpoint.every_n_steps=1"]
# boundary: (where a signal is sent so that it is acted on there, where a kill or Ctrl-C twice finds its checkpoint)
BOUNDARIES = {"first_step": ("step:0", "step:1"), "epoch_last_step": ("step:1", "step:2"),
              "validation": ("val:0", "val:0"), "last_step": ("step:3", "val:1"), "after_training": ("end", "end")}
STOPS = ("kill", "SIGTERM", "SIGINT", "SIGINTx2")
CORE = [(b, s) for b in BOUNDARIES for s in STOPS
        if s in ("kill", "SIGTERM") or (b, s) in {("epoch_last_step", "SIGINT"), ("first_step", "SIGINTx2"),
                                                  ("validation", "SIGINTx2"), ("after_training", "SIGINTx2")}]
MATRIX = [(b, s) for b in BOUNDARIES for s in STOPS] if os.environ.get("VITSTEM_RESUME_MATRIX") else CORE
KEYS = ("status", "final_val_acc1", "final_val_acc5", "best_val_acc1", "final_train_loss", "steps", "epochs")
TIMING = ("images_per_s", "mfu")  # columns measured in seconds: not expected to repeat


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


@pytest.mark.e2e
@pytest.mark.parametrize("kill_step,every", [(7, 3), (8, 8)])  # mid-epoch 0; right after epoch 0's last step (the
def test_a_run_killed_with_sigkill_resumes_exactly(uninterrupted, tmp_path, kill_step, every):  # known bug)
    expected, expected_dir = uninterrupted
    kill = f"+callbacks.kill={{_target_: tests.runs.stops.StopAt, at: 'step:{kill_step}', how: SIGKILL}}"
    command = [*EXACT, f"callbacks.checkpoint.every_n_steps={every}", f"hydra.run.dir={tmp_path}"]
    killed = run_forked(*command, kill, cwd=tmp_path)
    assert killed.returncode == -9 and not (tmp_path / "results.json").exists()
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == (kill_step // every) * every
    resumed = run_app(*command, cwd=tmp_path)  # the resume: in this process (the kill needed its own)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = _results(tmp_path)
    assert results["status"] == "finished" and results["resumed_from"] == str(tmp_path / "checkpoints" / "last.ckpt")
    for key in ("final_val_acc1", "best_val_acc1", "final_train_loss", "steps", "epochs"):
        assert results[key] == expected[key], key
    assert _val_rows(tmp_path) == _val_rows(expected_dir)  # metrics.csv kept its earlier rows, no duplicates


def test_a_finished_run_is_not_retrained(uninterrupted, tmp_path):
    train(TINY, tmp_path)
    before = (tmp_path / "results.json").read_text()
    again = run_app(*TINY, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert again.returncode == 0 and "not retrained" in again.stderr + again.stdout
    assert (tmp_path / "results.json").read_text() == before
    fresh = run_app(*TINY, "retrain=true", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
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


def _rows(run_dir):
    """metrics.csv without its timing columns (rows left empty dropped), in order."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [{k: v for k, v in r.items() if v != "" and not any(t in k for t in TIMING)} for r in csv.DictReader(f)]
    return [r for r in rows if set(r) - {"step", "epoch"}]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("small")
    return train(SMALL, run_dir), _rows(run_dir)


@pytest.fixture
def sigint_restored():
    yield
    signals.signal(signals.SIGINT, signals.default_int_handler)


@pytest.mark.e2e
@pytest.mark.parametrize("boundary,stop", MATRIX)
def test_resume_is_exact_at_every_boundary_and_stop(small, tmp_path, boundary, stop, sigint_restored):
    """Stopped at a boundary (a step, an epoch's last step, validation, training's last step, after training) by a
    kill or a signal, the same command again ends as the uninterrupted run: results and every metrics.csv row."""
    expected, expected_rows = small
    at = BOUNDARIES[boundary][stop in ("kill", "SIGINTx2")]  # these stop at once: the checkpoint before counts
    run_dir, copy = tmp_path / "run", tmp_path / "killed"
    stopper = f"+callbacks.stop={{_target_: tests.runs.stops.StopAt, at: '{at}', how: {stop}, copy_to: '{copy}'}}"
    try:
        first = train(SMALL + [stopper], run_dir)
    except Killed:
        run_dir, first = copy, None
    except Interrupted:
        first = _results(run_dir)
        assert first["status"] == "interrupted" and "SIGINT" in first["error"] if stop == "SIGINTx2" else True
    if first is not None and first["status"] == "finished":  # a signal after the last step: nothing to stop
        assert boundary in ("last_step", "after_training") and stop != "SIGINTx2"
        results = first
    else:
        assert first is None or first["status"] == "interrupted", first
        results = train(SMALL, run_dir)
        assert results["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert {k: results[k] for k in KEYS} == {k: expected[k] for k in KEYS}
    assert _rows(run_dir) == expected_rows


def test_rng_restore_with_more_cuda_states_than_devices(monkeypatch, caplog):
    """A checkpoint from a node with more GPUs than this job sees: the states that fit are set, one warning."""
    import torch.cuda.random as cuda_random

    from vitstem.runs.checkpoint import _collect_rng_states, set_rng_states

    set_calls = []

    def set_rng_state(state, device=0):  # torch's: indexes default_generators, one per visible device
        if int(device) >= 1:
            raise IndexError("list index out of range")
        set_calls.append(int(device))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(cuda_random, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(16, dtype=torch.uint8)] * 8)
    states = _collect_rng_states()
    assert len(states["torch.cuda"]) == 8
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    states["torch"] = torch.get_rng_state()
    torch.manual_seed(2)
    with caplog.at_level("WARNING", logger="vitstem"):
        set_rng_states(states)
    assert set_calls == [0] and torch.equal(torch.rand(3), expected)
    assert sum("8 CUDA random states" in r.message for r in caplog.records) == 1
