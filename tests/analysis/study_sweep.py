"""Fake study sweeps with a known effect (no training): job folders with results.json written by the test.

:func:`make_study` writes ``multirun.yaml`` (10 classes, so chance is 90% error, and the claims given) and one job
folder per ``(cell, seed)`` with the error given: a number (finished), ``"diverged"``, ``"failed"``, ``"running"``
(``.hydra/overrides.yaml`` only) or ``"corrupt"`` (a truncated results.json).
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml


def results(overrides: dict, error, seed: int, ema_error: float | None = None, diversity: dict | None = None) -> dict:
    status = {"diverged": "diverged", "failed": "failed"}.get(error, "finished")
    err = error if isinstance(error, (int, float)) else None
    hparams = {"model": overrides.get("model", "vit_p_32"), "stem": overrides.get("model/stem"),
               "attention": {"activation": "softmax", "alpha": 1.0}, "optimizer": overrides.get("optimizer", "adamw"),
               "lr": 1e-3, "weight_decay": 0.05, "epochs": 4, "seed": seed, "study": "fake_study"}
    out = {"status": status, "best_val_err1": err, "best_val_acc1": None if err is None else 100 - err,
           "overrides": [f"{k}={v}" for k, v in overrides.items()] + [f"seed={seed}"], "hparams": hparams,
           "epochs": 4, "wall_time_s": 1.0, "error": "RuntimeError: boom" if status == "failed" else None,
           "diversity": diversity}
    if ema_error is not None:
        out.update(best_val_ema_err1=ema_error, best_val_ema_acc1=100 - ema_error)
    return out


def make_study(root: Path, jobs: list[tuple[dict, int, object]], claims: list[dict] | None = None,
               name: str = "fake_study", num_classes: int = 10, ema: dict | None = None,
               diversity: dict | None = None) -> Path:
    """``jobs``: ``(overrides, seed, error)``; ``ema``: ``{job index: EMA error}``; ``diversity``: per job index."""
    sweep = root / name
    sweep.mkdir(parents=True)
    plan = {"hydra": {"sweeper": {"params": None, "samples": None, "seed": 0}, "overrides": {"task": []}},
            "name": name, "data": {"num_classes": num_classes}, "study": {"name": name, "claims": claims or []}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(plan))
    for k, (overrides, seed, error) in enumerate(jobs):
        job = sweep / str(k)
        (job / ".hydra").mkdir(parents=True)
        lines = [f"{key}={v}" for key, v in overrides.items()] + [f"seed={seed}"]
        (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {line}\n" for line in lines))
        if error == "running":
            continue
        if error == "corrupt":
            (job / "results.json").write_text('{"status": "finis')
            continue
        record = results(overrides, error, seed, (ema or {}).get(k), (diversity or {}).get(k))
        (job / "results.json").write_text(json.dumps(record))
    return sweep


def claim(a: dict | list, b: dict | list, direction: str = "lower", pair_by=("seed",), **extra) -> dict:
    return {"id": extra.pop("id", "c"), "claim": extra.pop("claim", "a beats b"), "source": "test", "paper": "-",
            "reading": "paper", "a": a, "b": b, "metric": extra.pop("metric", "error"), "direction": direction,
            "pair_by": list(pair_by), **extra}
