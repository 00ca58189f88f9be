"""``vitstem-analyze``: a sweep folder's tables, error EDFs, plots and report, in ``SWEEP_DIR/analysis/``.

    vitstem-analyze multirun/xiao_lr_wd                         # groups: the override keys that vary
    vitstem-analyze multirun/xiao_lr_wd --by model --by optimizer
    vitstem-analyze multirun/xiao_lr_wd --by hparams.stem       # a setting from the results' hparams block
    vitstem-analyze multirun/xiao_lr_wd --wandb                 # also one wandb run (offline without a key)
    vitstem-analyze multirun/xiao_lr_wd --job 3                 # also job 3's curves per block (vitstem.instrument)

Writes ``runs.csv``, ``summary.csv``, ``edf.png``, ``error_vs_lr.png``, ``error_vs_wd.png``, ``curves.png`` and
``report.html``, and prints ``<sweep>: N of M done`` and the summary. Works on a sweep in progress. Errors and
groups: :mod:`vitstem.analysis.collect`, :mod:`vitstem.analysis.groups`, :mod:`vitstem.analysis.edf`. ``--job K``
adds job K's per-block curves from its ``metrics.csv``: ``job<K>_grad_norms.png`` (gradient norm per block over
steps, its spikes and divergence marked), ``job<K>_update_ratio.png``, ``job<K>_diversity.png`` (patch-token
diversity per block over epochs) and ``job<K>_attention.png`` (attention entropy, or for point-wise attention the
zero fraction, per block over epochs), also in ``report.html``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vitstem.analysis import groups as grouping
from vitstem.analysis import plots
from vitstem.analysis.collect import ANALYSIS, AnalysisError, collect, read_blocks
from vitstem.analysis.edf import summarize
from vitstem.analysis.report import (RUN_COLUMNS, SUMMARY_COLUMNS, details, headline, html_report, log_wandb,
                                     text_table, write_csv)


def job_figures(sweep: dict, job: str) -> dict:
    """``{title: (file, figure)}``: the per-block curves of one job (module docstring)."""
    row = next((r for r in sweep["rows"] if r["job"] == job), None)
    if row is None or row["dir"] is None:
        found = [r["job"] for r in sweep["rows"] if r["dir"] is not None]
        raise AnalysisError(f"--job {job}: no such job folder; the jobs with folders are {', '.join(found) or 'none'}")
    results = read_results(row["dir"])
    spikes = sorted({e["step"] for e in results.get("spikes") or [] if e.get("kind") == "grad"})
    marks = {"gradient spike": spikes, "diverged": [results["diverged_at_step"]] if results.get("diverged_at_step")
             is not None else []}
    name, stem = f"{sweep['name']} job {job}", f"job{job.replace('/', '_')}"
    attention = next((p for p in ("attention/entropy/", "attention/zero_fraction/")
                      if read_blocks(row["dir"], p, by="epoch")), "attention/entropy/")
    return {
        f"Job {job}: gradient norm per block": (f"{stem}_grad_norms.png", plots.plot_blocks(
            read_blocks(row["dir"], "norms/grad/"), f"{name}: gradient norm per block", "step", "gradient L2 norm",
            log=True, marks=marks)),
        f"Job {job}: update / parameter norm per block": (f"{stem}_update_ratio.png", plots.plot_blocks(
            read_blocks(row["dir"], "norms/update_ratio/"), f"{name}: update / parameter norm", "step",
            "update norm / parameter norm", log=True, marks=marks)),
        f"Job {job}: patch-token diversity per block": (f"{stem}_diversity.png", plots.plot_blocks(
            read_blocks(row["dir"], "diversity/", by="epoch"), f"{name}: patch-token diversity (lower: more diverse)",
            "epoch", "mean |cos| between patch tokens")),
        f"Job {job}: attention per block": (f"{stem}_attention.png", plots.plot_blocks(
            read_blocks(row["dir"], attention, by="epoch"), f"{name}: attention {attention.split('/')[1]}", "epoch",
            {"attention/entropy/": "mean entropy per query (nats)"}.get(attention, "fraction of zero weights"))),
    }


def read_results(job_dir: Path) -> dict:
    try:
        return json.loads((job_dir / "results.json").read_text())
    except (OSError, ValueError):
        return {}


def analyze(sweep_dir: Path, by: list[str] | None = None, wandb: bool = False, project: str = "vitstem",
            jobs: list[str] | None = None) -> dict:
    """Write every output into ``sweep_dir/analysis/``; return the sweep, its grouping keys and summary."""
    sweep = collect(sweep_dir)
    rows = sweep["rows"]
    keys = by or grouping.varying_keys(rows)
    grouping.check_keys(rows, keys)
    names = grouping.assign(rows, keys)
    summary = summarize(rows, names)
    out = sweep_dir / ANALYSIS
    out.mkdir(exist_ok=True)
    write_csv(out / "runs.csv", rows, RUN_COLUMNS)
    write_csv(out / "summary.csv", summary, SUMMARY_COLUMNS)
    name = sweep["name"]
    figures = {"Error EDF": ("edf.png", plots.plot_edf(rows, names, name)),
               "Error vs lr": ("error_vs_lr.png", plots.plot_error_vs(rows, names, "lr", "base lr", name)),
               "Error vs weight decay": ("error_vs_wd.png",
                                         plots.plot_error_vs(rows, names, "weight_decay", "weight decay", name)),
               "Validation curves": ("curves.png", plots.plot_curves(rows, names, name))}
    for job in jobs or []:
        figures |= job_figures(sweep, job)
    images = {title: out / file for title, (file, _) in figures.items()}
    for title, (file, fig) in figures.items():
        fig.savefig(images[title], dpi=120)
    (out / "report.html").write_text(html_report(sweep, keys, summary, images))
    wandb_dir = log_wandb(out, sweep, summary, images, project) if wandb else None
    files = ["runs.csv", "summary.csv", *(p.name for p in images.values()), "report.html"]
    return {"sweep": sweep, "keys": keys, "summary": summary, "out": out, "files": files, "wandb_dir": wandb_dir}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vitstem-analyze", description=__doc__.replace("``", ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", type=Path, help="a sweep folder (multirun/<name>)")
    parser.add_argument("--by", action="append", metavar="KEY",
                        help="group by this override key (model, optimizer, model/stem, ...) or hparams.<name>; "
                             "repeat for several (default: the override keys that vary, sampled keys excepted)")
    parser.add_argument("--wandb", action="store_true", help="log the tables and figures as one wandb run")
    parser.add_argument("--project", default="vitstem", help="wandb project (default: vitstem)")
    parser.add_argument("--job", action="append", metavar="JOB",
                        help="also plot this job's curves per block (gradient norms, update ratio, token diversity, "
                             "attention) from its metrics.csv; JOB is its folder below SWEEP_DIR, e.g. 3; repeatable")
    args = parser.parse_args(argv)
    try:
        result = analyze(args.sweep_dir, args.by, args.wandb, args.project, args.job)
    except AnalysisError as e:
        print(f"vitstem-analyze: error: {e}", file=sys.stderr)
        sys.exit(2)
    sweep = result["sweep"]
    print(headline(sweep))
    print(details(sweep, result["keys"]))
    print(text_table(result["summary"]))
    print(f"wrote {result['out']}/: {' '.join(result['files'])}")
    if result["wandb_dir"]:
        print(f"wandb run: {result['wandb_dir']}")


if __name__ == "__main__":
    main()
