"""Short runs work (a warm-up longer than the run, fast_dev_run); runs that would train nothing are refused."""
import csv
import json
import logging

import pytest
import torch

from tests.helpers import TINY, train
from vitstem.config import ConfigError
from vitstem.optim import build_scheduler, fit_warmup

COSINE = dict(decay="cosine", warmup=1, warmup_unit="epochs", warmup_start_factor=0.0, min_factor=0.0,
              warmup_start_lr=None, min_lr=None, cooldown_epochs=0, warmup_overlap=False, interval="step")


@pytest.mark.parametrize("scheduler,steps_per_epoch,epochs,warmup", [
    (COSINE, 10, 1, 0.5),                                            # 10 warm-up steps of 10: 5
    (dict(COSINE, warmup=50, warmup_unit="steps"), 10, 3, 15),       # 50 of 30 steps: 15
    (dict(COSINE, warmup=5, interval="epoch"), 100, 3, 1.5),         # 5 of 3 epochs: 1.5 (rounds to 2 of 3)
    (dict(COSINE, warmup=3, warmup_unit="steps", interval="epoch"), 3, 1, 1),  # 1 epoch of 1: 1 step
    (COSINE, 10, 2, 1),                                              # shorter than the run: unchanged
])
def test_a_warmup_as_long_as_the_run_is_cut_to_half(scheduler, steps_per_epoch, epochs, warmup):
    fitted = fit_warmup(scheduler, steps_per_epoch, epochs)
    assert fitted["warmup"] == warmup and {**fitted, "warmup": scheduler["warmup"]} == scheduler
    build_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)]), fitted, steps_per_epoch, epochs)  # accepted


@pytest.mark.e2e
def test_one_epoch_with_a_one_epoch_warmup_trains_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="vitstem"):
        results = train(TINY + ["trainer.max_epochs=1", "scheduler.warmup=1"], tmp_path)
    assert results["status"] == "finished" and results["steps"] == 2
    assert "scheduler.warmup=1 epochs is not shorter than the run (2 steps): warming up for 0.5 epochs" in caplog.text
    lrs = [float(r["train/lr"]) for r in csv.DictReader(open(tmp_path / "metrics.csv")) if r["train/lr"]]
    assert lrs == pytest.approx([0.0, 2e-3 * 8 / 128])  # 1 warm-up step from 0, then the cosine's peak


@pytest.mark.e2e
def test_fast_dev_run_finishes_and_writes_results(tmp_path):
    results = train(TINY + ["+trainer.fast_dev_run=true", "scheduler.warmup=1", "ema=pycls", "mixup=xiao"], tmp_path)
    assert results["status"] == "finished" and results["steps"] == 1 and results["error"] is None
    assert results["final_val_acc1"] is not None and results["final_val_ema_acc1"] is not None
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("overrides,message", [
    (["data.train_size=4"], "the run would train 0 steps: 4 training images make no full batch of "
                            "data.loader.batch_size=8 per device x 1 devices"),
    (["trainer.limit_train_batches=0.0001"], "You requested to check 0.0001 of the `train_dataloader`"),
])
def test_a_run_that_would_train_nothing_is_refused(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(TINY + overrides, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and results["steps"] == 0
    assert not (tmp_path / "checkpoints").exists()
