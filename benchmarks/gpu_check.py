"""The steps of ``benchmarks/gpu_check.sh``: one prepared check of vitstem on one GPU (issue 19), in under 8 minutes.

    python benchmarks/gpu_check.py [--out DIR] [--dry]

Every step is a command (``vitstem-bench``, ``vitstem-train``, a few lines of Python) with a time limit; each
writes its JSON under ``--out``, a failed or timed-out step is recorded and the next one runs. At the end a
Markdown table (``summary.md``) and ``gpu_check.json`` (every step: command, seconds, exit code, figures) are written
and the table printed. ``--dry`` runs nothing: it prints every command and composes (and validates) the config of
every ``vitstem-train`` / ``vitstem-bench`` command, so a bad override shows on a CPU.

1. **precision**: the precision default (``trainer.precision``) and ``matmul_precision`` on this machine.
2. **bench**: vitstem against the plain loop (``vitstem-bench``) for ViT-S/16 and ViT_C-4GF, softmax and ReLU
   attention, compile off and on: images/s, MFU, peak memory, and the memory estimate beside it.
3. **data**: ``vitstem-train`` on the synthetic data through the loader, pinned vs unpinned memory, and with
   checkpoints every few steps vs only at the end: ``train_images_per_s_with_data``.
4. **sigterm**: SIGTERM to a run after its first checkpoint, then the same command again: it must stop as
   ``interrupted`` and resume to ``finished`` at the full step count.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
# one-GPU settings shared by the vitstem-train steps (the synthetic data set: no files, no download)
TRAIN = ["trainer=gpu", "data=synthetic", "model=vit_s16", "data.loader.batch_size=256", "trainer.max_epochs=1",
         "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "callbacks.tokens.num_images=1"]
BENCH_MODELS = {"vit_s16": ["model=vit_s16", "data.loader.batch_size=128"],
                "vit_c_4gf": ["model=vit_c_4gf", "data.loader.batch_size=64"]}
# checkpoint cadences compared (conf/callbacks/default.yaml: callbacks.checkpoint)
CADENCES = {"every 10 steps": ["callbacks.checkpoint.every_n_steps=10"],
            "end only": ["callbacks.checkpoint.every_n_steps=null"]}


def steps(out: Path) -> list[dict]:
    """Every command of the check: ``name``, ``argv``, ``timeout`` (s), ``overrides`` to compose in the dry mode."""
    out_s = str(out)
    precision = ("import json, sys, torch; from vitstem.config import compose; cfg = compose([]); "
                 "json.dump(dict(precision=str(cfg.trainer.precision), matmul_precision=cfg.matmul_precision, "
                 "cuda=torch.cuda.is_available(), device=torch.cuda.get_device_name(0) if torch.cuda.is_available() "
                 "else None, torch=torch.__version__), open(sys.argv[1], 'w'), indent=1)")
    todo = [dict(name="precision", argv=[PY, "-c", precision, f"{out_s}/precision.json"], timeout=60, overrides=[])]
    for model, overrides in BENCH_MODELS.items():
        args = [*overrides, "trainer=gpu"]
        todo.append(dict(name=f"bench {model}", timeout=200, overrides=args,
                         argv=[PY, "-m", "vitstem.bench", *args, "--attention", "softmax", "relu", "--compile", "off",
                               "on", "--steps", "15", "--warmup", "3", "--rounds", "1", "--out",
                               f"{out_s}/bench_{model}.json"]))
    for pin in ("true", "false"):
        args = [*TRAIN, "trainer.limit_train_batches=30", f"data.loader.pin_memory={pin}", "name=gpu_check_pin",
                "callbacks.checkpoint.every_n_steps=null"]
        todo.append(dict(name=f"data pin_memory={pin}", timeout=90, overrides=args,
                         argv=[PY, "-m", "vitstem.train", *args, f"hydra.run.dir={out_s}/runs/pin_{pin}"]))
    for label, cadence in CADENCES.items():
        args = [*TRAIN, "trainer.limit_train_batches=30", "name=gpu_check_cadence", *cadence]
        todo.append(dict(name=f"checkpoints {label}", timeout=90, overrides=args,
                         argv=[PY, "-m", "vitstem.train", *args,
                               f"hydra.run.dir={out_s}/runs/cadence_{label.replace(' ', '_')}"]))
    args = [*TRAIN, "data.loader.batch_size=128", "trainer.limit_train_batches=400", "name=gpu_check_sigterm",
            "callbacks.checkpoint.every_n_steps=50"]
    todo.append(dict(name="sigterm then resume", timeout=150, overrides=args, sigterm=True,
                     argv=[PY, "-m", "vitstem.train", *args, f"hydra.run.dir={out_s}/runs/sigterm"]))
    return todo


def compose_check(overrides: list[str]) -> None:
    """The dry mode's check: the config composes and validates (as vitstem-train would check it)."""
    from vitstem.config import compose, validate

    validate(compose(overrides))


def run_step(step: dict, out: Path) -> dict:
    start = time.perf_counter()
    record = dict(name=step["name"], command=shlex.join(step["argv"]))
    try:
        if step.get("sigterm"):
            record.update(sigterm_then_resume(step, out))
        else:
            proc = subprocess.run(step["argv"], timeout=step["timeout"], capture_output=True, text=True)
            record.update(returncode=proc.returncode, tail=proc.stdout[-1500:] + proc.stderr[-1500:])
    except subprocess.TimeoutExpired:
        record.update(returncode="timeout")
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def sigterm_then_resume(step: dict, out: Path) -> dict:
    """SIGTERM once the first checkpoint exists (as scancel sends it), then the same command again."""
    run_dir = Path(step["argv"][-1].split("=", 1)[1])
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(step["argv"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + step["timeout"] / 2
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return dict(returncode="hung after SIGTERM")
    stopped_s = round(time.monotonic() - sent, 1)
    first = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").exists() else {}
    again = subprocess.run(step["argv"], timeout=step["timeout"], capture_output=True, text=True)
    second = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").exists() else {}
    return dict(returncode=again.returncode, stopped_after_sigterm_s=stopped_s, first_status=first.get("status"),
                first_steps=first.get("steps"), resumed_status=second.get("status"), resumed_steps=second.get("steps"),
                resumed_from=second.get("resumed_from"))


def summary(out: Path, records: list[dict]) -> str:
    lines = ["# gpu_check", ""]
    p = out / "precision.json"
    if p.exists():
        pr = json.loads(p.read_text())
        lines += [f"precision default: {pr['precision']} (matmul_precision {pr['matmul_precision']}) on "
                  f"{pr['device']}", ""]
    lines += ["| model | attention | compile | batch | vitstem images/s | plain images/s | MFU | peak GB | estimated GB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for model in BENCH_MODELS:
        f = out / f"bench_{model}.json"
        for r in json.loads(f.read_text())["results"] if f.exists() else []:
            lines.append(f"| {r['model']} | {r['attention']} | {r['compile']} | {r['batch']} | {r['vitstem_images_per_s']} "
                         f"| {r['plain_images_per_s']} | {r['vitstem_mfu']} | {r['vitstem_peak_memory_gb']} | "
                         f"{r.get('estimated_peak_memory_gb')} |")
    lines += ["", "| run | images/s with data | images/s steps only | seconds |", "|---|---|---|---|"]
    for rec in records:
        if rec["name"].startswith(("data", "checkpoints")):
            run_dir = Path(shlex.split(rec["command"])[-1].split("=", 1)[1])
            res = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").exists() else {}
            lines.append(f"| {rec['name']} | {res.get('train_images_per_s_with_data')} | {res.get('train_images_per_s')} "
                         f"| {rec['seconds']} |")
    for rec in records:
        if rec["name"] == "sigterm then resume":
            lines += ["", f"SIGTERM: stopped in {rec.get('stopped_after_sigterm_s')} s as {rec.get('first_status')} at step "
                      f"{rec.get('first_steps')}; same command again: {rec.get('resumed_status')} at step "
                      f"{rec.get('resumed_steps')} (resumed from {rec.get('resumed_from')})"]
    lines += ["", "| step | exit | seconds |", "|---|---|---|"]
    lines += [f"| {r['name']} | {r.get('returncode')} | {r.get('seconds')} |" for r in records]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check"))
    parser.add_argument("--dry", action="store_true", help="print and compose every command; run none")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all steps (uv sync not counted): "
                        "each step's limit is cut to what is left, a step with under 20 s left is skipped")
    args = parser.parse_args(argv)
    todo = steps(args.out)
    if args.dry:
        for step in todo:
            if step["overrides"]:
                compose_check(step["overrides"])
            print(f"[{step['name']}, at most {step['timeout']} s] {shlex.join(step['argv'])}", flush=True)
        print(f"dry run: {len(todo)} steps composed, none run; the JSON would go under {args.out}/")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    env_threads = os.environ.get("OMP_NUM_THREADS")
    records, end = [], time.monotonic() + args.budget
    for step in todo:
        left = end - time.monotonic()
        if left < 20:
            records.append(dict(name=step["name"], command=shlex.join(step["argv"]), returncode="skipped: no time left",
                                seconds=0))
            continue
        step["timeout"] = min(step["timeout"], left)
        print(f"== {step['name']}: {shlex.join(step['argv'])}", flush=True)
        records.append(run_step(step, args.out))
        print(f"   exit {records[-1].get('returncode')} in {records[-1]['seconds']} s", flush=True)
    text = summary(args.out, records)
    (args.out / "summary.md").write_text(text)
    (args.out / "gpu_check.json").write_text(json.dumps(dict(steps=records, omp_num_threads=env_threads), indent=1) + "\n")
    print(text)
    return 0 if all(r.get("returncode") == 0 for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
