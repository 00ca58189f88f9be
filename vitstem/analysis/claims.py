"""A study's claims, checked: **supported**, **contradicted** or **inconclusive**, with an effect and its interval.

A claim is data in the study's config (``study.claims`` in ``conf/sweep/<study>/study.yaml``, saved by Hydra in
``SWEEP_DIR/multirun.yaml``)::

    - id: sgd_c_beats_p
      claim: "With SGD, ViT_C's error is lower than ViT_P's across the lr / wd samples"
      source: "Xiao et al. 2021, Fig. 5"     # figure or table
      paper: "..."                            # the paper's number, as text
      reading: paper | "ours: ..."            # whose statement this is
      a: {model: vit_c_32, optimizer: sgd}    # the jobs of side a: every key must match (an override key as typed,
      b: {model: vit_p_32, optimizer: sgd}    #   or hparams.<name>); a list of two selectors is a difference
      metric: error                           # error (top-1, %), or share_within (share of runs within `within`
      direction: lower                        #   points of the side's best, in %); lower | higher | within
      magnitude: 4.6                          # the paper's size of effect (within: the margin), optional
      pair_by: [study.sample]                 # keys that match a job of a to a job of b; [] for unpaired

**Paired** (``pair_by`` given): the jobs of each side are keyed by their ``pair_by`` values (several jobs with
one key are averaged; a side that is a difference ``[x, y]`` gives ``error(x) - error(y)`` per key) and only keys
present on both sides count. The effect is the median of the paired differences ``a - b``; its 95% interval a
bootstrap over the matched keys (resampled together, so a pair stays a pair); with them the sign test
(``scipy.stats.binomtest``) and Wilcoxon's signed-rank test (``scipy.stats.wilcoxon``) p-values.
**Unpaired** (``pair_by: []``): the difference of the medians, bootstrapped over each side's jobs.
``share_within`` is bootstrapped over matched keys too (each resample recomputes both shares).

The verdict reads the interval: ``lower`` is supported when the whole interval lies below 0 and contradicted
when it lies above 0 (``higher`` the reverse); ``within`` is supported when the interval lies inside
``[-magnitude, magnitude]`` and contradicted when it lies wholly outside; anything else, or fewer than
``MIN_UNITS`` matched keys, is inconclusive. The paper's magnitude is reported beside ours, not tested.
Failed jobs (crashed, no error) take no part; diverged jobs count at 100% error, jobs that failed to train at
their error.
"""
from __future__ import annotations

import math

import numpy as np
from omegaconf import OmegaConf
from scipy import stats

from vitstem.analysis.groups import value

N_BOOT, SEED, LEVEL = 2000, 0, 0.95
MIN_UNITS = 3
DIRECTIONS = ("lower", "higher", "within")
METRICS = ("error", "share_within")
USED = ("done", "diverged", "untrained")   # row states whose error counts
CLAIM_COLUMNS = ("study", "id", "verdict", "claim", "source", "reading", "metric", "direction", "paper", "magnitude",
                 "effect", "ci_low", "ci_high", "n", "wins", "losses", "ties", "sign_p", "wilcoxon_p", "paired",
                 "a_median", "b_median", "note")


class ClaimError(ValueError):
    """A claim that cannot be read; the message names the claim and the key."""


def load_claims(cfg) -> list[dict]:
    """``study.claims`` of a composed or saved config (an OmegaConf node or a dict), resolved; [] if none."""
    node = OmegaConf.select(cfg, "study.claims", default=None) if OmegaConf.is_config(cfg) else \
        ((cfg or {}).get("study") or {}).get("claims")
    if node is None:
        return []
    claims = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    for i, c in enumerate(claims):
        check_claim(c, i)
    return claims


def check_claim(c: dict, i: int = 0) -> None:
    name = f"study.claims[{i}] ({c.get('id', 'no id')})" if isinstance(c, dict) else f"study.claims[{i}]"
    if not isinstance(c, dict):
        raise ClaimError(f"{name}: a claim is a mapping with id, claim, a, b, metric, direction")
    for key in ("id", "claim", "a", "b"):
        if key not in c:
            raise ClaimError(f"{name}: missing key '{key}'")
    if c.get("direction", "lower") not in DIRECTIONS:
        raise ClaimError(f"{name}: direction={c['direction']!r}; choose one of {', '.join(DIRECTIONS)}")
    if c.get("metric", "error") not in METRICS:
        raise ClaimError(f"{name}: metric={c['metric']!r}; choose one of {', '.join(METRICS)}")
    if c.get("direction") == "within" and c.get("magnitude") is None:
        raise ClaimError(f"{name}: direction 'within' needs magnitude (the margin in points)")
    for side in ("a", "b"):
        s = c[side]
        if not (isinstance(s, dict) or (isinstance(s, list) and len(s) == 2 and all(isinstance(x, dict) for x in s))):
            raise ClaimError(f"{name}: {side} must be a selector {{key: value}} or a list of two (a difference)")


def _same(have: str, want) -> bool:
    if have == str(want):
        return True
    try:
        return math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(have).lower() == str(want).lower()


def select(rows: list[dict], selector: dict) -> list[dict]:
    """The rows with an error whose every selector key has the selector's value."""
    return [r for r in rows if r["state"] in USED and all(_same(value(r, k), v) for k, v in selector.items())]


def keyed(rows: list[dict], side, pair_by: list[str]) -> dict[tuple, float]:
    """``{pair key: error}`` of one side (a selector: the mean error of its jobs with that key; a list of two: the
    difference of the two selectors' values at keys both have)."""
    if isinstance(side, list):
        x, y = keyed(rows, side[0], pair_by), keyed(rows, side[1], pair_by)
        return {k: x[k] - y[k] for k in x if k in y}
    groups: dict[tuple, list[float]] = {}
    for r in select(rows, side):
        groups.setdefault(tuple(value(r, k) for k in pair_by), []).append(r["error"])
    return {k: float(np.mean(v)) for k, v in groups.items()}


def _interval(samples: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(samples, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(lo), float(hi)


def _share_within(errors: np.ndarray, k: float) -> float:
    return float(np.mean(errors - errors.min() <= k + 1e-9)) * 100


def verdict(direction: str, lo: float, hi: float, magnitude: float | None, n: int) -> str:
    if n < MIN_UNITS or not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    if direction == "lower":
        return "supported" if hi < 0 else "contradicted" if lo > 0 else "inconclusive"
    if direction == "higher":
        return "supported" if lo > 0 else "contradicted" if hi < 0 else "inconclusive"
    m = abs(magnitude)
    return "supported" if -m <= lo and hi <= m else "contradicted" if lo > m or hi < -m else "inconclusive"


def check(claim: dict, rows: list[dict], study: str = "", n_boot: int = N_BOOT, seed: int = SEED) -> dict:
    """One claim's row of the claims table (module docstring)."""
    pair_by = list(claim.get("pair_by") or [])
    direction, metric = claim.get("direction", "lower"), claim.get("metric", "error")
    out = {c: None for c in CLAIM_COLUMNS} | {
        "study": study, "id": claim["id"], "claim": claim["claim"], "source": claim.get("source"),
        "reading": claim.get("reading"), "metric": metric, "direction": direction, "paper": claim.get("paper"),
        "magnitude": claim.get("magnitude"), "paired": bool(pair_by)}
    rng = np.random.default_rng(seed)
    a, b = keyed(rows, claim["a"], pair_by), keyed(rows, claim["b"], pair_by)
    if pair_by:
        keys = sorted(set(a) & set(b))
        x, y = np.array([a[k] for k in keys]), np.array([b[k] for k in keys])
        n = len(keys)
        out["note"] = f"{n} matched on {', '.join(pair_by)} ({len(a)} on side a, {len(b)} on side b)"
    else:
        x, y = np.array(list(a.values())), np.array(list(b.values()))
        n = min(x.size, y.size)
        out["note"] = f"unpaired: {x.size} jobs on side a, {y.size} on side b"
    out["n"] = n
    if n == 0:
        out["verdict"] = "inconclusive"
        out["note"] = (out["note"] + "; no jobs to compare yet").lstrip("; ")
        return out
    out["a_median"], out["b_median"] = float(np.median(x)), float(np.median(y))
    if metric == "share_within":
        k = float(claim.get("within", 4))
        effect = _share_within(x, k) - _share_within(y, k)
        if pair_by:
            idx = rng.integers(0, n, size=(n_boot, n))
            boots = np.array([_share_within(x[i], k) - _share_within(y[i], k) for i in idx])
        else:
            boots = np.array([_share_within(rng.choice(x, x.size), k) - _share_within(rng.choice(y, y.size), k)
                              for _ in range(n_boot)])
        out["a_median"], out["b_median"] = _share_within(x, k), _share_within(y, k)
        out["note"] += f"; share of each side's jobs within {k:g} points of its best (%)"
    elif pair_by:
        d = x - y
        effect = float(np.median(d))
        boots = np.median(d[rng.integers(0, n, size=(n_boot, n))], axis=1)
        good = d < 0 if direction == "lower" else d > 0 if direction == "higher" else np.abs(d) <= claim["magnitude"]
        ties = d == 0 if direction != "within" else np.zeros(n, bool)
        out["wins"], out["ties"] = int((good & ~ties).sum()), int(ties.sum())
        out["losses"] = n - out["wins"] - out["ties"]
        if direction != "within" and n - out["ties"] > 0:
            out["sign_p"] = float(stats.binomtest(out["wins"], n - out["ties"], 0.5).pvalue)
        if direction != "within" and np.any(d != 0):
            out["wilcoxon_p"] = float(stats.wilcoxon(d).pvalue)
    else:
        effect = float(np.median(x) - np.median(y))
        boots = np.array([np.median(rng.choice(x, x.size)) - np.median(rng.choice(y, y.size)) for _ in range(n_boot)])
    lo, hi = _interval(boots)
    out.update(effect=float(effect), ci_low=lo, ci_high=hi, verdict=verdict(direction, lo, hi, claim.get("magnitude"), n))
    if n < MIN_UNITS:
        out["note"] += f"; fewer than {MIN_UNITS} to compare"
    return out


def check_all(claims: list[dict], rows: list[dict], study: str = "") -> list[dict]:
    return [check(c, rows, study) for c in claims]


def settle(row: dict) -> str:
    """What would settle an inconclusive or contradicted claim, in a few words."""
    if row["verdict"] == "supported":
        return ""
    if not row["n"]:
        return "run the jobs of both sides"
    if row["n"] < MIN_UNITS:
        return f"at least {MIN_UNITS} matched jobs"
    width = (row["ci_high"] or 0) - (row["ci_low"] or 0)
    if row["verdict"] == "inconclusive" and abs(row["effect"] or 0) < width / 10:
        return "no effect measured yet: more matched jobs (to narrow the interval) or a longer run"
    if row["verdict"] == "inconclusive":
        more = max(2, math.ceil(row["n"] * (width / max(abs(row["effect"] or 0), 0.5)) ** 2 / 4))
        if more <= row["n"]:  # the interval is not wide for the effect, but lopsided: the pairs disagree in direction
            return (f"more matched jobs than {row['n']} (the pairs disagree in direction: the interval crosses zero "
                    "though it is not wide for the effect), or a longer run")
        return f"an interval narrower than the effect: ~{more} matched jobs (now {row['n']}), or a longer run"
    return "a longer run or the paper's scale (the direction is measured here)"
