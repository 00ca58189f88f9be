"""A run folder's identity: the settings a run was made with, and the settings that do not define a run.

Two commands name the same run when their settings agree on every key except those in :data:`NOT_DEFINING`
(where a run writes, how it is shown and logged, whether to retrain, which checkpoint to continue). This list is
the one place that says so: run folder names leave these keys out (``conf/train.yaml``'s
``hydra.job.config.override_dirname.exclude_keys`` reads it through the ``vitstem_not_defining`` resolver), a
folder is compared without them (:func:`differences`), a sweep's fixed settings leave them out
(:mod:`vitstem.sweeps.random`), and a DDP rank's command line gets the :data:`PLANNED` ones from rank 0.

Light on purpose (no torch, no pydantic): the config resolvers import it.
"""
from __future__ import annotations

from pathlib import Path

# A key here also covers the keys below it ("logger" covers logger.wandb.project). Callbacks observe and checkpoint,
# except those in DEFINING: precise BN recomputes the evaluated weights' BatchNorm statistics, so it defines a run.
NOT_DEFINING = ("name", "tags", "run_dir", "ckpt_path", "retrain", "logger", "callbacks", "hydra",
                "trainer.enable_progress_bar", "trainer.enable_model_summary",
                "study.claims", "study.plots", "study.group_by")  # a study's reading of its runs, not how they train
DEFINING = ("callbacks.precise_bn",)
# What rank 0 decides for a run (the folder, the checkpoint to continue, retrain resolved): its ranks are told.
PLANNED = ("run_dir", "ckpt_path", "retrain")


def defines_run(key: str) -> bool:
    """Whether a setting (``optimizer.lr``, ``+logger.wandb.project``, ``~tags``) is part of a run's identity."""
    key = key.lstrip("+~")

    def under(keys):
        return any(key == k or key.startswith(k + ".") or key.startswith(k + "/") for k in keys)
    return under(DEFINING) or not under(NOT_DEFINING)


def settings(cfg: dict, prefix: str = "") -> dict:
    """The defining settings of a (resolved, plain) config, flattened to ``{"optimizer.lr": 0.001, ...}``."""
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if not defines_run(key) and not any(d.startswith(key + ".") for d in DEFINING):
            continue
        if isinstance(v, dict) and v:
            out.update(settings(v, key + "."))
        else:
            out[key] = v
    return out


def differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every defining setting that differs."""
    a, b = settings(old), settings(new)
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "<unset>") != b.get(k, "<unset>")]


def mismatch(run_dir: Path | str, diff: list[str]) -> str:
    """The one-line error for a folder that holds a run of other settings."""
    shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
    return (f"run folder {run_dir} holds a run with other settings ({shown}); pick another folder (name=... or "
            "hydra.run.dir=...) or train afresh beside it with retrain=true")
