"""Reading a sweep folder: one row per job (done, diverged, failed or pending), the plan, validation curves.

A job is a folder below ``SWEEP_DIR`` (``SWEEP_DIR/analysis/`` excepted) that holds ``results.json`` or, before
its run has written one, Hydra's ``.hydra/overrides.yaml``. ``SWEEP_DIR/multirun.yaml`` (written by Hydra when
the sweep starts) gives the plan: the jobs that have no folder yet are pending too.

A row's ``state`` is what the summary counts: ``done`` (finished with a validation error), ``untrained``
(finished, but within ``CHANCE_MARGIN`` points of chance or worse: it failed to train, shown apart from
diverged), ``diverged``, ``failed`` (failed, finished with no validation error, or an unreadable
``results.json``: named in the row's message) or ``pending`` (no ``results.json`` yet: still running or not
started; or ``interrupted``: running the sweep command again resumes it). Its ``error`` is the metric chosen by
``metric`` (``--metric``): ``auto`` (Xiao et al. 2021's: the best EMA top-1 error when the run had an EMA,
``best_val_ema_err1`` not null, else the best top-1 error ``best_val_err1``), ``raw`` (the raw weights' best
top-1 error, as DeiT and Wang et al. report) or ``ema`` (the EMA's; None for a run without one), in percent;
100 for a diverged run; None otherwise. Chance is ``100 * (1 - 1 / data.num_classes)`` from ``multirun.yaml``.
"""
from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path

from omegaconf import OmegaConf

from vitstem.runs.results import ResultsError, read_results

ANALYSIS = "analysis"
# Keys a random sweep sets per job besides the sampled values; never grouping keys.
SWEEP_KEYS = ("study.sample", "study.sampled")
METRICS = ("auto", "raw", "ema")
CHANCE_MARGIN = 5.0   # points of top-1 error: a finished job this close to chance (or worse) failed to train


class AnalysisError(Exception):
    """A sweep folder that cannot be analysed; the message is one line for the user."""


def parse_overrides(lines: list[str]) -> dict[str, str]:
    """``["+model.x=1", "optimizer=sgd"]`` -> ``{"model.x": "1", "optimizer": "sgd"}`` (``+``/``++``/``~`` dropped)."""
    pairs = (str(line).partition("=") for line in lines)
    return {key.lstrip("+~"): value for key, _, value in pairs}


def error_of(results: dict, metric: str = "auto") -> float | None:
    """The job's top-1 error in percent (module docstring)."""
    if results.get("status") == "diverged":
        return 100.0
    if results.get("status") != "finished":
        return None
    ema = results.get("best_val_ema_err1")
    if metric == "ema":
        return ema
    if metric == "raw":
        return results.get("best_val_err1")
    return ema if ema is not None else results.get("best_val_err1")


def state_of(status: str, error: float | None) -> str:
    if status in ("pending", "interrupted"):
        return "pending"
    if status == "diverged":
        return "diverged"
    return "done" if status == "finished" and error is not None else "failed"


def _job_key(name: str) -> tuple:
    """Natural order: ``2`` before ``10``; ``0-retrain1`` after ``0``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[/\-]", name))


def find_jobs(sweep_dir: Path) -> list[Path]:
    """The job folders below ``sweep_dir`` in natural order (module docstring)."""
    skip = sweep_dir / ANALYSIS
    marked = [p.parent for p in sweep_dir.rglob("results.json")]
    marked += [p.parent.parent for p in sweep_dir.rglob("overrides.yaml") if p.parent.name == ".hydra"]
    jobs = {p for p in marked if p != sweep_dir and skip not in p.parents and p != skip}
    return sorted(jobs, key=lambda p: _job_key(p.relative_to(sweep_dir).as_posix()))


def _read_yaml_list(path: Path) -> list[str]:
    return [str(x) for x in OmegaConf.to_container(OmegaConf.load(path), resolve=False) or []]


# Settings of a job that has no results.json yet, read off its overrides: hparams name -> override key.
FROM_OVERRIDES = {"model": "model", "stem": "model/stem", "optimizer": "optimizer", "lr": "optimizer.lr",
                  "weight_decay": "optimizer.weight_decay", "sample": "study.sample"}


def _value(text: str | None):
    """An override's value as a number where it is one (``0.001`` -> 0.001, ``3`` -> 3)."""
    for kind in (int, float):
        try:
            return kind(text)
        except (TypeError, ValueError):
            pass
    return text


def row(job: str, results: dict | None, overrides: list[str], sampled: list[str], message: str | None = None,
        job_dir: Path | None = None, metric: str = "auto") -> dict:
    """One job's row: the ``runs.csv`` columns plus ``overrides`` (dict), ``hparams``, ``sampled`` and ``dir``."""
    r = results or {}
    ov = parse_overrides(overrides)
    hp = r.get("hparams") or {}
    settings = {name: hp.get(name, _value(ov.get(key))) for name, key in FROM_OVERRIDES.items()}
    settings["model"] = settings["model"] or r.get("model")
    status = r.get("status") or ("failed" if message else "pending")
    error = error_of(r, metric)
    state = state_of(status, error)
    if state == "failed" and status == "finished" and not message:
        message = f"finished without a validation error{' (no EMA)' if metric == 'ema' else ''}"
    attention = hp.get("attention") or {}
    return {"job": job, "status": status, "state": state, "group": "", "error": error, **settings,
            "lr_scaled": hp.get("lr_scaled"), "attention": attention.get("activation"), "alpha": attention.get("alpha"),
            "epochs": r.get("epochs"), "best_acc1": r.get("best_val_acc1"), "final_acc1": r.get("final_val_acc1"),
            "best_ema_acc1": r.get("best_val_ema_acc1"), "wall_time_s": r.get("wall_time_s"),
            "message": message or r.get("error"), "overrides": ov, "hparams": hp, "dir": job_dir,
            "sampled": list(hp.get("sampled") or sampled or _listed(ov.get("study.sampled"))),
            "diversity": r.get("diversity") or {}}


def _listed(text: str | None) -> list[str]:
    """``[a,b]`` -> ``["a", "b"]``."""
    return [k.strip() for k in (text or "").strip("[]").split(",") if k.strip()]


def read_job(sweep_dir: Path, job_dir: Path, metric: str = "auto") -> dict:
    """The row of one job folder: from ``results.json`` if there is one, else from ``.hydra/overrides.yaml``."""
    name = job_dir.relative_to(sweep_dir).as_posix()
    results, message, overrides = None, None, []
    try:
        results = read_results(job_dir)  # None: no results.json yet
        overrides = (results or {}).get("overrides") or []
    except ResultsError as e:
        results, message = None, f"unreadable results.json: {e}"
    hydra_overrides = job_dir / ".hydra" / "overrides.yaml"
    if not overrides and hydra_overrides.is_file():
        try:
            overrides = _read_yaml_list(hydra_overrides)
        except Exception:  # half-written by a job starting now: its settings are unknown for the moment
            overrides = []
    return row(name, results, overrides, [], message, job_dir, metric)


def plan_jobs(lines: list[str], samples: int | None) -> tuple[list[list[str]], list[str]] | None:
    """Every planned job's overrides, in Hydra's job order, and the sampled keys; None if unknown.

    The grid is the product of the sweep overrides (``a,b``, ``range``, ``choice``) in their order, a key given
    twice keeping its first place and last value (Hydra's basic sweeper); ``interval(...)`` keys are sampled
    ``hydra.sweeper.samples`` times, samples outermost (``hydra/sweeper=random``), their values left out here.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    grid: dict[str, list[str]] = {}
    sampled: list[str] = []
    for o in OverridesParser.create().parse_overrides(lines):
        key = o.key_or_group
        if o.is_interval_sweep():
            sampled.append(key)
        elif o.is_sweep_override():
            grid[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            grid[key] = [f"{key}={o.get_value_element_as_str()}"]
    if sampled and not samples:
        return None
    cells = [list(cell) for cell in itertools.product(*grid.values())]
    jobs = [cell + ([f"study.sample={i}"] if sampled else []) for i in range(samples or 1) for cell in cells]
    return jobs, sampled


def load_plan(sweep_dir: Path) -> tuple[list[list[str]], list[str]] | None:
    """:func:`plan_jobs` of ``SWEEP_DIR/multirun.yaml``; None without one, or when it cannot be read."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        hydra = OmegaConf.to_container(OmegaConf.load(path).hydra, resolve=False)
        sweeper = hydra.get("sweeper") or {}
        params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
        return plan_jobs(params + list((hydra.get("overrides") or {}).get("task") or []), sweeper.get("samples"))
    except Exception:  # a plan we cannot read: the number of jobs planned is unknown
        return None


def load_config(sweep_dir: Path):
    """``SWEEP_DIR/multirun.yaml`` (the sweep's composed config, unresolved), or None."""
    try:
        return OmegaConf.load(sweep_dir / "multirun.yaml")
    except Exception:  # missing or unreadable: the plan, the chance level and the claims are unknown
        return None


def chance_error(cfg) -> float | None:
    """Chance top-1 error in percent, ``100 * (1 - 1 / data.num_classes)``; None when unknown."""
    try:
        n = int(OmegaConf.select(cfg, "data.num_classes"))
        return 100.0 * (1 - 1 / n) if n > 1 else None
    except Exception:
        return None


def collect(sweep_dir: Path, metric: str = "auto", chance_margin: float = CHANCE_MARGIN) -> dict:
    """The sweep: ``name`` (``hparams.study`` or the folder's name), ``rows`` (one per job folder, and one per
    planned job of ``multirun.yaml`` that has none yet), ``found`` (job folders), ``planned`` (the number of
    jobs ``multirun.yaml`` plans, or None when unknown), ``chance`` (chance error, or None), ``unreadable``
    (the jobs whose results.json could not be read) and ``config`` (``multirun.yaml``, or None)."""
    if not sweep_dir.is_dir():
        raise AnalysisError(f"{sweep_dir}: no such folder")
    if metric not in METRICS:
        raise AnalysisError(f"--metric {metric}: choose one of {', '.join(METRICS)}")
    job_dirs = find_jobs(sweep_dir)
    if not job_dirs:
        raise AnalysisError(f"{sweep_dir}: no jobs (no folder below it holds results.json or .hydra/overrides.yaml)")
    rows = [read_job(sweep_dir, d, metric) for d in job_dirs]
    cfg = load_config(sweep_dir)
    chance = chance_error(cfg)
    for r in rows:
        if chance is not None and r["state"] == "done" and r["error"] >= chance - chance_margin:
            r["state"] = "untrained"
    plan = load_plan(sweep_dir)
    started = {r["job"] for r in rows if r["job"].isdigit()}
    if plan is not None and started:  # job folders are Hydra's job numbers: those not there yet are pending
        jobs, sampled = plan
        rows += [row(str(k), None, overrides, sampled) for k, overrides in enumerate(jobs) if str(k) not in started]
        rows.sort(key=lambda r: _job_key(r["job"]))
    name = next((r["hparams"]["study"] for r in rows if r["hparams"].get("study")), None)
    unreadable = [r["job"] for r in rows if (r["message"] or "").startswith("unreadable results.json")]
    return {"name": name or sweep_dir.resolve().name, "rows": rows, "found": len(job_dirs),
            "planned": None if plan is None else len(plan[0]), "chance": chance, "unreadable": unreadable,
            "config": cfg}


def read_curve(job_dir: Path | None) -> list[tuple[int, float]]:
    """``(epoch, validation top-1 error)`` from the job's ``metrics.csv``, one point per epoch (the last
    validation row of the epoch; the EMA's accuracy when the file has one); epochs counted from 1."""
    path = job_dir / "metrics.csv" if job_dir is not None else None
    if path is None or not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    column = "val_ema/acc1" if any(r.get("val_ema/acc1") for r in rows) else "val/acc1"
    points = {}
    for r in rows:  # training rows have no accuracy; a job still running may have half-written its last row
        try:
            points[int(float(r["epoch"])) + 1] = 100.0 - float(r[column])
        except (KeyError, TypeError, ValueError):
            continue
    return sorted(points.items())


def read_blocks(job_dir: Path | None, prefix: str, by: str = "step") -> dict[str, list[tuple[float, float]]]:
    """The per-block series of ``metrics.csv`` whose columns start with ``prefix`` (``norms/grad/``,
    ``diversity/``, ``attention/entropy/``: :mod:`vitstem.instrument`), keyed by block in network order (``stem``,
    ``block_00``, ..., ``head``, then ``total``), each a list of ``(x, value)`` with ``x`` the ``step`` or
    the ``epoch`` (counted from 1); rows without a value are skipped."""
    path = job_dir / "metrics.csv" if job_dir is not None else None
    if path is None or not path.is_file():
        return {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = [c for c in reader.fieldnames or [] if c.startswith(prefix)]
        series: dict[str, dict[float, float]] = {c[len(prefix):]: {} for c in columns}
        for r in reader:
            for c in columns:
                try:
                    x = float(r[by]) + (1 if by == "epoch" else 0)
                    series[c[len(prefix):]][x] = float(r[c])
                except (KeyError, TypeError, ValueError):
                    continue
    return {name: sorted(series[name].items()) for name in sorted(series, key=_block_order) if series[name]}


def _block_order(name: str) -> tuple:
    if name.startswith("block_") and name[6:].isdigit():
        return (1, int(name[6:]))
    return {"stem": (0, 0), "head": (2, 0), "total": (4, 0)}.get(name, (3, 0))

