"""``hydra/sweeper=random``: Hydra's basic sweeper plus random search, and a sweep that survives its jobs.

Overrides use Hydra's own grammar (the Optuna sweeper's syntax):

- ``key=interval(a,b)`` samples uniformly in [a, b); ``key=tag(log, interval(a,b))`` log-uniformly;
- ``key=a,b,c``, ``key=range(...)`` and ``key=choice(...)`` form a grid, crossed with the samples;
- ``hydra.sweeper.samples=N`` draws N samples, ``hydra.sweeper.seed`` seeds them.

Sample ``i`` of a key is a pure function of ``(seed, i, key)`` (:func:`draw`), so the same command always
yields the same jobs. The draws are stratified: every ``2**m`` first samples of a key put exactly one sample in
each of ``2**m`` equal slices of its interval (a Latin hypercube per key, extensible), so 16 samples cover the
interval evenly where independent uniforms leave gaps and clumps. Jobs and jobs are ordered sample-major (job ``i * cells + g``): raising N from 16 to 64
appends jobs and keeps the first 16 samples in the same folders (and the first 64 are again stratified). Each job also gets ``study.sample=i`` and
``study.sampled=[keys]``, which ``results.json`` records.

Unlike the basic sweeper, a job that raises does not stop the sweep: the sweep runs every job, then
prints one line per failed job and exits non-zero. Reusing a sweep folder whose fixed settings differ
stops before any job runs.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override
from hydra.core.utils import JobStatus
from hydra.errors import HydraException
from omegaconf import OmegaConf

log = logging.getLogger("vitstem")


class SweepError(HydraException):
    """A sweep that cannot run as written; the message names the key and the fix."""


@dataclass
class Interval:
    key: str
    low: float
    high: float
    log: bool

    def value(self, u: float) -> float:
        if self.log:
            return math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        return self.low + u * (self.high - self.low)


SOBOL_DIMS = 1024   # a key draws from one of these dimensions (a hash of the key): keys are paired unrelatedly


def draw(seed: int, index: int, key: str) -> float:
    """Sample ``index`` of ``key``: a number in [0, 1) that depends only on ``(seed, index, key)``, stratified.

    The samples of a key are one coordinate of a scrambled Sobol' sequence (``scipy.stats.qmc.Sobol``, Owen
    scrambling seeded by ``(seed, key)``, the coordinate picked by a hash of ``key`` among ``SOBOL_DIMS``): every
    coordinate's first ``2**m`` points lie one in each interval ``[k / 2**m, (k + 1) / 2**m)`` for every ``m``,
    i.e. a Latin hypercube of ``2**m`` samples per key that a larger sweep extends instead of redrawing
    (``qmc.LatinHypercube`` redraws every point when the number of samples changes). Keys use different
    coordinates, so that two keys are not paired in step (the same coordinate for two keys, even scrambled
    apart, gives correlated draws, as van der Corput's order is shared).
    """
    if index < 0:
        raise SweepError(f"{key}: sample index {index} is negative")
    m = max(0, math.ceil(math.log2(index + 1)))
    return float(_sobol(seed, key, m)[index])


@functools.lru_cache(maxsize=256)
def _sobol(seed: int, key: str, m: int) -> tuple[float, ...]:
    def number(text: str) -> int:
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")

    from scipy.stats import qmc  # 2 s to import: Hydra imports this module at every start (its plugin scan)

    engine = qmc.Sobol(d=SOBOL_DIMS, scramble=True, rng=np.random.default_rng(number(f"{seed}:{key}")))
    return tuple(engine.random_base2(m)[:, number(key) % SOBOL_DIMS])


def parse_interval(override: Override) -> Interval:
    sweep = override.value()
    assert isinstance(sweep, IntervalSweep)
    key, log_scale = override.get_key_element(), "log" in sweep.tags
    low, high = float(sweep.start), float(sweep.end)
    if not low < high:
        raise SweepError(f"{key}=interval({sweep.start}, {sweep.end}): the lower bound must be below the upper one")
    if log_scale and low <= 0:
        raise SweepError(f"{key}=tag(log, interval({sweep.start}, {sweep.end})): a log interval needs a lower "
                             "bound above 0")
    unknown = set(sweep.tags) - {"log"}
    if unknown:
        raise SweepError(f"{key}: unknown tag(s) {sorted(unknown)}; the random sweeper knows only 'log'")
    return Interval(key, low, high, log_scale)


def plan_jobs(overrides: list[Override], samples: int | None, seed: int) -> tuple[list[list[str]], list[str]]:
    """Every job's overrides, sample-major, and the sampled keys (see the module docstring)."""
    grid: list[list[str]] = []
    intervals: list[Interval] = []
    for override in overrides:
        key = override.get_key_element()
        if override.is_interval_sweep():
            intervals.append(parse_interval(override))
        elif override.is_sweep_override():
            grid.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            grid.append([f"{key}={override.get_value_element_as_str()}"])
    cells = [list(c) for c in itertools.product(*grid)]
    if not intervals:
        return cells, []
    if samples is None or samples < 1:
        keys = ", ".join(i.key for i in intervals)
        raise SweepError(f"{keys}: sampled with interval() but hydra.sweeper.samples is {samples}; "
                             "set hydra.sweeper.samples=N (the number of random samples)")
    sampled = [i.key for i in intervals]
    jobs = []
    for i in range(samples):
        values = [f"{iv.key}={iv.value(draw(seed, i, iv.key))!r}" for iv in intervals]
        study = [f"study.sample={i}", f"study.sampled=[{','.join(sampled)}]"]
        jobs += [cell + values + study for cell in cells]
    return jobs, sampled


def fixed_settings(overrides: list[Override]) -> list[str]:
    """The overrides that every job shares and that define a run (what makes two sweeps the same study)."""
    from vitstem.runs.identity import defines_run

    return sorted(o.input_line for o in overrides
                  if not o.is_sweep_override() and o.input_line and defines_run(o.key_or_group))


class RandomSweeper(BasicSweeper):
    """Hydra's basic sweeper with random sampling and per-job failure handling (module docstring)."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None,
                 samples: int | None = None, seed: int = 0):
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.samples, self.seed = samples, seed

    def sweep(self, arguments: list[str]) -> Any:
        try:
            return self._sweep(arguments)
        except SweepError as e:  # one line, not Hydra's traceback
            sys.exit(f"vitstem-train: sweep error: {e}")

    def _sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(self._parse_config() + list(arguments))
        jobs, sampled = plan_jobs(overrides, self.samples, self.seed)
        batch_size = self.max_batch_size if self.max_batch_size not in (None, -1) else max(1, len(jobs))
        self.overrides = [jobs[i:i + batch_size] for i in range(0, len(jobs), batch_size)]

        sweep_dir = Path(self.config.hydra.sweep.dir)
        self._check_same_study(sweep_dir, fixed_settings(overrides))
        from vitstem.runs import guard  # every job folder's settings checked before anything is written
        problem = guard.check_sweep(self.config, self.hydra_context.config_loader, jobs)
        if problem:
            raise SweepError(problem)
        launcher = guard.ClaimingLauncher(self.launcher, self.config, self.hydra_context.config_loader)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        (sweep_dir / ".vitstem_sweep.yaml").write_text(OmegaConf.to_yaml({"fixed": fixed_settings(overrides)}))
        log.info("sweep %s: %d jobs%s", sweep_dir, len(jobs),
                 f" ({self.samples} samples of {', '.join(sampled)} x {len(jobs) // self.samples} cells)" if sampled else "")

        returns, failed, busy, start = [], [], [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = launcher.launch(batch, initial_job_idx=start)
            for n, (job, r) in enumerate(zip(batch, results), start=start):
                if r.status == JobStatus.FAILED and isinstance(r._return_value, guard.lock.FolderBusy):
                    busy.append(f"job {n}: {r._return_value}")
                elif r.status == JobStatus.FAILED:
                    failed.append(f"job {n} ({' '.join(job)}): {type(r._return_value).__name__}: {r._return_value}")
            start += len(batch)
            returns.append(results)
        for line in busy:  # another process (a second sweep, an array task) trains it: not ours to report
            log.warning("skipped: %s", line)
        if failed:
            for line in failed:
                log.error("failed: %s", line)
            raise SweepError(f"{len(failed)} of {len(jobs)} jobs failed (listed above; each job folder holds its "
                                 "results.json and traceback.txt); run the same command again to retry them")
        return returns

    @staticmethod
    def _check_same_study(sweep_dir: Path, fixed: list[str]) -> None:
        marker = sweep_dir / ".vitstem_sweep.yaml"
        if marker.is_file():
            from vitstem.runs.identity import defines_run
            before = [o for o in OmegaConf.load(marker).get("fixed", []) if defines_run(o.split("=", 1)[0])]
            if before != fixed:
                changed = sorted(set(before) ^ set(fixed))
                raise SweepError(f"sweep folder {sweep_dir} holds a sweep with other fixed settings "
                                     f"(differing: {', '.join(changed)}); pick another folder (name=... or "
                                     "hydra.sweep.dir=...) instead of mixing two studies")
