"""Kill and resume: SIGKILL a deterministic CPU run at random moments, run the same command again, compare.

One uninterrupted run is the reference. Each trial starts the same command in its own folder, kills it
with SIGKILL after a random share of the reference's wall time, then runs the command again (which
resumes from ``checkpoints/last.ckpt``) and compares ``final_val_acc1``, ``best_val_acc1``,
``final_train_loss`` and the validation rows of ``metrics.csv`` with the reference. Writes JSON
(``benchmarks/results/kill_resume.json`` by default) with each trial's kill time, the step the
checkpoint held, and whether everything matched.

    python benchmarks/kill_resume.py --trials 5
    python benchmarks/kill_resume.py --trials 3 -- model=vit_c_32 mixup=xiao
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

RUN = ["trainer.max_epochs=3", "data.train_size=1024", "data.val_size=256", "data.loader.batch_size=64",
       "trainer.deterministic=true", "mixup=xiao", "callbacks.checkpoint.every_n_steps=5",
       "trainer.enable_progress_bar=false"]
KEYS = ("final_val_acc1", "best_val_acc1", "final_train_loss", "steps")


def command(run_dir: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "vitstem.train", *RUN, *extra, f"hydra.run.dir={run_dir}"]


def val_rows(run_dir: Path) -> list:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(r["step"], r["val/acc1"], r["val/loss"]) for r in csv.DictReader(f) if r.get("val/acc1")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--out", default="benchmarks/results/kill_resume.json")
    parser.add_argument("overrides", nargs="*", help="more vitstem-train overrides (after --)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="vitstem-kill-"))
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    start = time.perf_counter()
    subprocess.run(command(work / "reference", args.overrides), check=True, **quiet)
    wall = time.perf_counter() - start
    reference = json.loads((work / "reference" / "results.json").read_text())
    trials = []
    for i in range(args.trials):
        run_dir = work / f"trial{i}"
        kill_after = rng.uniform(0.3, 0.95) * wall  # import and set-up take the first ~quarter
        proc = subprocess.Popen(command(run_dir, args.overrides), **quiet)
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        import torch

        step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] if ckpt.is_file() else None
        killed_finished = (run_dir / "results.json").is_file()
        subprocess.run(command(run_dir, args.overrides), check=True, **quiet)
        results = json.loads((run_dir / "results.json").read_text())
        same = {k: results[k] == reference[k] for k in KEYS} | {"metrics.csv": val_rows(run_dir) == val_rows(work / "reference")}
        trials.append({"kill_after_s": round(kill_after, 2), "checkpoint_step": step, "finished_before_kill": killed_finished,
                       "resumed_from": results.get("resumed_from"), "identical": all(same.values()), "compared": same})
        print(f"trial {i}: killed after {kill_after:.1f} s at checkpoint step {step}: "
              f"{'identical' if all(same.values()) else 'DIFFERENT ' + str(same)}")
    import torch

    out = {"reference": {k: reference[k] for k in KEYS}, "reference_wall_s": round(wall, 1), "trials": trials,
           "all_identical": all(t["identical"] for t in trials), "overrides": RUN + args.overrides,
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{sum(t['identical'] for t in trials)} of {len(trials)} resumed runs identical to the reference; {args.out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
