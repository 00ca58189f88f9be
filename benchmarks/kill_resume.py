"""Kill and resume: SIGKILL a deterministic CPU run at chosen boundaries and at random moments, run the same
command again, compare.

One uninterrupted run is the reference. Each trial starts the same command in its own folder and kills it
with SIGKILL, either at a chosen point (``step:<s>``: during training step s + 1; ``val:<e>``: in epoch e's
validation; ``end``: after training, before ``results.json``; sent by the test callback
``tests.runs.stops.StopAt`` from inside the run, so the point is exact) or after a random share of the
reference's wall time. It then runs the command again (which resumes from ``checkpoints/last.ckpt``) and
compares ``final_val_acc1``, ``best_val_acc1``, ``final_train_loss``, ``steps`` and every row of
``metrics.csv`` (timing columns left out) with the reference. Writes JSON
(``benchmarks/results/kill_resume.json`` by default) with each trial's kill point, the step the checkpoint
held, and whether everything matched.

    python benchmarks/kill_resume.py                       # the default kill points (10)
    python benchmarks/kill_resume.py --at step:7 end --random 0
    python benchmarks/kill_resume.py --random 3 -- model=vit_c_32 mixup=xiao
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = ["trainer.max_epochs=2", "data.train_size=1024", "data.val_size=256", "data.loader.batch_size=64",
       "trainer.deterministic=true", "mixup=xiao", "callbacks.checkpoint.every_n_steps=5",
       "trainer.enable_progress_bar=false"]
KEYS = ("final_val_acc1", "best_val_acc1", "final_train_loss", "steps")


def command(run_dir: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "vitstem.train", *RUN, *extra, f"hydra.run.dir={run_dir}"]


TIMING = ("images_per_s", "mfu")
# 2 epochs of 16 steps: the first step, mid-epoch, each side of the epoch boundary (16), validation, the last step
# of training, the final validation, after training
POINTS = ["step:1", "step:5", "step:15", "step:16", "val:0", "step:17", "step:30", "step:31", "val:1", "end"]


def rows(run_dir: Path) -> list:
    """metrics.csv without its timing columns (rows left empty dropped)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        out = [{k: v for k, v in r.items() if v != "" and not any(t in k for t in TIMING)} for r in csv.DictReader(f)]
    return [r for r in out if set(r) - {"step", "epoch"}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--at", nargs="*", default=POINTS, help="kill points (step:<s>, val:<epoch>, end)")
    parser.add_argument("--random", type=int, default=0, help="kills at random moments besides")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kill times")
    parser.add_argument("--out", default="benchmarks/results/kill_resume.json")
    parser.add_argument("overrides", nargs="*", help="more vitstem-train overrides (after --)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="vitstem-kill-"))
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}  # tests.runs.stops

    start = time.perf_counter()
    subprocess.run(command(work / "reference", args.overrides), check=True, env=env, **quiet)
    wall = time.perf_counter() - start
    reference = json.loads((work / "reference" / "results.json").read_text())
    import torch

    trials = []
    for i, at in enumerate([*args.at, *[None] * args.random]):
        run_dir = work / f"trial{i}"
        extra = [f"+callbacks.kill={{_target_: tests.runs.stops.StopAt, at: '{at}', how: SIGKILL}}"] if at else []
        proc = subprocess.Popen(command(run_dir, args.overrides) + extra, env=env, **quiet)
        kill_after = None
        if at is None:
            kill_after = rng.uniform(0.3, 0.95) * wall  # import and set-up take the first ~quarter
            try:
                proc.wait(kill_after)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] if ckpt.is_file() else None
        killed_finished = (run_dir / "results.json").is_file()
        subprocess.run(command(run_dir, args.overrides), check=True, env=env, **quiet)
        results = json.loads((run_dir / "results.json").read_text())
        same = {k: results[k] == reference[k] for k in KEYS} | {"metrics.csv": rows(run_dir) == rows(work / "reference")}
        trials.append({"kill_at": at or f"{kill_after:.1f} s", "exit_code": proc.returncode, "checkpoint_step": step,
                       "finished_before_kill": killed_finished, "resumed_from": results.get("resumed_from"),
                       "identical": all(same.values()), "compared": same})
        print(f"trial {i}: killed at {trials[-1]['kill_at']} (checkpoint step {step}): "
              f"{'identical' if all(same.values()) else 'DIFFERENT ' + str(same)}", flush=True)
        write(args, reference, wall, trials)
    shutil.rmtree(work, ignore_errors=True)


def write(args, reference: dict, wall: float, trials: list) -> None:
    """The figures so far (after every trial: a long benchmark stopped early keeps what it measured)."""
    import torch

    out = {"reference": {k: reference[k] for k in KEYS}, "reference_wall_s": round(wall, 1), "trials": trials,
           "identical": f"{sum(t['identical'] for t in trials)} of {len(trials)}",
           "all_identical": all(t["identical"] for t in trials), "overrides": RUN + args.overrides,
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{out['identical']} resumed runs identical to the reference; {args.out}")


if __name__ == "__main__":
    main()
