"""The sweep's figures (matplotlib's object API, rendered by Agg): error EDFs, error against lr / weight
decay, validation curves. One colour per group, in the order of the summary, in every figure."""
from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from vitstem.analysis.collect import read_curve
from vitstem.analysis.edf import edf, edf_at, edf_band, resample_counts

SIZE = (7.0, 4.5)


def colour(i: int):
    return colormaps["tab10"](i % 10)


def _figure(title: str, xlabel: str, ylabel: str):
    fig = Figure(figsize=SIZE, layout="constrained")
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.4)
    return fig, ax


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


MEASURED = ("done", "untrained", "diverged")


def _done(rows: list[dict], group: str) -> list[dict]:
    return [r for r in rows if r["group"] == group and r["state"] in MEASURED]


def _counts(rows: list[dict], group: str) -> str:
    counts = {s: sum(r["group"] == group and r["state"] == s for r in rows)
              for s in ("untrained", "diverged", "failed", "pending")}
    return "".join(f", {n} {'failed to train' if s == 'untrained' else s}" for s, n in counts.items() if n)


def plot_edf(rows: list[dict], groups: list[str], name: str, relative: bool = True,
             chance: float | None = None) -> Figure:
    """Per group: the EDF of the error (``relative``: minus the group's best, Xiao et al.'s Fig. 5; else the raw
    error, Radosavovic et al.'s original form, where a group near chance shows as such) with its 5-95% bootstrap
    band (:mod:`vitstem.analysis.edf`; matched jobs, the same draw or seed in every group, are resampled together:
:func:`matched_units`). Relative: the x range ends past the worst job that did not diverge, so a
    curve that stops short of 1 shows the share that diverged (100% error). Raw: chance is a dotted line."""
    if relative:
        fig, ax = _figure(f"{name}: error EDF (relative)", "top-1 error minus the group's best (points)",
                          "cumulative fraction of jobs")
    else:
        fig, ax = _figure(f"{name}: error EDF (raw)", "top-1 error (%)", "cumulative fraction of jobs")
    done = {g: _done(rows, g) for g in groups}
    best = {g: min(r["error"] for r in done[g]) for g in groups if done[g]}
    ref = {g: best[g] if relative else 0.0 for g in best}
    finite = [r["error"] - ref[g] for g in best for r in done[g] if r["state"] != "diverged"]
    x_min = 0.0 if relative else max(0.0, min(finite + [100.0]) - 2)
    x_max = max([x_min + 1.0] + [1.05 * x for x in finite]) if relative else 101.0
    unit_of, shared = matched_units(done)
    for i, g in enumerate(groups):
        if g not in best:
            continue
        mine = sorted(done[g], key=lambda r: r["error"])
        deltas, _ = edf([r["error"] for r in mine], best=ref[g])
        at = np.unique(np.concatenate([[x_min], deltas[(deltas < x_max) & (deltas >= x_min)], [x_max]]))
        counts = shared[:, [unit_of[id(r)] for r in mine]] if shared is not None else None
        lo, hi = edf_band(deltas, at, counts=counts)
        ax.fill_between(at, lo, hi, step="post", color=colour(i), alpha=0.2, linewidth=0)
        ax.step(at, edf_at(deltas, at), where="post", color=colour(i),
                label=f"{g} (n={deltas.size}, best {best[g]:.2f}{_counts(rows, g)})")
    if not relative and chance is not None:
        ax.axvline(chance, color="0.4", linestyle=":", linewidth=1, label=f"chance ({chance:.0f}%)")
    ax.set(xlim=(x_min, x_max), ylim=(0, 1.02))
    if best:
        title = "5-95% bootstrap band" + (", matched jobs resampled together" if shared is not None else "")
        ax.legend(fontsize=7, loc="lower right", title=title, title_fontsize=7)
    else:
        _empty(ax, "no finished jobs yet")
    return fig


def matched_units(done: dict[str, list[dict]]):
    """When every group's jobs are the same matched units (one job per ``study.sample`` draw, else per ``seed``),
    ``({id(row): unit index}, shared resample counts (n_boot, units))`` so that every group's EDF band resamples the
    same units together; else ``({}, None)`` and each group is resampled on its own."""
    from vitstem.analysis.groups import value

    for key in ("study.sample", "seed", "hparams.seed"):
        units = {g: [value(r, key) for r in rows] for g, rows in done.items() if rows}
        sets = {frozenset(u) for u in units.values()}
        if units and len(sets) == 1 and "-" not in next(iter(sets)) and all(len(set(u)) == len(u)
                                                                            for u in units.values()):
            order = sorted(next(iter(sets)), key=lambda v: (len(v), v))
            index = {u: k for k, u in enumerate(order)}
            unit_of = {id(r): index[value(r, key)] for rows in done.values() for r in rows}
            return unit_of, resample_counts(len(order))
    return {}, None


def plot_error_vs(rows: list[dict], groups: list[str], key: str, label: str, name: str) -> Figure:
    """Error against ``row[key]`` (lr or weight decay; log scale when all values are positive); jobs that failed
    to train as hollow markers, diverged jobs as crosses on the top edge."""
    fig, ax = _figure(f"{name}: error vs {label}", label, "top-1 error (%)")
    xs_all = []
    for i, g in enumerate(groups):
        done = [r for r in _done(rows, g) if isinstance(r[key], (int, float)) and np.isfinite(r[key])]
        ok = [r for r in done if r["state"] == "done"]
        weak = [r for r in done if r["state"] == "untrained"]
        bad = [r[key] for r in done if r["state"] == "diverged"]
        xs_all += [r[key] for r in done]
        if ok:
            ax.scatter([r[key] for r in ok], [r["error"] for r in ok], color=colour(i), s=18, label=g)
        if weak:
            ax.scatter([r[key] for r in weak], [r["error"] for r in weak], facecolors="none", edgecolors=colour(i),
                       s=22, label=None if ok else g)
        if bad:
            ax.scatter(bad, [1.0] * len(bad), transform=ax.get_xaxis_transform(), marker="x", color=colour(i),
                       s=30, clip_on=False, label=None if ok or weak else g)
    if not xs_all:
        _empty(ax, f"no finished jobs with a {label} yet")
        return fig
    if min(xs_all) > 0:
        ax.set_xscale("log")
        lo, hi = min(xs_all), max(xs_all)   # set explicitly: crosses alone (every job diverged) give no data limits
        ax.set_xlim(lo / 1.3, hi * 1.3)
    if not any(r["state"] in ("done", "untrained") for g in groups for r in _done(rows, g)):
        ax.set_ylim(0, 100)
    ax.margins(y=0.08)  # room below the top edge, where the crosses of diverged jobs sit
    handles, labels = ax.get_legend_handles_labels()
    if any(r["state"] == "untrained" for r in rows):
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="0.3"))
        labels.append("failed to train (near chance)")
    if any(r["state"] == "diverged" for r in rows):
        handles.append(Line2D([], [], marker="x", linestyle="", color="0.3"))
        labels.append("diverged (top edge)")
    ax.legend(handles, labels, fontsize=7)
    return fig


def plot_by(rows: list[dict], x_key: str, line_keys: list[str], name: str, xlabel: str | None = None,
            log: bool = False) -> Figure:
    """The papers' line plots: error against one setting (``x_key``: training length, alpha, warm-up, stem), one
    line per value of ``line_keys`` (optimizer, activation, stem), through the median of the jobs at each x, a
    bar from the lowest to the highest (the spread over seeds or samples), every job a dot; diverged jobs at 100.
    Categorical x values keep their order of appearance."""
    from vitstem.analysis.groups import value

    fig, ax = _figure(f"{name}: error vs {xlabel or x_key}", xlabel or x_key, "top-1 error (%)")
    used = [r for r in rows if r["state"] in MEASURED and value(r, x_key) != "-"]
    if not used:
        _empty(ax, f"no finished jobs with {x_key} yet")
        return fig
    xs = list(dict.fromkeys(value(r, x_key) for r in used))
    numeric = all(_is_number(x) for x in xs)
    if numeric:
        xs = sorted(xs, key=float)
    pos = {x: (float(x) if numeric else i) for i, x in enumerate(xs)}
    lines = list(dict.fromkeys(",".join(f"{k}={value(r, k)}" for k in line_keys) for r in used))
    for i, line in enumerate(sorted(lines)):
        mine = [r for r in used if ",".join(f"{k}={value(r, k)}" for k in line_keys) == line]
        points = {}
        for r in mine:
            points.setdefault(value(r, x_key), []).append(r["error"])
        at = [x for x in xs if x in points]
        med = [float(np.median(points[x])) for x in at]
        lo = [m - min(points[x]) for m, x in zip(med, at)]
        hi = [max(points[x]) - m for m, x in zip(med, at)]
        ax.errorbar([pos[x] for x in at], med, yerr=[lo, hi], color=colour(i), marker="o", capsize=3,
                    label=f"{line or 'all'} (n={len(mine)})")
        for x in at:
            ax.scatter([pos[x]] * len(points[x]), points[x], color=colour(i), s=8, alpha=0.5)
    if numeric and log and all(float(x) > 0 for x in xs):
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(xs)), xs, rotation=20, fontsize=7)
    ax.legend(fontsize=7, title="median, min-max bar", title_fontsize=7)
    return fig


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def plot_diversity(rows: list[dict], groups: list[str], name: str) -> Figure:
    """Patch-token diversity per block at the end of training (``results.json``'s ``diversity``: the mean
    absolute cosine between distinct patch tokens, Gong et al. 2021 as papers.md reads Wang et al.; lower is more
    diverse), per group: the mean over its jobs, a band from the lowest to the highest job."""
    from vitstem.analysis.collect import _block_order

    fig, ax = _figure(f"{name}: patch-token diversity at the end", "block (stem output, then each block's)",
                      "mean |cos| between patch tokens (lower: more diverse)")
    seen = False
    blocks = sorted({b for r in rows for b in r.get("diversity") or {}}, key=_block_order)
    for i, g in enumerate(groups):
        mine = [r["diversity"] for r in rows if r["group"] == g and r["state"] in ("done", "untrained")
                and r.get("diversity")]
        if not mine:
            continue
        at = [b for b in blocks if all(b in d and d[b] is not None for d in mine)]
        values = np.array([[d[b] for b in at] for d in mine], dtype=float)
        x = [blocks.index(b) for b in at]
        ax.plot(x, values.mean(axis=0), color=colour(i), marker="o", label=f"{g} (n={len(mine)})")
        ax.fill_between(x, values.min(axis=0), values.max(axis=0), color=colour(i), alpha=0.15, linewidth=0)
        seen = True
    if not seen:
        _empty(ax, "no diversity in the jobs' results.json (callbacks.tokens off, or no job finished)")
        return fig
    ax.set_xticks(range(len(blocks)), [b.replace("block_", "b") for b in blocks], fontsize=7)
    ax.legend(fontsize=7)
    return fig


def plot_curves(rows: list[dict], groups: list[str], name: str) -> Figure:
    """Validation top-1 error per epoch, one line per job (its ``metrics.csv``), coloured by group."""
    fig, ax = _figure(f"{name}: validation error", "epoch", "validation top-1 error (%)")
    seen = set()
    for r in rows:
        points = read_curve(r["dir"])
        if points:
            epochs, errors = zip(*points)
            ax.plot(epochs, errors, color=colour(groups.index(r["group"])), alpha=0.6, linewidth=1,
                    marker="." if len(points) < 3 else "")
            seen.add(r["group"])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if seen:
        ax.legend([Line2D([], [], color=colour(i)) for i, g in enumerate(groups) if g in seen],
                  [g for g in groups if g in seen], fontsize=7)
    else:
        _empty(ax, "no metrics.csv with validation rows yet")
    return fig


def plot_blocks(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
                log: bool = False, marks: dict[str, list[float]] | None = None) -> Figure:
    """One line per block (:func:`~vitstem.analysis.collect.read_blocks`), coloured in network order from the stem
    (dark) to the head (light), ``total`` dashed black; ``marks`` draws vertical lines at x values, one style per
    label (spikes, divergence)."""
    fig, ax = _figure(title, xlabel, ylabel)
    blocks = [b for b in series if b != "total"]
    cmap = colormaps["viridis"]
    for i, name in enumerate(blocks):
        xs, ys = zip(*series[name])
        ax.plot(xs, ys, color=cmap(i / max(1, len(blocks) - 1) * 0.9), linewidth=1.2, label=name,
                marker="." if len(xs) < 3 else "")
    if "total" in series:
        xs, ys = zip(*series["total"])
        ax.plot(xs, ys, color="black", linestyle="--", linewidth=1, label="total", marker="." if len(xs) < 3 else "")
    for (label, xs), style in zip((marks or {}).items(), (":", "-")):
        for j, x in enumerate(xs):
            ax.axvline(x, color="tab:red", linestyle=style, linewidth=1, alpha=0.7, label=label if j == 0 else None)
    if not series:
        _empty(ax, "no such columns in the job's metrics.csv")
        return fig
    if log and all(y > 0 for points in series.values() for _, y in points):
        ax.set_yscale("log")
    if xlabel == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, ncol=2 if len(series) > 8 else 1)
    return fig

