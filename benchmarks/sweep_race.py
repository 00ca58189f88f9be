"""Two identical sweeps over one folder, started a few seconds apart: do they share the jobs safely?

Each trial starts ``vitstem-train -m ... seed=0,...,N-1`` twice into the same sweep folder, ``--delay`` seconds
apart, and records both exit codes, which sweep trained each job (its ``run dir <job> |`` log line), whether
every job ended ``finished`` with one ``metrics.csv`` row per step, and the wall times (against one sweep
alone, the first trial's reference). Writes ``benchmarks/results/sweep_race.json`` by default.

    python benchmarks/sweep_race.py --trials 2 --jobs 4 --delay 2
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = ["model=vit_p_32", "model.depth=1", "model.embed_dim=32", "model.num_heads=2", "data.img_size=16",
        "model.img_size=16", "trainer.max_epochs=1", "trainer.limit_train_batches=12", "trainer.limit_val_batches=1",
        "data.loader.batch_size=8", "scheduler.warmup=0", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1"]


def sweep(folder: Path, jobs: int) -> list[str]:
    return [sys.executable, "-m", "vitstem.train", "-m", *TINY, "seed=" + ",".join(map(str, range(jobs))),
            f"hydra.sweep.dir={folder}"]


def start(folder: Path, jobs: int) -> subprocess.Popen:
    return subprocess.Popen(sweep(folder, jobs), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def check(folder: Path, jobs: int, outputs: list[str]) -> dict:
    trained_by, intact = [], []
    for job in range(jobs):
        job_dir = folder / str(job)
        trained_by.append([o.count(f"run dir {job_dir} |") for o in outputs])
        with open(job_dir / "metrics.csv", newline="") as f:
            steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
        status = json.loads((job_dir / "results.json").read_text())["status"]
        intact.append(status == "finished" and steps == sorted(set(steps)) and len(steps) == 12)
    return {"trained_by": trained_by, "trained_once": all(sum(t) == 1 for t in trained_by), "all_intact": all(intact)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--delay", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sweep_race.json")
    a = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sweep_race_"))
    t0 = time.perf_counter()
    alone = start(root / "alone", a.jobs)
    alone.communicate()
    reference = {"wall_s": round(time.perf_counter() - t0, 1), "returncode": alone.returncode}
    trials = []
    for trial in range(a.trials):
        folder = root / f"race{trial}"
        t0 = time.perf_counter()
        first = start(folder, a.jobs)
        time.sleep(a.delay)
        second = start(folder, a.jobs)
        outputs = [p.communicate()[0] for p in (first, second)]
        wall = round(time.perf_counter() - t0, 1)
        trials.append({"returncodes": [first.returncode, second.returncode], "wall_s": wall,
                       "jobs_per_sweep": [sum(o.count(f"run dir {folder}/") for o in [out]) for out in outputs],
                       **check(folder, a.jobs, outputs)})
        print(json.dumps(trials[-1]))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"jobs": a.jobs, "delay_s": a.delay, "one_sweep_alone": reference, "trials": trials,
                                 "cpus": os.cpu_count(), "python": platform.python_version()}, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
