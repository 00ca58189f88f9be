"""``results.json``: the one record of a finished (or diverged, or failed) run that sweeps read.

Keys are stable; later tools rely on them:
``status`` ("finished", "diverged", "failed" or "interrupted": stopped by a signal after writing its
checkpoint), ``final_val_acc1``, ``best_val_acc1``,
``final_val_err1``, ``best_val_err1`` (percent), ``final_val_acc5``, ``final_val_ema_acc1`` and
``best_val_ema_acc1`` (null without ``ema``), ``final_train_loss``, ``epochs``,
``steps``, ``wall_time_s``, ``train_images_per_s``, ``diverged_at_step`` (null unless diverged),
``error`` (null unless failed), ``model``, ``params_m``, ``global_batch_size``, ``overrides``,
``run_dir``, ``resumed_from`` (the checkpoint this attempt continued, or null), ``git_commit`` and
``versions``.
"""
from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

STATUSES = ("finished", "diverged", "failed", "interrupted")


def git_commit() -> str | None:
    """The vitstem checkout's commit (``+dirty`` when it has uncommitted changes), or None."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    import hydra
    import lightning
    import timm
    import torch

    import vitstem

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "lightning": lightning.__version__, "hydra": hydra.__version__, "vitstem": vitstem.__version__,
            "cuda": torch.version.cuda or "none"}


def _err(acc: float | None) -> float | None:
    return None if acc is None else 100.0 - acc


def make_results(status: str, final_val_acc1: float | None, best_val_acc1: float | None, **fields: Any) -> dict:
    """The results record; ``fields`` carries the other keys listed in the module docstring."""
    assert status in STATUSES, status
    return {"status": status, "final_val_acc1": final_val_acc1, "best_val_acc1": best_val_acc1,
            "final_val_err1": _err(final_val_acc1), "best_val_err1": _err(best_val_acc1), **fields,
            "git_commit": git_commit(), "versions": versions()}


def write_results(run_dir: Path, results: dict) -> Path:
    path = Path(run_dir) / "results.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return path


def read_results(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())
