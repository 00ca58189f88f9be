"""``sweeps/results/REPLICATION.md``: every study's claims as measured by its tiny form, one table.

Built from the ``claims.csv`` and ``summary.csv`` that ``vitstem-analyze`` wrote and ``vitstem-replicate`` copied
to ``sweeps/results/<name>/``: per claim the paper's number, ours (the effect with its 95% interval, matched
jobs, wins), the verdict and the plot; a study not analysed yet is listed as such.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

from vitstem.analysis.claims import settle

HEADER = """# Replication of the papers' claims by the tiny forms

Written by `vitstem-replicate` (vitstem/sweeps/replicate.py) from each study's `claims.csv`; every study's
folder here holds its `report.html` (the claims table first), `runs.csv`, `summary.csv` and figures. The tiny
forms (`conf/sweep/<study>/tiny.yaml`, designs and expected outcomes in their headers) run 256 steps at batch 64
on 4,096 synthetic 32 px images (10 classes, chance 90% error) on the CPU; they test the *direction* of each
paper's effect, not its size. Verdicts (vitstem/analysis/claims.py): **supported** when the 95% bootstrap
interval of the median paired difference lies wholly on the claimed side (for "within" claims: inside the
margin), **contradicted** when it lies wholly on the other side (outside the margin), **inconclusive** otherwise;
effects are in points of top-1 error (a - b; negative: a's error is lower). With 3 matched seeds the percentile
bootstrap of the median spans about the lowest to the highest paired difference, so "supported" there means all
three pairs agree in direction (the sign test cannot go below p = 0.25 with 3 pairs; its p-value is given): a
direction measured at small scale, not a significance claim.
"""


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _num(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def ours(c: dict) -> str:
    effect, lo, hi = _num(c.get("effect")), _num(c.get("ci_low")), _num(c.get("ci_high"))
    if effect is None:
        return f"no matched jobs yet ({c.get('note') or ''})"
    text = f"{effect:+.1f} [{lo:+.1f}, {hi:+.1f}], n={c['n']}"
    if c.get("wins"):
        text += f", {c['wins']}/{c['n']} pairs in the claimed direction"
    if _num(c.get("sign_p")) is not None:
        text += f", sign p={float(c['sign_p']):.2g}"
    if c.get("metric") == "share_within":
        text += f" (shares {float(c['a_median']):.0f}% vs {float(c['b_median']):.0f}%)"
    return text


def write_replication(results: Path, names: list[str], suffix: str = "") -> Path:
    """Write ``results/REPLICATION{suffix}.md`` over the studies ``names`` (their folders under ``results``)."""
    lines = [HEADER, f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n"]
    verdicts: dict[str, int] = {}
    for name in names:
        claims = _read(results / name / "claims.csv")
        summary = _read(results / name / "summary.csv")
        lines.append(f"## {name}\n")
        if not claims and not summary:
            lines.append("Not analysed yet: run `vitstem-replicate` (it resumes) to produce it.\n")
            continue
        jobs = sum(int(s["jobs"]) for s in summary)
        done = sum(int(s["done"]) for s in summary)
        pending = sum(int(s["pending"]) for s in summary)
        state = "complete" if pending == 0 else f"**partial: {pending} jobs still pending**"
        wall = sum(_num(r.get("wall_time_s")) or 0.0 for r in _read(results / name / "runs.csv"))
        lines.append(f"{done} of {jobs} jobs measured ({state}); wall time {wall / 60:.0f} min (the jobs' "
                     f"wall_time_s summed); report: [{name}/report.html]({name}/report.html)\n")
        lines.append("| claim | source | paper | ours: effect [95% CI] | verdict | would settle it |")
        lines.append("|---|---|---|---|---|---|")
        for c in claims:
            verdicts[c["verdict"]] = verdicts.get(c["verdict"], 0) + 1
            reading = "" if c.get("reading") in (None, "", "paper") else f" *(reading: {c['reading']})*"
            row = {**c, "n": int(c["n"] or 0), "effect": _num(c["effect"]), "ci_low": _num(c["ci_low"]),
                   "ci_high": _num(c["ci_high"])}
            cells = [f"`{c['id']}`: {c['claim']}{reading}", c.get("source") or "", c.get("paper") or "", ours(c),
                     f"**{c['verdict']}**", settle(row)]
            lines.append("| " + " | ".join(x.replace("|", "/").replace("\n", " ") for x in cells) + " |")
        figures = sorted(p.name for p in (results / name).glob("*.png"))
        if figures:
            lines.append("\nPlots: " + ", ".join(f"[{f}]({name}/{f})" for f in figures) + "\n")
    lines.append("## Totals\n")
    lines.append(", ".join(f"{n} {v}" for v, n in sorted(verdicts.items())) or "no claims checked yet")
    path = results / f"REPLICATION{suffix}.md"
    results.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
