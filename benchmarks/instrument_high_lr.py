"""Patchify against conv stem at a high lr, through the instrumentation: which block spikes first, which diverges,
and the patch-token diversity per block at the end.

Runs one sweep, ``vitstem-train -m model=vit_p_32,vit_c_32 optimizer.lr=<lr>`` (the default run otherwise: 32 px
synthetic data, CPU, ``--epochs`` epochs) into ``--sweep-dir``, then ``vitstem-analyze <sweep> --job 0 --job 1``
(per-block curves in ``<sweep>/analysis/``), and writes a summary per model (JSON, ``--out``): status, divergence
(step, block, phase), gradient spikes (count, the first ones, how often each block is the first above threshold
and how often above threshold at all),
best top-1, and the diversity per block (raw weights) after the last epoch. A finished job is not rerun.

    python benchmarks/instrument_high_lr.py                     # lr 2e-2, 5 epochs: two default-size runs
    python benchmarks/instrument_high_lr.py --lr 5e-2 --epochs 2
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = ("vit_p_32", "vit_c_32")


def summary(job_dir: Path) -> dict:
    r = json.loads((job_dir / "results.json").read_text())
    grad = [e for e in r.get("spikes") or [] if e["kind"] == "grad"]
    return {"model": r["model"], "status": r["status"], "best_val_acc1": r["best_val_acc1"], "steps": r["steps"],
            "diverged_at_step": r.get("diverged_at_step"), "diverged_block": r.get("diverged_block"),
            "diverged_phase": r.get("diverged_phase"), "spikes_total": r.get("spikes_total"),
            "first_spikes": (r.get("spikes") or [])[:5],
            "grad_spikes_first_block": dict(collections.Counter(str(e["block"]) for e in grad)),
            "grad_spikes_per_block": dict(collections.Counter(b for e in grad for b in e["blocks"])),
            "diversity": r.get("diversity"), "train_images_per_s": r.get("train_images_per_s"),
            "wall_time_s": r.get("wall_time_s")}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="more vitstem-train overrides for both runs")
    p.add_argument("--lr", type=float, default=2e-2, help="optimizer.lr (the default run's is 2e-3)")
    p.add_argument("--epochs", type=int, default=5, help="trainer.max_epochs")
    p.add_argument("--sweep-dir", type=Path, default=Path("multirun/instrument_high_lr"), help="the sweep's folder")
    p.add_argument("--out", type=Path, default=HERE / "results" / "instrument_high_lr.json", help="JSON file to write")
    a = p.parse_args(argv)
    command = [sys.executable, "-m", "vitstem.train", "-m", f"model={','.join(MODELS)}", f"optimizer.lr={a.lr}",
               f"trainer.max_epochs={a.epochs}", "trainer.enable_progress_bar=false", f"hydra.sweep.dir={a.sweep_dir}",
               *a.overrides]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    subprocess.run([sys.executable, "-m", "vitstem.analysis.cli", str(a.sweep_dir), "--job", "0", "--job", "1"],
                   check=True)
    out = {"command": " ".join(command[2:]), "runs": [summary(a.sweep_dir / str(k)) for k in range(len(MODELS))],
           "figures": str(a.sweep_dir / "analysis"), "seconds": round(time.perf_counter() - start),
           "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    for run in out["runs"]:
        print(f"{run['model']}: {run['status']} (best top-1 {run['best_val_acc1']}), {run['spikes_total']} spikes, "
              f"first blocks {run['grad_spikes_first_block']}, diverged at {run['diverged_at_step']} in "
              f"{run['diverged_block']}; diversity {run['diversity']}")
    print(f"wrote {a.out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
