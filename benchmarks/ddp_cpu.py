"""Wall time of a training epoch on CPU: one process against DDP on ``--ranks`` processes (gloo), same global batch.

Each setting is one ``vitstem-train`` command (``trainer.accelerator=cpu``, no validation; DDP adds
``trainer.devices=<ranks> trainer.strategy=ddp`` and divides ``data.loader.batch_size`` by the ranks), run
``--repeats`` times. Reported per run: ``epoch_s``, the fit loop's time per epoch (Lightning's ``Timer`` callback,
saved in last.ckpt: data loading and every step included); ``steps_images_per_s``, results.json's
``train_images_per_s`` (the training steps alone, first batch left out); ``fit_s``, results.json's ``wall_time_s``
(building, DDP start-up, all epochs); ``command_s``, the whole command (imports and process start-up included).
Lightning gives each DDP process ``cores / ranks`` threads; one process runs with torch's default threads and again
with that share (``OMP_NUM_THREADS``), which tells the gain of more processes from that of fewer threads. Writes JSON.

    python benchmarks/ddp_cpu.py                                  # vit_p_32 at 32 px, 2048 images, global batch 128
    python benchmarks/ddp_cpu.py --ranks 4 --batch 256 -- model=vit_c_32 data.train_size=8192
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_throughput import machine  # noqa: E402  (the sibling benchmark's machine record)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "ddp_cpu.json"
BASE = ["trainer.accelerator=cpu", "trainer.max_epochs=2", "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false", "data.train_size=2048",
        "+callbacks.timer._target_=lightning.pytorch.callbacks.Timer"]


def run(overrides: list[str], run_dir: Path, threads: int | None) -> dict:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vitstem.train", *overrides, f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, env=env)
    command_s = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"vitstem-train {' '.join(overrides)} failed:\n{proc.stderr[-3000:]}")
    r = json.loads((run_dir / "results.json").read_text())
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    timer = ckpt["callbacks"]["Timer"]
    return dict(epoch_s=round(timer["time_elapsed"]["train"] / r["epochs"], 2), fit_s=r["wall_time_s"],
                command_s=round(command_s, 1), steps_images_per_s=round(r["train_images_per_s"], 1), epochs=r["epochs"],
                steps=r["steps"], global_batch_size=r["global_batch_size"], final_train_loss=r["final_train_loss"])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="vitstem-train overrides go after the options, e.g. -- model=vit_c_32")
    p.add_argument("overrides", nargs="*", help="vitstem-train overrides for every run")
    p.add_argument("--ranks", type=int, default=2, help="DDP processes")
    p.add_argument("--batch", type=int, default=128, help="global batch (per process: batch / ranks)")
    p.add_argument("--repeats", type=int, default=2, help="runs per setting")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    a = p.parse_args(argv)
    if a.batch % a.ranks:
        raise SystemExit(f"--batch {a.batch} does not divide into {a.ranks} ranks")
    share = max(1, (os.cpu_count() or 1) // a.ranks)  # the threads Lightning gives each DDP process
    one, ddp = [f"data.loader.batch_size={a.batch}"], [f"data.loader.batch_size={a.batch // a.ranks}",
                                                          f"trainer.devices={a.ranks}", "trainer.strategy=ddp"]
    settings = {"1 process": (one, None), f"1 process, OMP_NUM_THREADS={share}": (one, share),
                f"ddp {a.ranks} ranks": (ddp, None)}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (extra, threads) in settings.items():
            results[name] = [run(BASE + list(a.overrides) + extra, Path(tmp) / f"run{len(results)}_{i}", threads)
                             for i in range(a.repeats)]
            print(f"{name}: epoch {min(r['epoch_s'] for r in results[name]):.2f} s (best of {a.repeats})", flush=True)
    best = {name: min(r["epoch_s"] for r in runs) for name, runs in results.items()}
    ddp_s = best.pop(f"ddp {a.ranks} ranks")
    speedup = {f"ddp vs {name}": round(s / ddp_s, 2) for name, s in best.items()}  # > 1: DDP's epoch is shorter
    out = dict(overrides=BASE + list(a.overrides), global_batch_size=a.batch, ranks=a.ranks, results=results,
               best_epoch_s={**best, f"ddp {a.ranks} ranks": ddp_s}, speedup=speedup,
               machine={**machine(), "load_average": os.getloadavg()}, time=time.strftime("%Y-%m-%d %H:%M:%S"))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"speed-up {speedup}; wrote {a.out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
