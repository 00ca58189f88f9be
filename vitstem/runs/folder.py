"""What to do with a run folder before anything is written to it: train, resume, skip, or refuse.

Run folders are named by the command, not the clock (:mod:`vitstem.resolvers`): ``runs/<name>/<overrides>/``,
a multirun job ``multirun/<name>/<job number>/``; so running the same command again finds the same folder:

- it holds ``results.json`` with status ``finished`` or ``diverged``: the run is done and is not
  retrained (``retrain=true`` trains again into a fresh sibling folder, ``<folder>-retrain<k>``);
- it holds ``checkpoints/last.ckpt``: training resumes from it (``results.json`` notes ``resumed_from``);
- it holds the ``config.yaml`` of a run with other settings: a clear error, never a mixed folder;
- otherwise a fresh run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vitstem.config import ConfigError

LAST = "last.ckpt"  # the checkpoint file of a run folder (vitstem.runs.checkpoint writes it)

DONE = ("finished", "diverged")
# Settings that do not change what a run computes (callbacks observe and checkpoint); a folder may be resumed
# with other values of these.
VOLATILE = ("run_dir", "ckpt_path", "retrain", "tags", "logger", "callbacks", "trainer.enable_progress_bar")


@dataclass
class Plan:
    action: str                    # "train", "resume" or "skip"
    run_dir: Path
    ckpt_path: str | None = None
    previous: dict | None = None   # the results.json found, if any


def _flat(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if any(key == vol or key.startswith(vol + ".") for vol in VOLATILE):
            continue
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every setting that differs (volatile ones ignored)."""
    a, b = _flat(old), _flat(new)
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _fresh_sibling(run_dir: Path) -> Path:
    k = 1
    while run_dir.with_name(f"{run_dir.name}-retrain{k}").exists():
        k += 1
    return run_dir.with_name(f"{run_dir.name}-retrain{k}")


def plan(cfg: DictConfig, run_dir: Path, retrain: bool = False) -> Plan:
    """Decide what this run does with ``run_dir`` (see the module docstring); raise ConfigError on a clash."""
    results_path, config_path, last = run_dir / "results.json", run_dir / "config.yaml", run_dir / "checkpoints" / LAST
    previous = json.loads(results_path.read_text()) if results_path.is_file() else None
    if retrain and (previous or last.is_file()):
        return Plan("train", _fresh_sibling(run_dir), None, previous)
    if previous and previous.get("status") in DONE:
        return Plan("skip", run_dir, None, previous)
    if config_path.is_file():
        old = OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)
        new = OmegaConf.to_container(cfg, resolve=True)
        diff = differences(old, new)
        if diff:
            shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
            raise ConfigError(f"run folder {run_dir} holds a run with other settings ({shown}); pick another folder "
                              f"(name=... or hydra.run.dir=...) or train afresh beside it with retrain=true")
    if cfg.get("ckpt_path"):
        return Plan("resume", run_dir, str(cfg.ckpt_path), previous)
    if last.is_file():
        return Plan("resume", run_dir, str(last), previous)
    return Plan("train", run_dir, None, previous)
