"""``results.json``: the one record of a finished (or diverged, or failed) run that sweeps read; its one writer
(:func:`write_results`), its one reader (:func:`read_results`) and the table printed at the end of a run.

Keys are stable; later tools rely on them:
``status`` ("finished", "diverged", "failed" or "interrupted": stopped by a signal after writing its
checkpoint), ``final_val_acc1``, ``best_val_acc1``,
``final_val_err1``, ``best_val_err1`` (percent), ``final_val_acc5``, ``final_val_ema_acc1`` and
``best_val_ema_acc1`` (null without ``ema``), ``final_train_loss``, ``epochs``,
``steps``, ``wall_time_s``, ``train_images_per_s``, ``diverged_at_step`` (null unless diverged),
``error`` (null unless failed), ``model``, ``params_m``, ``global_batch_size``, ``overrides``,
``run_dir``, ``hparams`` (:func:`hparams`: model, stem, attention, optimizer, base and scaled lr, weight
decay, warm-up, epochs, global batch, seed, study name, sample index and sampled keys),
``best_val_ema_err1`` (with an EMA), ``resumed_from`` (the checkpoint this attempt continued, or null), ``git_commit`` and
``versions``. The instrumentation (:mod:`vitstem.instrument`; null when its callback is off) adds
``train_images_per_s_with_data`` (data loading included; ``train_images_per_s`` times the training steps alone),
``train_flops_per_image`` (forward and backward), ``mfu`` (null on CPU), ``diverged_block`` and ``diverged_phase``
(where the step ``diverged_at_step`` first went non-finite), ``spikes`` (the first gradient and loss spikes:
step, kind, first block above threshold, ratio to the running median) and ``spikes_total``, ``diversity`` and
``diversity_ema`` (patch-token diversity per block at the last measurement).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib.metadata import version
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


def versions() -> dict[str, str | None]:
    """Library versions, read from the installed packages' metadata: a config rejected before training does not
    import torch for them (torch's own string, with its CUDA build, once torch is imported)."""
    import vitstem

    torch = sys.modules.get("torch")
    return {"python": platform.python_version(), "torch": torch.__version__ if torch else version("torch"),
            "timm": version("timm"), "lightning": version("lightning"), "hydra": version("hydra-core"),
            "vitstem": vitstem.__version__, "cuda": (torch.version.cuda or "none") if torch else None}


def hparams(cfg, choices: dict, global_batch: int | None) -> dict:
    """What was run, in the terms of the papers: the ``hparams`` block of ``results.json`` (a key the config
    lacks, as in a rejected config, is null)."""
    from omegaconf import OmegaConf

    def get(key: str):
        return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)

    lr, ref = get("optimizer.lr"), get("optimizer.ref_batch_size")
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lr, ref, global_batch))
    return {"model": get("model.name"), "stem": choices.get("model/stem"),
            "attention": {"activation": get("model.attention.activation") or "softmax",
                          "alpha": get("model.attention.alpha")},
            "optimizer": choices.get("optimizer"), "lr": lr, "lr_scaled": lr * global_batch / ref if numeric and ref else None,
            "ref_batch_size": ref, "weight_decay": get("optimizer.weight_decay"), "warmup": get("scheduler.warmup"),
            "warmup_unit": get("scheduler.warmup_unit"), "epochs": get("trainer.max_epochs"), "global_batch": global_batch,
            "seed": get("seed"), "ema": choices.get("ema"), "study": get("study.name"), "sample": get("study.sample"),
            "sampled": list(get("study.sampled") or [])}


def _err(acc: float | None) -> float | None:
    return None if acc is None else 100.0 - acc


def make_results(status: str, final_val_acc1: float | None, best_val_acc1: float | None, **fields: Any) -> dict:
    """The results record; ``fields`` carries the other keys listed in the module docstring."""
    assert status in STATUSES, status
    ema = {"best_val_ema_err1": _err(fields["best_val_ema_acc1"])} if fields.get("best_val_ema_acc1") is not None else {}
    return {"status": status, "final_val_acc1": final_val_acc1, "best_val_acc1": best_val_acc1,
            "final_val_err1": _err(final_val_acc1), "best_val_err1": _err(best_val_acc1), **ema, **fields,
            "git_commit": git_commit(), "versions": versions()}


class ResultsError(ValueError):
    """A run folder's file that cannot be read or written (results.json, a checkpoint on a full disk); the message
    names the file."""


def write_results(run_dir: Path, results: dict) -> Path:
    """Write ``results.json`` whole or not at all (a temporary file renamed over it); a full disk or a file size
    limit is one :class:`ResultsError` naming the file, and the previous file is kept."""
    path = Path(run_dir) / "results.json"
    tmp = path.with_name(f".results.json.{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(results, indent=2, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ResultsError(f"cannot write {path}: {e.strerror or e} (disk full or a file size limit?): free space "
                           "and run the same command again (the checkpoint, if any, is kept)") from None
    return path


def read_results(run_dir: Path) -> dict | None:
    """``run_dir``'s ``results.json``, or None if there is none; a file that is not a results record (cut short,
    corrupt) is one :class:`ResultsError` naming it."""
    path = Path(run_dir) / "results.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ResultsError(f"{path} cannot be read ({type(e).__name__}: {e}): cut short or corrupt; move it away "
                           "(or train afresh beside it with retrain=true)") from None
    if not isinstance(record, dict) or record.get("status") not in STATUSES:
        raise ResultsError(f"{path} is not a vitstem results record (no valid status): move it away (or train "
                           "afresh beside it with retrain=true)")
    return record


def fmt(value, percent: bool = False) -> str:
    """A number as the tables print it (a run's summary and a sweep's report): 4 significant digits, ``-`` for none."""
    if value is None:
        return "-"
    if percent:
        return f"{100 * value:.0f}%"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def print_summary(results: dict) -> None:
    """The result table printed at the end of a run."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"vitstem run: {results['status']}", show_header=False)
    for key in ("model", "params_m", "final_val_acc1", "best_val_acc1", "final_val_err1", "final_val_acc5",
                "final_val_ema_acc1", "best_val_ema_acc1",
                "final_train_loss", "epochs", "steps", "global_batch_size", "train_images_per_s",
                "train_images_per_s_with_data", "mfu", "wall_time_s", "diverged_at_step", "diverged_block",
                "spikes_total", "error", "run_dir"):
        if key in results and (results[key] is not None or key in ("final_val_acc1",)):
            table.add_row(key, Text(fmt(results[key])))  # as text: an error message may contain [brackets]
    Console().print(table)
