"""Cost of the instrumentation (``vitstem.instrument``) on the default run: step time with it and without it.

Runs the default ``vitstem-train`` (``model=vit_p_32``, 32 px synthetic data, batch 128, CPU) in this process,
``--steps`` training steps and one validation batch per run, alternating *on* (``conf/callbacks/default.yaml``
as it is) and *off* (``~callbacks.stability ~callbacks.tokens ~callbacks.throughput``), ``--repeats`` times each.
A timing callback records the wall time of every training step (batch end to batch end: data loading, the
monitor's per-step record and its read every ``trainer.log_every_n_steps`` steps included; the first
``--warmup`` steps left out) and of the validation (where the token statistics run once per epoch). Two estimates:

- ``between_runs``: (mean step on - mean step off) / mean step off + (validation on - validation off) /
  (64 x mean step off), with the default run's 64 steps per epoch (8192 images / 128);
- ``within_runs``: in the *on* runs, the time spent inside the instrumentation itself (its callback hooks and its
  forward hooks, timed around each call) per step over the step time, plus the token statistics' time per epoch
  over 64 steps. Measured in the same steps as the step time, it holds up on a machine shared with other work,
  where the first estimate is noise; rerun both on a quiet machine.

Writes JSON (``--out``).

    python benchmarks/instrument_overhead.py                       # 3 x 2 runs of 30 steps, torch's threads
    python benchmarks/instrument_overhead.py --threads 0 1         # also with one thread
    python benchmarks/instrument_overhead.py --steps 64 --repeats 5 -- model=vit_c_32
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from data_throughput import machine  # noqa: E402  (the sibling benchmark's machine record)

DEFAULT_OUT = HERE / "results" / "instrument_overhead.json"
OFF = ["~callbacks.stability", "~callbacks.tokens", "~callbacks.throughput"]
STEPS_PER_EPOCH = 64  # the default run: data.train_size 8192 / data.loader.batch_size 128


class StepTimer(L.Callback):
    """Wall time of each training step and of each validation; written to ``path`` (JSON) when training ends."""

    def __init__(self, path: str):
        self.path, self.steps, self.validation, self._last, self._val = path, [], [], None, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if self._last is not None:
            self.steps.append(now - self._last)
        self._last = now

    def on_validation_epoch_start(self, trainer, pl_module):
        self._val = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):  # after every on_validation_epoch_end (token statistics)
        if not trainer.sanity_checking:
            self.validation.append(time.perf_counter() - self._val)
        self._last = None  # the next step's interval would include validation

    def on_train_end(self, trainer, pl_module):
        Path(self.path).write_text(json.dumps({"steps": self.steps, "validation": self.validation}))


class Stopwatch:
    """Total wall time spent inside the instrumentation's callback hooks and forward hooks, by hook."""

    HOOKS = {"StabilityMonitor": ("on_before_optimizer_step", "on_train_batch_end", "on_validation_start",
                                  "on_train_epoch_end"),
             "Throughput": ("on_train_batch_start", "on_train_batch_end", "on_validation_start", "on_validation_end",
                            "on_train_epoch_end"),
             "TokenStatistics": ("on_validation_batch_start", "on_validation_epoch_end")}
    PER_EPOCH = ("TokenStatistics.on_validation_epoch_end",)

    def __init__(self):
        from vitstem.instrument import callbacks

        self.seconds: dict[str, float] = {}
        self._patched = [(getattr(callbacks, cls), name, getattr(getattr(callbacks, cls), name))
                         for cls, names in self.HOOKS.items() for name in names]
        self._patched.append((torch, "aminmax", torch.aminmax))  # only the monitor's forward hooks call it

    def _timed(self, key, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start
        return timed

    def __enter__(self):
        for owner, name, fn in self._patched:
            setattr(owner, name, self._timed(f"{getattr(owner, '__name__', owner)}.{name}", fn))
        return self

    def __exit__(self, *exc):
        for owner, name, fn in self._patched:
            setattr(owner, name, fn)


def one_run(overrides: list[str], run_dir: Path) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from vitstem.paths import CONF_DIR
    from vitstem.train import run

    timings = run_dir / "timings.json"
    overrides = overrides + [f"+callbacks.timer={{_target_: instrument_overhead.StepTimer, path: '{timings}'}}"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="instrument_overhead"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
        del cfg.hydra
    results = run(cfg)
    if results["status"] != "finished":
        raise SystemExit(f"the run {overrides} ended {results['status']}: {results.get('error')}")
    return json.loads(timings.read_text())


def measure(base: list[str], repeats: int, warmup: int, threads: int | None) -> dict:
    """Alternating on / off runs at ``threads`` torch threads (None: torch's default); both estimates."""
    default = torch.get_num_threads()
    torch.set_num_threads(threads or default)
    runs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(repeats):
                for mode in ("on", "off"):
                    with Stopwatch() as watch:
                        t = one_run(base + (OFF if mode == "off" else []), Path(tmp) / f"{mode}{i}")
                    steps = t["steps"][warmup:]
                    per_epoch = sum(v for k, v in watch.seconds.items() if k in Stopwatch.PER_EPOCH)
                    run = {"mode": mode, "mean_step_s": statistics.fmean(steps), "median_step_s": statistics.median(steps),
                           "validation_s": t["validation"][-1], "instrument_s": watch.seconds,
                           "steps_s": sum(t["steps"]), "steps": len(t["steps"]), "instrument_per_epoch_s": per_epoch}
                    if mode == "on":
                        run["within_run_step_fraction"] = (sum(watch.seconds.values()) - per_epoch) / run["steps_s"]
                    runs.append(run)
                    print(f"{torch.get_num_threads()} threads, {mode:3s} run {i}: mean step "
                          f"{1000 * run['mean_step_s']:.1f} ms, validation {1000 * run['validation_s']:.1f} ms" + (
                              f", inside the instrumentation {100 * run['within_run_step_fraction']:.2f}% of the step "
                              f"time + {1000 * per_epoch:.0f} ms per epoch" if mode == "on" else ""), flush=True)
    finally:
        torch.set_num_threads(default)
    mean = {m: statistics.median(r["mean_step_s"] for r in runs if r["mode"] == m) for m in ("on", "off")}
    val = {m: statistics.median(r["validation_s"] for r in runs if r["mode"] == m) for m in ("on", "off")}
    step = (mean["on"] - mean["off"]) / mean["off"]
    epoch = (val["on"] - val["off"]) / (STEPS_PER_EPOCH * mean["off"])
    on = [r for r in runs if r["mode"] == "on"]
    within_step = statistics.median(r["within_run_step_fraction"] for r in on)
    within_epoch = statistics.median(r["instrument_per_epoch_s"] / (STEPS_PER_EPOCH * r["steps_s"] / r["steps"])
                                     for r in on)
    return dict(threads=threads or default, median_of_mean_step_s=mean, median_validation_s=val,
                between_runs={"step": step, "epoch_at_64_steps": epoch, "total": step + epoch},
                within_runs={"step": within_step, "epoch_at_64_steps": within_epoch, "total": within_step + within_epoch},
                runs=runs)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="vitstem-train overrides go after the options, e.g. -- model=vit_c_32")
    p.add_argument("overrides", nargs="*", help="vitstem-train overrides for every run")
    p.add_argument("--steps", type=int, default=30, help="training steps per run")
    p.add_argument("--warmup", type=int, default=5, help="first steps of each run left out")
    p.add_argument("--repeats", type=int, default=3, help="runs per setting (alternating on / off)")
    p.add_argument("--threads", type=int, nargs="+", default=[0],
                   help="torch threads, one measurement each (0: torch's default, the default run's)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    a = p.parse_args(argv)
    base = ["trainer.max_epochs=1", f"trainer.limit_train_batches={a.steps}", "trainer.limit_val_batches=1",
            "trainer.enable_progress_bar=false", *a.overrides]
    settings = [measure(base, a.repeats, a.warmup, t or None) for t in a.threads]
    out = dict(overrides=base, off=OFF, steps_per_run=a.steps, warmup_steps=a.warmup, repeats=a.repeats,
               settings=settings, note="a machine shared with other work gives noisy figures (between_runs above "
               "all); rerun on a quiet one", machine={**machine(), "load_average": os.getloadavg()},
               time=time.strftime("%Y-%m-%d %H:%M:%S"))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    for m in settings:
        b, w = m["between_runs"], m["within_runs"]
        print(f"{m['threads']} threads: step {1000 * m['median_of_mean_step_s']['off']:.1f} ms off, "
              f"{1000 * m['median_of_mean_step_s']['on']:.1f} ms on. Between runs {100 * b['step']:+.2f}% per step "
              f"{100 * b['epoch_at_64_steps']:+.2f}% per epoch = {100 * b['total']:+.2f}%; within runs "
              f"{100 * w['step']:.2f}% + {100 * w['epoch_at_64_steps']:.2f}% = {100 * w['total']:.2f}%")
    print(f"wrote {a.out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
