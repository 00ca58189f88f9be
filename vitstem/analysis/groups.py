"""Grouping jobs: by the override keys whose values vary across the sweep, or by the keys of ``--by``.

A key is an override key as typed on the command line (``model``, ``optimizer``, ``model/stem``,
``optimizer.lr``); a key that starts with ``hparams.`` reads the ``hparams`` block of ``results.json`` instead
(``hparams.stem``, ``hparams.attention.activation``: settings that a sweep set through an experiment). By default
the grouping keys are the override keys whose values differ between jobs, less the sampled ones (each job's
``hparams.sampled``, and ``study.sample`` / ``study.sampled``) and the replicate keys (``seed``: a cell's seeds
are its repeats, not groups of their own); a study config may name its own (``study.group_by``). A group is named ``key=value,key=value`` (``-``
for a key a job does not set), or ``all`` when nothing varies.
"""
from __future__ import annotations

from vitstem.analysis.collect import SWEEP_KEYS, AnalysisError

REPLICATE_KEYS = ("seed",)


def sampled_keys(rows: list[dict]) -> set[str]:
    return set(SWEEP_KEYS).union(*(r["sampled"] for r in rows))


def varying_keys(rows: list[dict]) -> list[str]:
    """The override keys whose values differ between jobs, sampled keys excepted, in command-line order."""
    skip = sampled_keys(rows) | set(REPLICATE_KEYS)
    keys = dict.fromkeys(k for r in rows for k in r["overrides"])
    return [k for k in keys if k not in skip and len({r["overrides"].get(k) for r in rows}) > 1]


def value(row: dict, key: str) -> str:
    """The job's value of a grouping key, as text (``-`` when it has none)."""
    if key.startswith("hparams."):
        v = row["hparams"]
        for part in key.split(".")[1:]:
            v = v.get(part) if isinstance(v, dict) else None
    else:
        v = row["overrides"].get(key)
    return "-" if v is None else str(v)


def check_keys(rows: list[dict], keys: list[str]) -> None:
    """Raise :class:`AnalysisError` for a ``--by`` key that no job has."""
    known = dict.fromkeys(k for r in rows for k in r["overrides"])
    for key in keys:
        if all(value(r, key) == "-" for r in rows):
            hint = "an hparams name" if key.startswith("hparams.") else f"override keys: {', '.join(known) or 'none'}"
            raise AnalysisError(f"--by {key}: no job has this key ({hint})")


def _order(text: str) -> tuple:
    try:
        return 0, float(text), ""
    except ValueError:
        return 1, 0.0, text


def assign(rows: list[dict], keys: list[str]) -> list[str]:
    """Set each row's ``group``; return the groups in order (numbers by value, names alphabetically)."""
    order = {}
    for r in rows:
        values = [value(r, k) for k in keys]
        r["group"] = ",".join(f"{k}={v}" for k, v in zip(keys, values)) or "all"
        order[r["group"]] = tuple(_order(v) for v in values)
    return sorted(order, key=order.get)
