"""What to do with a run folder before anything is written to it: train, resume, skip, or refuse.

Run folders are named by the command, not the clock (:mod:`vitstem.resolvers`): ``runs/<name>/<overrides>/``,
a multirun job ``multirun/<name>/<job number>/``; so running the same command again finds the same folder.
First of all, its settings are compared (:mod:`vitstem.runs.identity`):

- it holds the ``config.yaml`` of a run with other settings: a one-line error listing them, never a mixed
  folder nor another run's results (``retrain=true`` trains afresh beside it instead);
- it holds ``results.json`` with status ``finished`` or ``diverged``: the run is done and is not
  retrained (``retrain=true`` trains again into a fresh sibling folder, ``<folder>-retrain<k>``);
- it holds ``checkpoints/last.ckpt``: training resumes from it (``results.json`` notes ``resumed_from``);
- otherwise a fresh run.

Only global rank 0 decides (:func:`decide`): the ranks that a launcher started on their own (``srun``,
submitit's local executor, torchrun) read rank 0's decision from ``<folder>/.plan.json``, so that all of them
train in one folder, and a requeued job continues the folder its first attempt chose.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from vitstem.config import ConfigError
from vitstem.runs import lock
from vitstem.runs.identity import differences, mismatch
from vitstem.runs.results import read_results
from vitstem.scale.ddp import CHILD_ENV  # a rank that our JobLauncher started: told rank 0's plan on its command line

log = logging.getLogger("vitstem")

LAST = "last.ckpt"  # the checkpoint file of a run folder (vitstem.runs.checkpoint writes it)
DONE = ("finished", "diverged")
PLAN_FILE = ".plan.json"


@dataclass
class Plan:
    action: str                    # "train", "resume" or "skip"
    run_dir: Path
    ckpt_path: str | None = None
    previous: dict | None = None   # the results.json found, if any
    locked: bool = False           # this process holds run_dir's lock (rank 0 of a run that trains)
    plan_file: Path | None = None  # where rank 0 told the other ranks (marked ended by :func:`end`)


def last_checkpoint(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / LAST


def refusal(run_dir: Path, settings: dict) -> str | None:
    """Why ``run_dir`` cannot take a run of ``settings`` (a resolved plain config), or None."""
    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file() or settings.get("retrain"):
        return None
    diff = differences(OmegaConf.to_container(OmegaConf.load(config_path), resolve=False), settings)
    return mismatch(run_dir, diff) if diff else None


def _holds_a_run(run_dir: Path) -> bool:
    return any((run_dir / f).exists() for f in ("results.json", "config.yaml", "checkpoints"))


def _fresh_sibling(run_dir: Path) -> Path:
    k = 1
    while run_dir.with_name(f"{run_dir.name}-retrain{k}").exists():
        k += 1
    return run_dir.with_name(f"{run_dir.name}-retrain{k}")


def _resolved(cfg: DictConfig) -> dict:
    """The run's settings, resolved (without Hydra's own node, where a composed config still has it)."""
    if "hydra" in cfg:
        cfg = cfg.copy()
        with open_dict(cfg):
            del cfg["hydra"]
    return OmegaConf.to_container(cfg, resolve=True)


def plan(cfg: DictConfig, run_dir: Path, retrain: bool = False) -> Plan:
    """Decide what this run does with ``run_dir`` (see the module docstring); raise ConfigError on a clash."""
    run_dir = Path(run_dir)
    if retrain and _holds_a_run(run_dir):  # retrain: a fresh folder, whatever this one holds (even a corrupt record)
        return Plan("train", _fresh_sibling(run_dir))
    problem = refusal(run_dir, _resolved(cfg))
    if problem:
        raise ConfigError(problem)
    previous = read_results(run_dir)
    if previous and previous.get("status") in DONE:
        return Plan("skip", run_dir, None, previous)
    if cfg.get("ckpt_path"):
        return Plan("resume", run_dir, str(cfg.ckpt_path), previous)
    if last_checkpoint(run_dir).is_file():
        return Plan("resume", run_dir, str(last_checkpoint(run_dir)), previous)
    return Plan("train", run_dir, None, previous)


# ranks ----------------------------------------------------------------------------------------------------------

# (global rank, job attempt) variables of the launchers that start every rank themselves
_RANK_VARS = (("SLURM_PROCID", "SLURM_NTASKS"), ("SUBMITIT_LOCAL_GLOBALID", "SUBMITIT_LOCAL_NTASKS"),
              ("RANK", "WORLD_SIZE"))


def launcher_rank() -> int:
    """This process's global rank when a launcher started every rank (srun, submitit local, torchrun), else 0."""
    for rank, size in _RANK_VARS:
        if os.environ.get(rank, "").isdigit() and int(os.environ.get(size, "1") or 1) > 1:
            return int(os.environ[rank])
    return 0


def plans_here() -> bool:
    """Whether this process is the rank that decides for the run folder (global rank 0): the others follow it."""
    return os.environ.get(CHILD_ENV) != "1" and launcher_rank() == 0


def _attempt() -> dict:
    """What identifies this job and this attempt of it (a SLURM requeue is a new attempt of the same job)."""
    job = next((os.environ[k] for k in ("SLURM_JOB_ID", "SUBMITIT_LOCAL_JOB_ID", "TORCHELASTIC_RUN_ID") if k in os.environ),
               None)
    return {"job": job, "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)}


def _read_plan_file(folder: Path) -> dict | None:
    try:
        return json.loads((folder / PLAN_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write_plan_file(folder: Path, decided: Plan, attempt: dict | None = None, planned: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = {**(attempt or _attempt()), "written": time.time(), "action": decided.action,
              "run_dir": str(decided.run_dir), "ckpt_path": decided.ckpt_path, "planned": planned}
    tmp = folder / f"{PLAN_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, folder / PLAN_FILE)


def _wait_for_plan(folder: Path, timeout_s: float, started: float) -> Plan:
    """Rank k: rank 0's plan for this attempt of this job (written after this process started, for a launcher
    without an attempt count)."""
    attempt, deadline = _attempt(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = _read_plan_file(folder)
        if record and {k: record.get(k) for k in attempt} == attempt and \
                ("SLURM_JOB_ID" in os.environ or record["written"] >= started - 60):
            if record["action"] == "error":
                raise ConfigError(f"rank 0 refused the run: {record['error']}")
            action = record["action"]
            if action == "ended":  # rank 0 is done with its attempt: this one, if it ended after this rank started
                action = record["planned"] if "SLURM_JOB_ID" in os.environ or record["written"] >= started else None
            if action is not None:
                previous = read_results(Path(record["run_dir"])) if action == "skip" else None
                return Plan(action, Path(record["run_dir"]), record["ckpt_path"], previous)
        time.sleep(0.2)
    raise ConfigError(f"rank {launcher_rank()} waited {timeout_s:.0f} s for rank 0's plan ({folder / PLAN_FILE}): "
                      "did rank 0 start? (it decides the run folder for all ranks)")


_STARTED = time.time()  # about when this process started (the module is imported at start-up)


def decide(cfg: DictConfig, plan_timeout_s: float = 600.0) -> Plan:
    """This run's plan (rank 0 decides, the other ranks follow) and ``cfg.run_dir``/``cfg.ckpt_path`` set to it.

    Rank 0 then holds the folder's lock (:mod:`vitstem.runs.lock`) until :func:`vitstem.runs.lock.release`."""
    folder = Path(cfg.run_dir)
    if os.environ.get(CHILD_ENV) == "1":  # started by our JobLauncher: its command line carries rank 0's plan
        decided = Plan("resume" if cfg.ckpt_path else "train", folder, cfg.ckpt_path)
    elif launcher_rank() != 0:
        decided = _wait_for_plan(folder, plan_timeout_s, _STARTED)
    else:
        decided = _plan_rank0(cfg, folder)
    if decided.action != "skip":
        with open_dict(cfg):
            cfg.run_dir, cfg.ckpt_path = str(decided.run_dir), decided.ckpt_path if decided.action == "resume" else None
    return decided


def _plan_rank0(cfg: DictConfig, folder: Path) -> Plan:
    shared = launcher_rank() == 0 and any(os.environ.get(size, "1").isdigit() and int(os.environ.get(size, "1")) > 1
                                          for _, size in _RANK_VARS)
    earlier = _read_plan_file(folder) if shared else None
    try:
        if earlier and earlier.get("run_dir") and earlier.get("job") not in (None, "") \
                and earlier.get("job") == _attempt()["job"]:
            # a requeued job: continue the folder its first attempt chose (not a new -retrain sibling)
            decided = plan(cfg, Path(earlier["run_dir"]), retrain=False)
        else:
            decided = plan(cfg, folder, retrain=cfg.get("retrain", False))
        if decided.action != "skip":
            lock.acquire(decided.run_dir)
            if _holds_a_run(decided.run_dir):  # read again under the lock: another process may have trained it
                try:
                    again = plan(cfg, decided.run_dir, retrain=False)
                except Exception:
                    lock.release(decided.run_dir)
                    raise
                if again.action == "skip":
                    lock.release(decided.run_dir)
                decided = again
            decided.locked = decided.action != "skip"
    except Exception as e:  # the other ranks are told, and stop with it
        if shared:
            record = {**_attempt(), "written": time.time(), "action": "error", "error": str(e)}
            folder.mkdir(parents=True, exist_ok=True)
            (folder / PLAN_FILE).write_text(json.dumps(record))
        raise
    if shared:
        _write_plan_file(folder, decided)
        decided.plan_file = folder / PLAN_FILE
    return decided


def end(decided: Plan) -> None:
    """Rank 0, at the end of an attempt: its plan stays for a requeued attempt's rank 0 (which continues the same
    folder) but is no plan for the next attempt's other ranks."""
    record = _read_plan_file(decided.plan_file.parent) if decided.plan_file else None
    if record and record["action"] != "ended":
        _write_plan_file(decided.plan_file.parent, Plan("ended", Path(record["run_dir"]), record["ckpt_path"]),
                         attempt={k: record.get(k) for k in ("job", "restart")}, planned=record["action"])

