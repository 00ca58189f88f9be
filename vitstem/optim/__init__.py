"""Optimizers, weight-decay groups and lr schedules built from the ``optimizer``, ``weight_decay`` and
``scheduler`` config groups."""
from __future__ import annotations

import logging
from typing import Any

import hydra
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from vitstem.optim import param_groups
from vitstem.optim.schedules import schedule

log = logging.getLogger("vitstem")


def scaled_lr(lr: float, ref_batch_size: int, global_batch_size: int) -> float:
    """The linear scaling rule (Goyal et al. 2017): the base ``lr`` is given at ``ref_batch_size``."""
    return lr * global_batch_size / ref_batch_size


def build_optimizer(model: nn.Module, optimizer: dict, weight_decay: dict, global_batch_size: int
                    ) -> tuple[Optimizer, list[param_groups.ParamRow]]:
    """The optimizer over ``model``'s parameter groups, and the per-parameter table behind it."""
    cfg = dict(optimizer)
    lr = scaled_lr(cfg.pop("lr"), cfg.pop("ref_batch_size"), global_batch_size)
    wd = cfg.pop("weight_decay")
    if cfg.pop("weight_decay_scaled_by") == "schedule":  # torch multiplies wd by the lr: divide it out (big_vision)
        wd /= lr
    rows = param_groups.assign(model, lr, wd, **weight_decay)
    factory = hydra.utils.instantiate(cfg, _partial_=True)
    return factory(param_groups.to_optimizer_groups(model, rows), lr=lr), rows


def warmup_steps(scheduler: dict, steps_per_epoch: int) -> int:
    """The warm-up length of ``scheduler`` in optimizer steps, whatever its ``warmup_unit``."""
    warmup, unit = scheduler["warmup"], scheduler["warmup_unit"]
    return round(warmup * steps_per_epoch) if unit == "epochs" else int(warmup)


def _lengths(scheduler: dict, steps_per_epoch: int, epochs: int) -> tuple[int, int]:
    """The warm-up and the decay (the run less its cool-down) in the units the schedule steps in
    (``interval``: steps or epochs)."""
    interval, unit = scheduler["interval"], scheduler["warmup_unit"]
    if interval not in ("step", "epoch") or unit not in ("steps", "epochs"):
        raise ValueError(f"scheduler.interval={interval!r} must be step|epoch, scheduler.warmup_unit={unit!r} steps|epochs")
    decay_epochs = epochs - scheduler["cooldown_epochs"]
    if decay_epochs < 1:
        raise ValueError(f"scheduler.cooldown_epochs={scheduler['cooldown_epochs']} leaves no epoch of the "
                         f"{epochs}-epoch run to decay in: lower it or raise trainer.max_epochs")
    if interval == "step":
        return warmup_steps(scheduler, steps_per_epoch), steps_per_epoch * decay_epochs
    warmup = scheduler["warmup"]
    return round(warmup if unit == "epochs" else warmup / steps_per_epoch), decay_epochs


def fit_warmup(scheduler: dict, steps_per_epoch: int, epochs: int) -> dict:
    """``scheduler``, its warm-up cut to half the run (with a warning) when it would last the whole run or more."""
    warmup, total = _lengths(scheduler, steps_per_epoch, epochs)
    if warmup < total:
        return scheduler
    unit, epochs = scheduler["warmup_unit"], epochs - scheduler["cooldown_epochs"]
    half = epochs / 2 if unit == "epochs" else steps_per_epoch * epochs // 2
    log.warning("scheduler.warmup=%s %s is not shorter than the run (%d %ss): warming up for %s %s instead (half the "
                "run)", scheduler["warmup"], unit, total, scheduler["interval"], half, unit)
    return {**scheduler, "warmup": half}


def build_scheduler(optimizer: Optimizer, scheduler: dict, steps_per_epoch: int, epochs: int) -> dict[str, Any]:
    """A Lightning lr-scheduler dict: ``LambdaLR`` stepped every step, or once per epoch (pycls).

    With ``interval=epoch`` Lightning calls ``scheduler.step()`` at each epoch end, so epoch ``e`` trains at
    ``lr * lr_factor(e)`` with lengths counted in epochs (a warm-up given in steps is rounded to epochs).
    ``warmup_start_lr`` / ``min_lr``, when set, are absolute lrs (DeiT's ``--warmup-lr`` / ``--min-lr``, which do
    not scale with the batch) and replace the factors; the last ``cooldown_epochs`` stay at the final lr.
    """
    warmup, total = _lengths(scheduler, steps_per_epoch, epochs)
    cfg = {k: v for k, v in scheduler.items() if k not in ("interval", "warmup_unit", "warmup", "cooldown_epochs")}
    cfg["milestones"] = tuple(cfg.get("milestones") or ())
    peak = optimizer.defaults["lr"]  # the run's lr (after batch scaling): absolute lrs become factors of it
    for absolute, factor in (("warmup_start_lr", "warmup_start_factor"), ("min_lr", "min_factor")):
        if (value := cfg.pop(absolute)) is not None:
            if value > peak:  # timm's schedule then rises to it; so does ours, but say so
                log.warning("scheduler.%s=%g is above the run's peak lr %.3g (optimizer.lr scaled to the global batch "
                            "%s): the lr rises towards it", absolute, value, peak, "of this run")
            cfg[factor] = value / peak
    return {"scheduler": LambdaLR(optimizer, schedule(total, warmup, **cfg)), "interval": scheduler["interval"]}
