"""Checks of a composed config that must fail before any compute starts, with the fix in the message."""
from __future__ import annotations

from omegaconf import DictConfig


class ConfigError(ValueError):
    """A setting that cannot work; the message names the key, the value and what to do."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: DictConfig) -> None:
    """Range checks on the settings whose bad values would otherwise fail late or silently.

    Checks that belong to a component live there (the loader's batch size in the DataModule, the
    stem's stride and image-size invariants in the stem); they too run before any compute.
    """
    opt = cfg.optimizer
    _require(opt.lr > 0, f"optimizer.lr={opt.lr} must be positive (it is the base lr at optimizer.ref_batch_size)")
    _require(opt.ref_batch_size > 0, f"optimizer.ref_batch_size={opt.ref_batch_size} must be positive")
    _require(opt.weight_decay >= 0, f"optimizer.weight_decay={opt.weight_decay} must be >= 0")
    _require(0 <= cfg.loss.label_smoothing < 1, f"loss.label_smoothing={cfg.loss.label_smoothing} must be in [0, 1)")
    _require(cfg.trainer.max_epochs is not None and cfg.trainer.max_epochs >= 1,
             f"trainer.max_epochs={cfg.trainer.max_epochs} must be at least 1")
    _require(cfg.scheduler.warmup >= 0, f"scheduler.warmup={cfg.scheduler.warmup} must be >= 0")
