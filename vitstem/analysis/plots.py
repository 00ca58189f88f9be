"""The sweep's figures (matplotlib's object API, rendered by Agg): error EDFs, error against lr / weight
decay, validation curves. One colour per group, in the order of the summary, in every figure."""
from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from vitstem.analysis.collect import read_curve
from vitstem.analysis.edf import edf, edf_at, edf_band

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


def _done(rows: list[dict], group: str) -> list[dict]:
    return [r for r in rows if r["group"] == group and r["state"] in ("done", "diverged")]


def plot_edf(rows: list[dict], groups: list[str], name: str) -> Figure:
    """Per group: the EDF of error minus the group's best (:mod:`vitstem.analysis.edf`) with its 5-95%
    bootstrap band. The x range ends past the worst job that did not diverge: diverged jobs (100% error) lie
    beyond it, so a curve that stops short of 1 shows the share that diverged."""
    fig, ax = _figure(f"{name}: error EDF", "top-1 error minus the group's best (points)",
                      "cumulative fraction of jobs")
    done = {g: _done(rows, g) for g in groups}
    best = {g: min(r["error"] for r in done[g]) for g in groups if done[g]}
    x_max = max([1.0] + [1.05 * (r["error"] - best[g]) for g in best for r in done[g] if r["state"] == "done"])
    for i, g in enumerate(groups):
        if g not in best:
            continue
        deltas, _ = edf([r["error"] for r in done[g]])
        at = np.unique(np.concatenate([[0.0], deltas[deltas < x_max], [x_max]]))
        lo, hi = edf_band(deltas, at)
        ax.fill_between(at, lo, hi, step="post", color=colour(i), alpha=0.2, linewidth=0)
        counts = {s: sum(r["group"] == g and r["state"] == s for r in rows) for s in ("diverged", "failed", "pending")}
        extra = "".join(f", {n} {s}" for s, n in counts.items() if n)
        ax.step(at, edf_at(deltas, at), where="post", color=colour(i),
                label=f"{g} (n={deltas.size}, best {best[g]:.2f}{extra})")
    ax.set(xlim=(0, x_max), ylim=(0, 1.02))
    if ax.lines:
        ax.legend(fontsize=7, loc="lower right", title="5-95% bootstrap band", title_fontsize=7)
    else:
        _empty(ax, "no finished jobs yet")
    return fig


def plot_error_vs(rows: list[dict], groups: list[str], key: str, label: str, name: str) -> Figure:
    """Error against ``row[key]`` (lr or weight decay; log scale when all values are positive); diverged
    jobs as crosses on the top edge."""
    fig, ax = _figure(f"{name}: error vs {label}", label, "top-1 error (%)")
    xs_all = []
    for i, g in enumerate(groups):
        done = [r for r in _done(rows, g) if r[key] is not None]
        ok = [r for r in done if r["state"] == "done"]
        bad = [r[key] for r in done if r["state"] == "diverged"]
        xs_all += [r[key] for r in done]
        if ok:
            ax.scatter([r[key] for r in ok], [r["error"] for r in ok], color=colour(i), s=18, label=g)
        if bad:
            ax.scatter(bad, [1.0] * len(bad), transform=ax.get_xaxis_transform(), marker="x", color=colour(i),
                       s=30, clip_on=False, label=None if ok else g)
    if not xs_all:
        _empty(ax, f"no finished jobs with a {label} yet")
        return fig
    if min(xs_all) > 0:
        ax.set_xscale("log")
    ax.margins(y=0.08)  # room below the top edge, where the crosses of diverged jobs sit
    handles, labels = ax.get_legend_handles_labels()
    if any(r["state"] == "diverged" for r in rows):
        handles.append(Line2D([], [], marker="x", linestyle="", color="0.3"))
        labels.append("diverged (top edge)")
    ax.legend(handles, labels, fontsize=7)
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

