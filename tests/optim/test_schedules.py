"""lr schedules through a real optimizer and ``LambdaLR``, and through Lightning (``interval: epoch``)."""
from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

from vitstem.optim import build_scheduler
from vitstem.optim.schedules import lr_factor

from tests.helpers import TINY, train

BASE = 0.4


def lrs(scheduler: dict, steps_per_epoch: int, epochs: int) -> list[float]:
    """The lr of every step (interval step) or epoch (interval epoch), read off a real SGD."""
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=BASE)
    sched = build_scheduler(opt, scheduler, steps_per_epoch, epochs)
    n = steps_per_epoch * epochs if sched["interval"] == "step" else epochs
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched["scheduler"].step()
    return out


COSINE = dict(decay="cosine", warmup=2, warmup_unit="epochs", warmup_start_factor=0.1, min_factor=0.01,
              warmup_start_lr=None, min_lr=None, cooldown_epochs=0, warmup_overlap=False, interval="step")


def test_cosine_per_step():
    lr = lrs(COSINE, steps_per_epoch=10, epochs=10)  # 100 steps, 20 of warm-up
    assert lr[0] == pytest.approx(0.1 * BASE)                              # step 0: start factor
    assert lr[10] == pytest.approx((0.1 + 0.9 * 10 / 20) * BASE)           # half-way through warm-up
    assert lr[20] == pytest.approx(BASE)                                   # end of warm-up: the peak
    assert lr[60] == pytest.approx((0.01 + 0.99 * 0.5) * BASE)             # half-way through the cosine
    assert lr[99] == pytest.approx((0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 79 / 80))) * BASE)


def test_warmup_in_steps_and_step_decay():
    cfg = dict(COSINE, decay="step", warmup=5, warmup_unit="steps", milestones=[0.5], gamma=0.1, min_factor=0.0)
    lr = lrs(cfg, steps_per_epoch=10, epochs=2)
    assert lr[0] == pytest.approx(0.1 * BASE) and lr[5] == pytest.approx(BASE)
    assert lr[9] == pytest.approx(BASE) and lr[10] == pytest.approx(0.1 * BASE)


def test_cosine_per_epoch():
    lr = lrs(dict(COSINE, interval="epoch", warmup=5, min_factor=0.0), steps_per_epoch=100, epochs=45)
    assert lr[0] == pytest.approx(0.1 * BASE) and lr[5] == pytest.approx(BASE)
    assert lr[25] == pytest.approx(0.5 * BASE)  # 20 of the 40 cosine epochs


def test_pycls_overlap_matches_get_epoch_lr():
    """pycls: lr(e) = 0.5 (1 + cos(pi e / T)) x (0.1 (1 - e / W) + e / W) during warm-up, no ramp after."""
    for e in (0, 3, 5, 25, 49):
        ramp = 0.1 * (1 - e / 5) + e / 5 if e < 5 else 1.0
        pycls = 0.5 * (1 + math.cos(math.pi * e / 50)) * ramp
        assert lr_factor(e, 50, 5, "cosine", warmup_start_factor=0.1, warmup_overlap=True) == pytest.approx(pycls)


@pytest.mark.e2e
def test_interval_epoch_in_lightning(tmp_path):
    """A real run: with interval=epoch the lr is constant within an epoch and steps once per epoch."""
    train(TINY + ["trainer.max_epochs=3", "scheduler.warmup=1", "scheduler.warmup_start_factor=0.1",
                  "scheduler.interval=epoch"], tmp_path)
    rows = [r for r in csv.DictReader(open(tmp_path / "metrics.csv")) if r["train/lr"]]
    base = 2e-3 * 8 / 128  # optimizer.lr at ref_batch_size 128, global batch 8
    expected = [0.1 * base] * 2 + [base] * 2 + [0.5 * base] * 2  # 2 steps per epoch; cosine over epochs 1..2
    assert [int(r["step"]) for r in rows] == list(range(6))
    assert [float(r["train/lr"]) for r in rows] == pytest.approx(expected, rel=1e-6)


def test_absolute_warmup_and_min_lr_replace_the_factors():
    """DeiT: warm-up from lr 1e-6 and cosine to lr 1e-5, whatever the peak lr (BASE here)."""
    cfg = {**COSINE, "warmup_start_lr": 1e-6, "min_lr": 1e-5}
    lr = lrs(cfg, steps_per_epoch=10, epochs=10)
    assert lr[0] == pytest.approx(1e-6) and lr[20] == pytest.approx(BASE)
    assert lr[-1] == pytest.approx(1e-5 + (BASE - 1e-5) * 0.5 * (1 + math.cos(math.pi * 79 / 80)))


def test_cooldown_epochs_hold_the_final_lr():
    """The cosine ends cooldown_epochs early; those epochs train at the final lr (timm's cool-down)."""
    cfg = {**COSINE, "cooldown_epochs": 3}
    lr = lrs(cfg, steps_per_epoch=10, epochs=10)  # decay over 70 steps (20 warm-up), then 30 at the minimum
    assert lr[69] > 0.01 * BASE and lr[70:] == pytest.approx([0.01 * BASE] * 30)
    with pytest.raises(ValueError, match="cooldown_epochs=10 leaves no epoch"):
        lrs({**cfg, "cooldown_epochs": 10}, steps_per_epoch=10, epochs=10)
