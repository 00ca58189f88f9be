"""Error EDFs with a bootstrap band, and the per-group numbers of the summary (pure numpy).

The EDF is Xiao et al. 2021's Fig. 5 (pycls ``plot_edf``, plotted there against the error itself): each job's
top-1 error minus the best error *of its own group* (for each model and optimizer, the paper's reading), sorted,
against the cumulative fraction of jobs: F(d) = share of jobs within d points of the group's best. A diverged job
counts as 100% error; failed and pending jobs are left out. Relative to each group's own best, the curves compare
stability (how many settings come close to the best a setting reaches) apart from peak error, which the summary
gives. The band is an empirical bootstrap: resample the group's jobs with replacement, recompute F at fixed
points (the best of the full group stays the reference), take the 5th and 95th percentiles.
"""
from __future__ import annotations

import numpy as np

WITHIN = (1, 2, 4)   # points of top-1 error: the summary's "share within k of the best"
N_BOOT, SEED = 1000, 0
TOL = 1e-9           # 11.3 - 10.3 is 1.0000000000000009: still within 1 point


def edf(errors, best: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``errors - best`` (``best``: the smallest error unless given) and the cumulative fractions
    ``(i + 1) / n``: ``edf([10, 11, 13, 100])`` is ``([0, 1, 3, 90], [0.25, 0.5, 0.75, 1])``."""
    e = np.sort(np.asarray(errors, dtype=float))
    if e.size == 0:
        return e, e
    return e - (e[0] if best is None else best), np.arange(1, e.size + 1) / e.size


def edf_at(deltas, at) -> np.ndarray:
    """F at each point of ``at``: the share of ``deltas`` that are <= it."""
    d = np.asarray(deltas, dtype=float)
    return (d[:, None] <= np.asarray(at, dtype=float)[None, :] + TOL).mean(axis=0)


def resample_counts(n: int, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """``(n_boot, n)``: how often each of ``n`` units is drawn in each bootstrap resample (multinomial)."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)


def edf_band(deltas, at, n_boot: int = N_BOOT, q: tuple[float, float] = (5, 95),
             seed: int = SEED, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``q`` percentiles of F at ``at`` over ``n_boot`` resamples of ``deltas`` with replacement.

    A resample is a multinomial count of how often each job is drawn, so all resamples are one matrix product.
    The same ``seed`` gives the same band. ``counts`` (``(n_boot, len(deltas))``) gives the resamples instead:
    the same draws of matched units for every group (:func:`matched_counts`), so that the groups' bands move
    together as their paired jobs do.
    """
    d = np.asarray(deltas, dtype=float)
    n = d.size
    if counts is None:
        counts = resample_counts(n, n_boot, seed)                                          # (n_boot, n)
    below = d[:, None] <= np.asarray(at, dtype=float)[None, :] + TOL                          # (n, len(at))
    fractions = counts @ below / n
    lo, hi = np.percentile(fractions, q, axis=0)
    return lo, hi


def group_stats(errors) -> dict:
    """``best``, ``median`` and ``within_k`` (share of jobs with error - best <= k) of one group's errors."""
    e = np.asarray(errors, dtype=float)
    if e.size == 0:
        return {"best": None, "median": None, **{f"within_{k}": None for k in WITHIN}}
    best = float(e.min())
    return {"best": best, "median": float(np.median(e)),
            **{f"within_{k}": float(np.mean(e - best <= k + TOL)) for k in WITHIN}}


MEASURED = ("done", "untrained", "diverged")   # row states with an error (collect.py)


def summarize(rows: list[dict], groups: list[str]) -> list[dict]:
    """One summary row per group: job counts by state (``done`` counts the jobs that failed to train and the
    diverged ones too) and :func:`group_stats` over them (diverged at 100)."""
    out = []
    for g in groups:
        mine = [r for r in rows if r["group"] == g]
        count = {s: sum(r["state"] == s for r in mine) for s in (*MEASURED, "failed", "pending")}
        errors = [r["error"] for r in mine if r["state"] in MEASURED]
        out.append({"group": g, "jobs": len(mine), "done": sum(count[s] for s in MEASURED),
                    "untrained": count["untrained"], "diverged": count["diverged"], "failed": count["failed"],
                    "pending": count["pending"], **group_stats(errors)})
    return out
