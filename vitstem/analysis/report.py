"""The sweep's outputs: ``runs.csv`` and ``summary.csv``, the text printed to stdout, the self-contained
``report.html`` (figures inlined as base64 PNG) and, on request, one wandb run with the same tables and figures."""
from __future__ import annotations

import base64
import csv
import html
from pathlib import Path

from vitstem.analysis.claims import settle
from vitstem.analysis.edf import MEASURED, WITHIN
from vitstem.runs.results import fmt

RUN_COLUMNS = ("job", "status", "group", "error", "lr", "lr_scaled", "weight_decay", "model", "stem", "attention",
               "alpha", "optimizer", "sample", "epochs", "best_acc1", "final_acc1", "best_ema_acc1", "wall_time_s",
               "message")
SUMMARY_COLUMNS = ("group", "jobs", "done", "untrained", "diverged", "failed", "pending", "best", "median",
                   *(f"within_{k}" for k in WITHIN))


def table(rows: list[dict], columns: tuple[str, ...]) -> list[list]:
    return [[r.get(c) for c in columns] for r in rows]


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(columns)
        out.writerows([["" if v is None else v for v in line] for line in table(rows, columns)])


def headline(sweep: dict) -> str:
    """``name: N of M done``: M is the number of jobs planned (``multirun.yaml``), else the number found."""
    done = sum(r["state"] in MEASURED for r in sweep["rows"])
    return f"{sweep['name']}: {done} of {len(sweep['rows'])} done"


def details(sweep: dict, keys: list[str]) -> str:
    rows = sweep["rows"]
    counts = ", ".join(f"{sum(r['state'] == s for r in rows)} {s}" for s in ("diverged", "failed", "pending"))
    untrained = sum(r["state"] == "untrained" for r in rows)
    if untrained:
        counts = f"{untrained} failed to train (within a few points of chance), " + counts
    plan = ("number planned unknown (no readable multirun.yaml)" if sweep["planned"] is None
            else f"{sweep['planned']} planned")
    line = f"{sweep['found']} job folders, {plan}; {counts}; grouped by {', '.join(keys) or 'nothing (one group)'}"
    if sweep.get("unreadable"):
        line += (f"\nskipped {len(sweep['unreadable'])} unreadable results.json (counted as failed): "
                 + ", ".join(f"job {j}" for j in sweep["unreadable"]))
    return line


def text_table(summary: list[dict]) -> str:
    """The summary as aligned text: best and median error, share of done jobs within 1/2/4 points of the best."""
    head = ["group", "jobs", "done", "untrained", "diverged", "failed", "pending", "best", "median",
            *(f"<={k}" for k in WITHIN)]
    body = [[s["group"], *(str(s[c]) for c in SUMMARY_COLUMNS[1:7]), fmt(s["best"]), fmt(s["median"]),
             *(fmt(s[f"within_{k}"], percent=True) for k in WITHIN)] for s in summary]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in [head, *body])


def interval(c: dict) -> str:
    if c["effect"] is None:
        return "-"
    return f"{c['effect']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]"


def claims_text(claims: list[dict]) -> str:
    """The claims table for stdout: verdict, effect with its 95% interval, matched jobs, win counts, p-values."""
    if not claims:
        return "claims: none (the study config has no study.claims)"
    lines = ["claims (effect: median paired difference a - b in points, 95% bootstrap interval; "
             "wins: pairs in the claimed direction):"]
    for c in claims:
        tests = "" if c["sign_p"] is None else f", sign p={c['sign_p']:.3g}"
        tests += "" if c["wilcoxon_p"] is None else f", Wilcoxon p={c['wilcoxon_p']:.3g}"
        wins = "" if c["wins"] is None else f", wins {c['wins']}/{c['n']}"
        paper = f" (paper: {c['magnitude']})" if c["magnitude"] is not None else ""
        lines.append(f"  {c['verdict'].upper():12s} {c['id']}: {interval(c)}{paper}, n={c['n']}{wins}{tests}")
        lines.append(f"  {'':12s} {c['claim']} [{c['source']}; reading: {c['reading']}]")
        if settle(c):
            lines.append(f"  {'':12s} would settle it: {settle(c)}")
    return "\n".join(lines)


def _html_table(rows: list[dict], columns: tuple[str, ...], percent: tuple[str, ...] = ()) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(c), c in percent))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;font-size:13px}"
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child,th:first-child{text-align:left}"
         "img{max-width:100%}")


def html_report(sweep: dict, keys: list[str], summary: list[dict], images: dict[str, Path],
                claims: list[dict] | None = None, metric: str = "auto") -> str:
    """One self-contained page: headline, the claims table, summary table, every figure, the runs table."""
    figures = "".join(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,"
                      f"{base64.b64encode(path.read_bytes()).decode()}'>" for title, path in images.items())
    percent = tuple(f"within_{k}" for k in WITHIN)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(sweep['name'])}: sweep analysis"
            f"</title><style>{STYLE}</style></head><body><h1>{html.escape(headline(sweep))}</h1>"
            f"{claims_html(claims)}"
            f"<p>{html.escape(details(sweep, keys))}. Error ({html.escape(METRIC_TEXT[metric])}), in percent; a "
            "diverged job counts as 100; a job within a few points of chance failed to train (<i>untrained</i>). "
            "<i>within k</i>: share of done jobs within k points of "
            f"the group's best.</p><h2>Summary</h2>{_html_table(summary, SUMMARY_COLUMNS, percent)}{figures}"
            f"<h2>Runs</h2>{_html_table(sweep['rows'], RUN_COLUMNS)}</body></html>\n")


METRIC_TEXT = {"auto": "best EMA top-1 error with an EMA, else best top-1 error",
               "raw": "the raw weights' best top-1 error", "ema": "the EMA's best top-1 error"}
CLAIM_HTML = ("verdict", "id", "claim", "source", "reading", "paper", "magnitude", "effect", "ci_low", "ci_high", "n",
              "wins", "sign_p", "wilcoxon_p", "note")
COLOURS = {"supported": "#d4edda", "contradicted": "#f8d7da", "inconclusive": "#fff3cd"}


def claims_html(claims: list[dict] | None) -> str:
    if not claims:
        return "<h2>Claims</h2><p>None: the study config has no <code>study.claims</code>.</p>"
    head = "".join(f"<th>{c}</th>" for c in CLAIM_HTML)
    body = "".join(f"<tr style='background:{COLOURS.get(c['verdict'], '#fff')}'>" + "".join(
        f"<td>{html.escape(fmt(c.get(k)))}</td>" for k in CLAIM_HTML) + "</tr>" for c in claims)
    return ("<h2>Claims</h2><p>effect: the median paired difference a - b (points of top-1 error; share_within: "
            "points of share), with its 95% bootstrap interval over matched jobs; the verdict reads the interval "
            f"(vitstem/analysis/claims.py).</p><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def log_wandb(out_dir: Path, sweep: dict, summary: list[dict], images: dict[str, Path], project: str) -> Path:
    """Log the tables (``wandb.Table``) and figures (``wandb.Image``) as one run, ``job_type="analysis"``,
    grouped by the sweep's name; offline under ``out_dir/wandb/`` when no API key is set. Returns the run's
    folder."""
    import wandb

    from vitstem.runs.loggers import wandb_offline_reason

    offline = wandb_offline_reason() is not None  # decided before wandb calls out: a hung server never holds it
    run = wandb.init(project=project, group=sweep["name"], job_type="analysis", name=f"{sweep['name']}-analysis",
                     dir=str(out_dir), mode="offline" if offline else None,
                     config={"sweep": sweep["name"], "jobs": len(sweep["rows"]), "found": sweep["found"]})
    try:
        run.log({"summary": wandb.Table(columns=list(SUMMARY_COLUMNS), data=table(summary, SUMMARY_COLUMNS),
                                        allow_mixed_types=True),
                 "runs": wandb.Table(columns=list(RUN_COLUMNS), data=table(sweep["rows"], RUN_COLUMNS),
                                     allow_mixed_types=True),
                 **{path.stem: wandb.Image(str(path)) for path in images.values()}})
        return Path(run.dir).parent
    finally:
        run.finish()
