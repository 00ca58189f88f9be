"""A run folder refused before Hydra writes into it (``.hydra/``, ``multirun.yaml``): nothing of a refused folder changes.

Hydra writes a job's ``.hydra/`` (config, overrides) when the job starts, before vitstem's code runs, and the
sweeper writes ``multirun.yaml``; so the checks of :mod:`vitstem.runs.folder` (a folder holding other settings)
and :mod:`vitstem.runs.lock` (a folder being written) are made earlier as well:

- a single run: :class:`FolderGuard`, a Hydra callback (``hydra.callbacks.folder_guard`` in ``conf/train.yaml``),
  exits with one line at ``on_run_start``;
- a multirun: the sweeper calls :func:`check_sweep` for every job before it writes anything, and launches jobs
  through :class:`ClaimingLauncher`, which skips a job whose folder another process is writing (two sweeps over
  one folder share its jobs: each job is trained by whichever claims it first).
"""
from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from vitstem.runs import folder, lock


def _settings(config: DictConfig, output_dir: Path) -> dict:
    """The task config of a composed Hydra config, resolved as the job will see it in ``output_dir``."""
    config = copy.deepcopy(config)
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = str(output_dir.absolute())
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)
    try:
        with open_dict(config):
            del config["hydra"]
        return OmegaConf.to_container(config, resolve=True)
    finally:
        HydraConfig.instance().cfg = saved


class FolderGuard(Callback):
    """``vitstem-train`` (run mode): refuse a folder of other settings, or one being written, before Hydra writes."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not folder.plans_here():  # rank 0 decides for the folder; the other ranks follow it
            return
        saved = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(config)
        try:
            run_dir = Path(str(config.hydra.run.dir))
        finally:
            HydraConfig.instance().cfg = saved
        if not run_dir.is_dir():
            return
        try:
            problem = folder.refusal(run_dir, _settings(config, run_dir))
            if problem is None and not (OmegaConf.select(config, "retrain") and folder._holds_a_run(run_dir)):
                lock.check_free(run_dir)
        except lock.FolderBusy as e:
            problem = str(e)
        except Exception:  # a config that does not resolve: vitstem's own checks name it, in one line, later
            problem = None
        if problem:
            sys.exit(f"vitstem-train: {problem}")


def job_dir(config: DictConfig, loader, overrides: Sequence[str], num: int) -> tuple[Path, DictConfig | None]:
    """Job ``num``'s folder (and its composed config when that was needed to know the folder)."""
    if OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir") == "${hydra.job.num}":
        return Path(str(config.hydra.sweep.dir)) / str(num), None
    job = loader.load_sweep_config(config, list(overrides))
    with open_dict(job):
        job.hydra.job.id, job.hydra.job.num = num, num
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(job)
    try:
        return Path(str(job.hydra.sweep.dir)) / str(job.hydra.sweep.subdir), job
    finally:
        HydraConfig.instance().cfg = saved


def check_sweep(config: DictConfig, loader, jobs: list[list[str]]) -> str | None:
    """Why this sweep cannot run in its folder (a job folder holds other settings), or None; changes nothing."""
    for num, overrides in enumerate(jobs):
        try:
            path, job = job_dir(config, loader, overrides, num)
            if not (path / "config.yaml").is_file():
                continue
            if job is None:
                job = loader.load_sweep_config(config, list(overrides))
                with open_dict(job):
                    job.hydra.job.id, job.hydra.job.num = num, num
            problem = folder.refusal(path, _settings(job, path))
        except Exception:  # a job whose config does not compose fails on its own, with its own message
            continue
        if problem:
            return f"job {num}: {problem}"
    return None


class ClaimingLauncher:
    """A sweeper's launcher that leaves out the jobs whose folder another process is writing (they come back as
    failed with :class:`vitstem.runs.lock.FolderBusy`), and launches Hydra's in-process launcher one job at a
    time so that each job is claimed just before it runs."""

    def __init__(self, launcher, config: DictConfig, loader):
        self.launcher, self.config, self.loader = launcher, config, loader
        self.one_at_a_time = type(launcher).__name__ == "BasicLauncher"

    def __getattr__(self, name: str):
        return getattr(self.launcher, name)

    def launch(self, batch: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        returns: list[JobReturn | None] = []
        segment: list[int] = []

        def flush():
            if segment:
                returns[segment[0]:segment[0] + len(segment)] = self.launcher.launch(
                    [batch[i] for i in segment], initial_job_idx=initial_job_idx + segment[0])
                segment.clear()

        for i, overrides in enumerate(batch):
            returns.append(None)
            try:
                lock.check_free(job_dir(self.config, self.loader, overrides, initial_job_idx + i)[0])
            except lock.FolderBusy as e:
                flush()
                returns[i] = JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=e)
                continue
            except Exception:  # the job's config does not compose: the launcher runs it and it fails on its own
                pass
            segment.append(i)
            if self.one_at_a_time:
                flush()
        flush()
        return returns
