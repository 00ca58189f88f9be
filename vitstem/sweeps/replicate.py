"""``vitstem-replicate``: run every study's tiny form in turn, check its claims, write the replication table.

    vitstem-replicate                           # all seven tiny forms, then sweeps/results/REPLICATION.md
    vitstem-replicate xiao_lr_wd wang_stems     # only these (in this order)
    vitstem-replicate --analyze-only            # no training: analyse what multirun/ holds, write the table
    vitstem-replicate --seed 1                  # another hydra.sweeper.seed, into multirun/<study>_tiny_seed1/

Each study runs as ``vitstem-train -m sweep=<study>/tiny`` (a child process), which skips finished and
diverged jobs and resumes interrupted ones from their checkpoint: stop with Ctrl-C (the running job saves a
checkpoint and stops), run the same command again, and it continues where it stopped. A study whose sweep
ends with failed jobs is reported, and the next study runs. After each study, ``vitstem-analyze`` writes
``multirun/<name>/analysis/`` and a copy of it (figures, tables, report; no checkpoints) goes to
``sweeps/results/<name>/``; at the end ``sweeps/results/REPLICATION.md`` lists every claim of every study
analysed: the paper's number, ours, the verdict and the plot.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

STUDIES = ("wortsman_alpha", "xiao_lr_wd", "wang_stems", "xiao_stems", "wang_warmup", "xiao_optimizer",
           "wortsman_qkln_gate")   # the order they run in: the cheapest first, then the flagship, then by cost
# analysis outputs copied to sweeps/results/<name>/ (never checkpoints or job folders)
COPIED = (".csv", ".png", ".html")


def sweep_name(study: str, seed: int) -> str:
    return f"{study}_tiny" if seed == 0 else f"{study}_tiny_seed{seed}"


def train_command(study: str, seed: int) -> list[str]:
    """The tiny form's sweep, as a user would type it (``vitstem-train`` next to this Python)."""
    exe = Path(sys.executable).with_name("vitstem-train")
    head = [str(exe)] if exe.is_file() else [sys.executable, "-c", "from vitstem.train import main; main()"]
    extra = [] if seed == 0 else [f"hydra.sweeper.seed={seed}", f"name={sweep_name(study, seed)}",
                                  f"study.name={sweep_name(study, seed)}"]
    return [*head, "-m", f"sweep={study}/tiny", *extra]


class Stop:
    """SIGINT / SIGTERM seen: the running study (which got the signal too, as the terminal's process group does)
    saves its checkpoint and stops; then the replication stops instead of starting the next study. Installed
    explicitly, so that it also holds where the shell started us with SIGINT ignored (``nohup ... &``)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self)

    def __call__(self, signum, frame) -> None:
        self.signal = signum


def child_env(log) -> dict:
    """The study's environment: on a CPU shared with other work (1-minute load above the core count) torch gets
    one thread (OpenMP threads that outnumber the free cores spin and stall each other: 3x slower measured on a
    loaded 2-core machine), else all cores; an OMP_NUM_THREADS the user set is kept."""
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        cores, load = os.cpu_count() or 1, os.getloadavg()[0]
        if load > cores:
            env["OMP_NUM_THREADS"] = "1"
            log(f"load {load:.1f} on {cores} cores: one torch thread for this study")
    return env


def run_study(study: str, seed: int, log, stop: Stop) -> int:
    """Run (or resume) one tiny form; its exit code."""
    command = train_command(study, seed)
    log(f"$ {' '.join(command[-4 if seed else -2:])}")
    start = time.time()
    child = subprocess.Popen(command, env=child_env(log))
    while True:
        try:
            code = child.wait()
            break
        except KeyboardInterrupt:  # only where a caller restored Python's own SIGINT handler
            stop.signal = signal.SIGINT
    log(f"{study}: exit {code} after {time.time() - start:.0f} s in this call")
    return code


def analyse(sweep_dir: Path, study: str, results_dir: Path, log) -> dict | None:
    """``vitstem-analyze SWEEP_DIR --study <study>/tiny`` (the claims and plots as conf/sweep/ states them now)
    and copy its outputs to ``results_dir/<name>/``; the analysis, or None."""
    from vitstem.analysis.cli import analyze
    from vitstem.analysis.collect import AnalysisError

    try:
        result = analyze(sweep_dir, study=f"{study}/tiny")
    except AnalysisError as e:
        log(f"{sweep_dir}: not analysed: {e}")
        return None
    except Exception as e:  # an analysis bug must not stop the next study from running
        log(f"{sweep_dir}: analysis failed: {type(e).__name__}: {e}")
        return None
    target = results_dir / sweep_dir.name
    target.mkdir(parents=True, exist_ok=True)
    for path in result["out"].iterdir():
        if path.suffix in COPIED and path.is_file():
            shutil.copy2(path, target / path.name)
    log(f"{sweep_dir.name}: analysis copied to {target}/")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vitstem-replicate", description=__doc__.replace("``", ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="*", metavar="STUDY", help=f"default: all, in order: {' '.join(STUDIES)}")
    parser.add_argument("--analyze-only", action="store_true", help="train nothing; analyse what multirun/ holds")
    parser.add_argument("--train-only", action="store_true", help="run the studies; analyse nothing")
    parser.add_argument("--seed", type=int, default=0, help="hydra.sweeper.seed (another seed writes other folders)")
    parser.add_argument("--multirun", type=Path, default=Path("multirun"), help="where the sweeps are (multirun/)")
    parser.add_argument("--results", type=Path, default=Path("sweeps/results"),
                        help="where the analyses are copied and REPLICATION.md is written (sweeps/results/)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.studies if s not in STUDIES]
    if unknown:
        sys.exit(f"vitstem-replicate: error: unknown study {', '.join(unknown)}; the studies: {' '.join(STUDIES)}")
    studies = args.studies or list(STUDIES)

    def log(line: str) -> None:
        print(f"[vitstem-replicate {time.strftime('%H:%M:%S')}] {line}", flush=True)

    analyses = {}
    stop = Stop()
    for study in studies:
        if not args.analyze_only:
            run_study(study, args.seed, log, stop)
            if stop.signal is not None:
                log("interrupted: run the same command again to continue")
                sys.exit(130)
        sweep_dir = args.multirun / sweep_name(study, args.seed)
        if sweep_dir.is_dir() and not args.train_only:
            analyses[study] = analyse(sweep_dir, study, args.results, log)
    if args.train_only:
        return
    from vitstem.analysis.replication import write_replication

    # the main table lists all seven studies; another seed's table the studies that ran at it
    listed = STUDIES if args.seed == 0 else [s for s in STUDIES if s in studies]
    path = write_replication(args.results, [sweep_name(s, args.seed) for s in listed],
                             suffix="" if args.seed == 0 else f"_seed{args.seed}")
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
