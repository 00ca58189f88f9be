"""When last.ckpt is written: once per optimizer step with gradient accumulation, by time, at epoch ends."""
import types

import pytest

import vitstem.runs.checkpoint as checkpoint
from tests.helpers import TINY, train

RUN = [o for o in TINY if not o.startswith("trainer.limit_train_batches")] + ["trainer.limit_train_batches=8"]


@pytest.fixture
def saves(monkeypatch):
    """The global_step of every checkpoint written."""
    steps = []
    save = checkpoint.RunCheckpoint.save

    def counted(self, trainer):
        steps.append(trainer.global_step)
        return save(self, trainer)
    monkeypatch.setattr(checkpoint.RunCheckpoint, "save", counted)
    return steps


@pytest.mark.e2e
def test_gradient_accumulation_saves_once_per_optimizer_step(tmp_path, saves):
    results = train(RUN + ["trainer.accumulate_grad_batches=2", "callbacks.checkpoint.every_n_steps=1",
                           "callbacks.checkpoint.every_n_minutes=null"], tmp_path)
    assert results["steps"] == 4
    assert saves == [1, 2, 3, 4]  # steps 1-3 after their step, 4 at the epoch end (after its validation)


class TenMinuteSteps(checkpoint.L.Callback):
    """Moves the fake clock of the test below to 10 minutes per training step, at each step's start."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        checkpoint.time.now = 600.0 * (trainer.global_step + 1)


@pytest.mark.e2e
def test_checkpoints_by_time_and_at_epoch_ends(tmp_path, saves, monkeypatch):
    clock = types.SimpleNamespace(now=0.0)
    clock.monotonic = lambda: clock.now
    monkeypatch.setattr(checkpoint, "time", clock)
    results = train(RUN + ["callbacks.checkpoint.every_n_minutes=25",
                           "+callbacks.clock={_target_: tests.runs.test_checkpoint.TenMinuteSteps}"], tmp_path)
    assert results["steps"] == 8
    assert saves == [3, 6, 8]  # 30 minutes after the start, 30 after that, then the epoch end


@pytest.mark.parametrize("key,value", [("every_n_minutes", 0), ("every_n_steps", 0), ("sync_every", 0)])
def test_a_bad_cadence_is_one_line_before_compute(tmp_path, key, value):
    from vitstem.config import ConfigError

    with pytest.raises(ConfigError, match=f"callbacks.checkpoint.{key}={value} must be"):
        train(RUN + [f"callbacks.checkpoint.{key}={value}"], tmp_path)
