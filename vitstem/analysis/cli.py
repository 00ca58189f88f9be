"""``vitstem-analyze``: a sweep folder's claims checked, tables, error EDFs, plots and report, in ``SWEEP_DIR/analysis/``.

    vitstem-analyze multirun/xiao_lr_wd                         # groups: the override keys that vary
    vitstem-analyze multirun/xiao_lr_wd --by model --by optimizer
    vitstem-analyze multirun/xiao_lr_wd --by hparams.stem       # a setting from the results' hparams block
    vitstem-analyze multirun/wang_stems --metric raw            # the raw weights' error (DeiT, Wang et al.)
    vitstem-analyze multirun/xiao_lr_wd_tiny --study xiao_lr_wd/tiny   # claims and plots from conf/sweep/
    vitstem-analyze multirun/xiao_lr_wd --wandb                 # also one wandb run (offline without a key)
    vitstem-analyze multirun/xiao_lr_wd --job 3                 # also job 3's curves per block (vitstem.instrument)

Checks the study's claims (``study.claims``: :mod:`vitstem.analysis.claims`) and prints them first: supported,
contradicted or inconclusive, with the effect and its 95% interval. Writes ``claims.csv``, ``runs.csv``,
``summary.csv``, ``edf_raw.png`` (raw error, chance marked) and ``edf.png`` (error minus the group's best),
``error_vs_lr.png``, ``error_vs_wd.png``, the study's own plots (``study.plots``: ``plot_<i>.png``, e.g. error vs
training length per optimizer), ``diversity.png`` (patch-token diversity per block at the end, when the jobs
logged it), ``curves.png`` and ``report.html`` (the claims table first), and prints ``<sweep>: N of M done``, the
claims and the summary. Works on a sweep in progress, on one where every job diverged or failed, and names and
counts an unreadable results.json. Errors and groups: :mod:`vitstem.analysis.collect`,
:mod:`vitstem.analysis.groups`, :mod:`vitstem.analysis.edf`. ``--job K``
adds job K's per-block curves from its ``metrics.csv``: ``job<K>_grad_norms.png`` (gradient norm per block over
steps, its spikes and divergence marked), ``job<K>_update_ratio.png``, ``job<K>_diversity.png`` (patch-token
diversity per block over epochs) and ``job<K>_attention.png`` (attention entropy, or for point-wise attention the
zero fraction, per block over epochs), also in ``report.html``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitstem.analysis import groups as grouping
from vitstem.analysis import plots
from vitstem.analysis.claims import CLAIM_COLUMNS, check_all, load_claims
from vitstem.analysis.collect import ANALYSIS, METRICS, AnalysisError, collect, read_blocks
from vitstem.analysis.edf import summarize
from vitstem.analysis.report import (RUN_COLUMNS, SUMMARY_COLUMNS, claims_text, details, headline, html_report,
                                     log_wandb, text_table, write_csv)
from vitstem.runs.results import ResultsError, read_results


def job_figures(sweep: dict, job: str) -> dict:
    """``{title: (file, figure)}``: the per-block curves of one job (module docstring)."""
    row = next((r for r in sweep["rows"] if r["job"] == job), None)
    if row is None or row["dir"] is None:
        found = [r["job"] for r in sweep["rows"] if r["dir"] is not None]
        raise AnalysisError(f"--job {job}: no such job folder; the jobs with folders are {', '.join(found) or 'none'}")
    try:
        results = read_results(row["dir"]) or {}
    except ResultsError:  # counted as unreadable in the report already: the curves need only metrics.csv
        results = {}
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


def study_config(sweep: dict, form: str | None):
    """Where the claims and plots come from: ``conf/sweep/<form>`` composed (``--study``), else the sweep's
    ``multirun.yaml``."""
    if form is None:
        return sweep["config"]
    from vitstem.config import ConfigError, compose

    try:
        return compose([f"sweep={form}"])
    except ConfigError as e:
        raise AnalysisError(f"--study {form}: {e}") from None


def analyze(sweep_dir: Path, by: list[str] | None = None, wandb: bool = False, project: str = "vitstem",
            jobs: list[str] | None = None, metric: str = "auto", study: str | None = None) -> dict:
    """Write every output into ``sweep_dir/analysis/``; return the sweep, its grouping keys, summary and claims."""
    sweep = collect(sweep_dir, metric)
    rows = sweep["rows"]
    cfg = study_config(sweep, study)
    keys = by or study_list(cfg, "study.group_by") or grouping.varying_keys(rows)
    grouping.check_keys(rows, keys)
    names = grouping.assign(rows, keys)
    summary = summarize(rows, names)
    try:
        claim_specs = load_claims(cfg) if cfg is not None else []
    except Exception as e:  # a claim that does not read: the report still comes, and says why
        raise AnalysisError(f"{sweep_dir}: study.claims: {e}") from None
    claims = check_all(claim_specs, rows, sweep["name"])
    out = sweep_dir / ANALYSIS
    out.mkdir(exist_ok=True)
    write_csv(out / "runs.csv", rows, RUN_COLUMNS)
    write_csv(out / "summary.csv", summary, SUMMARY_COLUMNS)
    write_csv(out / "claims.csv", claims, CLAIM_COLUMNS)
    name = sweep["name"]
    figures = {"Error EDF, raw error": ("edf_raw.png", plots.plot_edf(rows, names, name, False, sweep["chance"])),
               "Error EDF, error minus the group's best": ("edf.png", plots.plot_edf(rows, names, name)),
               "Error vs lr": ("error_vs_lr.png", plots.plot_error_vs(rows, names, "lr", "base lr", name)),
               "Error vs weight decay": ("error_vs_wd.png",
                                         plots.plot_error_vs(rows, names, "weight_decay", "weight decay", name))}
    for i, spec in enumerate(study_plots(cfg)):
        title = spec.get("title") or f"Error vs {spec['x']}"
        figures[title] = (f"plot_{i}.png", plots.plot_by(rows, spec["x"], list(spec.get("lines") or []), name,
                                                         spec.get("xlabel"), bool(spec.get("log"))))
    if any(r.get("diversity") for r in rows):
        figures["Patch-token diversity per block at the end"] = ("diversity.png",
                                                                 plots.plot_diversity(rows, names, name))
    figures["Validation curves"] = ("curves.png", plots.plot_curves(rows, names, name))
    for job in jobs or []:
        figures |= job_figures(sweep, job)
    images = {title: out / file for title, (file, _) in figures.items()}
    for title, (file, fig) in figures.items():
        fig.savefig(images[title], dpi=110)
    (out / "report.html").write_text(html_report(sweep, keys, summary, images, claims, metric))
    wandb_dir = log_wandb(out, sweep, summary, images, project) if wandb else None
    files = ["runs.csv", "summary.csv", "claims.csv", *(p.name for p in images.values()), "report.html"]
    return {"sweep": sweep, "keys": keys, "summary": summary, "claims": claims, "out": out, "files": files,
            "wandb_dir": wandb_dir, "metric": metric}


def study_list(cfg, key: str) -> list:
    """A list of the study config (``study.plots``, ``study.group_by``), resolved; [] if none."""
    from omegaconf import OmegaConf

    try:
        node = OmegaConf.select(cfg, key, default=None) if cfg is not None else None
        return list(OmegaConf.to_container(node, resolve=True)) if node is not None else []
    except Exception:  # an unresolvable saved config: the defaults serve
        return []


def study_plots(cfg) -> list[dict]:
    """``study.plots`` of the study config: ``[{x: KEY, lines: [KEY, ...], title, xlabel, log}]``; [] if none."""
    return study_list(cfg, "study.plots")


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
    parser.add_argument("--metric", choices=METRICS, default="auto",
                        help="the error: auto (the EMA's when the run had one, else the raw weights'; Xiao et al.), "
                             "raw (the raw weights'; DeiT, Wang et al.) or ema")
    parser.add_argument("--study", metavar="FORM",
                        help="read the claims and plots from conf/sweep/FORM (e.g. xiao_lr_wd/tiny) instead of the "
                             "sweep's multirun.yaml")
    args = parser.parse_args(argv)
    try:
        result = analyze(args.sweep_dir, args.by, args.wandb, args.project, args.job, args.metric, args.study)
    except AnalysisError as e:
        print(f"vitstem-analyze: error: {e}", file=sys.stderr)
        sys.exit(2)
    sweep = result["sweep"]
    print(headline(sweep))
    print(claims_text(result["claims"]))
    print(details(sweep, result["keys"]))
    print(text_table(result["summary"]))
    print(f"wrote {result['out']}/: {' '.join(result['files'])}")
    if result["wandb_dir"]:
        print(f"wandb run: {result['wandb_dir']}")


if __name__ == "__main__":
    main()
