"""``vitstem-bench``: steady-state training step time of vitstem's own path against a plain PyTorch loop.

    vitstem-bench                                        # the default run's model and batch, on this machine
    vitstem-bench model=vit_s16 data.loader.batch_size=256 trainer=gpu --attention softmax relu --compile off on
    vitstem-bench --startup                              # seconds to answer --help, --cfg job and a config error
    vitstem-bench experiment=wortsman_s8_relu --memory 80  # estimated peak GB per GPU, the batch that fits 80 GB

``--memory GB`` estimates, without running anything (also on a CPU), the peak memory of one GPU at the run's batch
and precision (:mod:`vitstem.models.memory`) and the largest batch that fits ``GB``, with the per-device batch and
``trainer.accumulate_grad_batches`` that keep the global batch. On a GPU the timed rows carry that estimate beside
the measured peak.

Both sides train the model ``vitstem-train <overrides>`` would build, on one batch held in device memory
(no loader, no augmentation), with the same optimizer and parameter groups, lr schedule, loss, precision,
gradient clipping, mixup and EMA:

- **vitstem**: the Lightning module and trainer as ``vitstem.train.build`` makes them (loggers, progress bar,
  metrics and callbacks included; the periodic checkpoint is off, as disk writes are not step time);
- **plain**: a hand-written loop: forward, loss, backward, clip, step, zero_grad, scheduler, EMA.

A step is the time between consecutive step ends (the device synchronised there), after ``--warmup`` steps
(compilation, allocator warm-up). The two alternate ``--rounds`` times in this process; the figure of each is
the median step over its rounds. Writes JSON (device, versions, settings, every round) and a Markdown table.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vitstem.config import ConfigError, compose, validate

DEFAULT_OUT = Path("benchmarks/results/bench.json")


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_batch(cfg, device):
    """A fixed training batch of the data set's shape, in device memory."""
    import torch
    n, size, classes = cfg.data.loader.batch_size, cfg.model.img_size, cfg.data.num_classes
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, 3, size, size, generator=g).to(device),
            torch.randint(0, classes, (n,), generator=g).to(device))


class Repeat:
    """A loader of ``n`` times the same batch (Lightning reads a list as several loaders)."""

    def __init__(self, batch, n: int):
        self.batch, self.n = batch, n

    def __iter__(self):
        return (self.batch for _ in range(self.n))

    def __len__(self) -> int:
        return self.n


def time_vitstem(cfg, steps: int, warmup: int) -> list[float]:
    """Step times of ``steps`` steps of vitstem's path (after ``warmup``), trained on one batch in memory."""
    import lightning as L
    from omegaconf import open_dict

    from vitstem.train import build

    with open_dict(cfg), tempfile.TemporaryDirectory() as tmp:
        cfg.run_dir = tmp
        cfg.trainer.max_epochs, cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches = 1, steps + warmup, 0
        cfg.callbacks.checkpoint.every_n_steps = None
        datamodule, module, trainer = build(cfg)
        stamps: list[float] = []

        class Stamp(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, *args) -> None:
                _sync(pl_module.device)
                stamps.append(time.perf_counter())

        trainer.callbacks.append(Stamp())
        batch = one_batch(cfg, trainer.strategy.root_device)
        datamodule.setup = lambda stage=None: None
        datamodule.holdout, datamodule.train_set = 0.0, [None] * (cfg.data.loader.batch_size * (steps + warmup))
        datamodule.train_dataloader = lambda: Repeat(batch, steps + warmup)
        datamodule.val_dataloader = lambda: []
        trainer.fit(module, datamodule=datamodule)
    return [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]


def time_plain(cfg, steps: int, warmup: int) -> list[float]:
    """Step times of the same training in a hand-written loop."""
    import hydra
    import torch
    from omegaconf import OmegaConf
    from timm.utils import ModelEmaV3

    from vitstem.instrument.metrics import compute_dtype
    from vitstem.models.classifier import create_model
    from vitstem.models.loss import init_head_bias
    from vitstem.optim import build_optimizer, build_scheduler, fit_warmup

    device = torch.device("cuda" if cfg.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
                          else "cpu")
    group = lambda k: OmegaConf.to_container(cfg[k], resolve=True)  # noqa: E731
    model = create_model(group("model"), cfg.data.num_classes, cfg.model.img_size).to(device)
    loss_cfg = group("loss")
    init_head_bias(model, loss_cfg.pop("head_bias_init"))
    criterion = hydra.utils.instantiate(loss_cfg)
    mixup = hydra.utils.instantiate(group("mixup"), num_classes=cfg.data.num_classes) if cfg.mixup else None
    ema = ModelEmaV3(model, decay=0.9999) if cfg.ema else None
    if cfg.compile:
        model.compile()
    batch = cfg.data.loader.batch_size
    optimizer, _ = build_optimizer(model, group("optimizer"), group("weight_decay"), batch)
    schedule = build_scheduler(optimizer, fit_warmup(group("scheduler"), steps + warmup, 1), steps + warmup, 1)["scheduler"]
    precision = str(cfg.trainer.precision)
    dtype = compute_dtype(precision) if precision.endswith("-mixed") else None  # autocast only for mixed precision
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    clip = cfg.trainer.gradient_clip_val
    x, y = one_batch(cfg, device)
    stamps = []
    model.train()
    for step in range(steps + warmup):
        xb, yb = mixup(x, y) if mixup is not None else (x, y)
        with autocast():
            loss = criterion(model(xb), yb)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        if ema is not None:
            ema.update(model, step=step)
        _sync(device)
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]


@contextlib.contextmanager
def peak_memory():
    """The peak GPU memory allocated inside the block, in GB (``{}`` on CPU): point-wise attention materialises
    its L x L weights, fused softmax attention does not."""
    import torch
    out: dict = {}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    yield out
    if torch.cuda.is_available():
        out["gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)


def cost(cfg) -> tuple[int, float | None]:
    """Training FLOPs per image (forward and backward, counted as the instrumentation counts them) and the
    device's peak FLOP/s at the run's precision (None on CPU): for MFU."""
    import torch
    from omegaconf import OmegaConf

    from vitstem.instrument.metrics import compute_dtype, peak_flops, train_flops_per_image
    from vitstem.models.classifier import create_model

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    flops = train_flops_per_image(lambda: create_model(model_cfg, cfg.data.num_classes, cfg.model.img_size),
                                  cfg.model.img_size)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    return flops, peak_flops(device, compute_dtype(cfg.trainer.precision))


def memory_estimate(cfg, devices: int | None = None):
    """The estimated peak of one device for ``cfg`` (eager, at its batch and precision; DDP buckets if several)."""
    from omegaconf import OmegaConf

    from vitstem.models import memory
    from vitstem.models.classifier import create_model

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    devices = devices if devices is not None else (cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1)
    return memory.estimate(lambda: create_model(model_cfg, cfg.data.num_classes, cfg.model.img_size),
                           cfg.data.loader.batch_size, cfg.model.img_size, str(cfg.trainer.precision),
                           memory.optimizer_states(OmegaConf.to_container(cfg.optimizer, resolve=True)),
                           ema=bool(cfg.ema), ddp=devices != 1)


def memory_report(overrides: list[str], gb: float) -> dict:
    """``--memory GB``: the estimate at the run's settings (bf16-mixed when the precision follows a CPU), the largest
    batch that fits ``gb`` and the batch / accumulation that keep the global batch."""
    from vitstem.models import memory

    cfg = compose(overrides)
    validate(cfg)
    if str(cfg.trainer.precision) == "32-true" and not any(o.startswith("trainer.precision=") for o in overrides):
        from omegaconf import open_dict
        with open_dict(cfg):
            cfg.trainer.precision = "bf16-mixed"  # what a GPU run would get by default
    est = memory_estimate(cfg)
    total = int(gb * memory.GB)
    fit = memory.fit_batch(est, cfg.trainer.accumulate_grad_batches, total)
    return dict(model=cfg.model.name, precision=str(cfg.trainer.precision), memory_gb=gb, **est.summary(),
                accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
                largest_batch=memory.largest_batch(est, total),
                fits=dict(zip(("batch_size", "accumulate_grad_batches"), fit)) if fit else None)


def environment() -> dict:
    import lightning
    import timm
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return dict(device=gpu or f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
                python=platform.python_version(), torch=torch.__version__, lightning=lightning.__version__,
                timm=timm.__version__, platform=platform.platform(), time=time.strftime("%Y-%m-%d %H:%M:%S"))


def bench(overrides: list[str], attentions: list[str], compiles: list[str], steps: int, warmup: int,
          rounds: int) -> list[dict]:
    rows = []
    for attention in attentions:
        for comp in compiles:
            extra = ([f"model/attention={attention}"] if attention else []) + [f"compile={comp == 'on'}"]
            cfg = compose([*overrides, *extra])  # the settings, checked before any compute
            validate(cfg)
            flops, peak_device = cost(cfg)
            times, peak = {"vitstem": [], "plain": []}, {"vitstem": None, "plain": None}
            for _ in range(rounds):
                for side, timer in (("vitstem", time_vitstem), ("plain", time_plain)):
                    with peak_memory() as mem:
                        times[side].append(statistics.median(timer(compose([*overrides, *extra]), steps, warmup)))
                    peak[side] = mem.get("gb")
            v, p = statistics.median(times["vitstem"]), statistics.median(times["plain"])
            estimate = memory_estimate(cfg, devices=1).summary()["estimate_gb"] if peak["vitstem"] is not None else None
            batch = cfg.data.loader.batch_size
            rows.append(dict(model=cfg.model.name, attention=cfg.model.attention.activation, compile=comp == "on",
                             batch=batch, img_size=cfg.model.img_size, precision=str(cfg.trainer.precision),
                             vitstem_step_ms=round(1e3 * v, 3), plain_step_ms=round(1e3 * p, 3),
                             ratio=round(v / p, 4), vitstem_images_per_s=round(batch / v, 1),
                             plain_images_per_s=round(batch / p, 1), train_tflop_per_image=flops / 1e12,
                             vitstem_mfu=round(flops * batch / v / peak_device, 4) if peak_device else None,
                             vitstem_peak_memory_gb=peak["vitstem"], plain_peak_memory_gb=peak["plain"],
                             estimated_peak_memory_gb=estimate,
                             rounds={k: [round(1e3 * t, 3) for t in ts] for k, ts in times.items()}))
            print(f"{rows[-1]['model']} {rows[-1]['attention']} compile={comp}: vitstem {rows[-1]['vitstem_step_ms']} ms, "
                  f"plain {rows[-1]['plain_step_ms']} ms, ratio {rows[-1]['ratio']}", flush=True)
    return rows


def startup(repeats: int = 3) -> dict:
    """Seconds for ``vitstem-train`` to answer ``--help``, ``--cfg job`` and a configuration error (best of N)."""
    cases = {"--help": ["--help"], "--cfg job": ["--cfg", "job"], "config error": ["optimizer.lr=abc"]}
    out = {}
    for name, args in cases.items():
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "vitstem.train", *args], capture_output=True, text=True)
            best = min(best, time.perf_counter() - start)
        out[name] = round(best, 2)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import hydra, omegaconf"], capture_output=True)
    out["hydra + omegaconf import"] = round(time.perf_counter() - start, 2)
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| model | attention | compile | batch | precision | vitstem ms/step | plain ms/step | ratio | vitstem images/s "
             "| MFU | peak GB | estimated GB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['attention']} | {r['compile']} | {r['batch']} | {r['precision']} | "
              f"{r['vitstem_step_ms']} | {r['plain_step_ms']} | {r['ratio']} | {r['vitstem_images_per_s']} | "
              f"{r['vitstem_mfu'] if r['vitstem_mfu'] is not None else '-'} | "
              f"{r['vitstem_peak_memory_gb'] if r['vitstem_peak_memory_gb'] is not None else '-'} | "
              f"{r['estimated_peak_memory_gb'] if r['estimated_peak_memory_gb'] is not None else '-'} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vitstem-bench", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="vitstem-train overrides (key=value) choose the model, batch, precision ...")
    parser.add_argument("overrides", nargs="*", help="vitstem-train overrides")
    parser.add_argument("--attention", nargs="+", default=[""], metavar="OPTION",
                        help="model/attention options to compare (default: the model's own)")
    parser.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of vitstem and plain")
    parser.add_argument("--startup", action="store_true", help="time vitstem-train's start-up only")
    parser.add_argument("--memory", type=float, metavar="GB", help="estimate the peak memory per GPU (runs nothing) "
                        "and the largest batch that fits GB")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    args = parser.parse_args(argv)
    try:
        run(args)
    except ConfigError as e:
        sys.exit(f"vitstem-bench: configuration error: {e}")


def run(args) -> None:
    if args.startup:
        result = dict(startup_s=startup(), **environment())
        print(json.dumps(result["startup_s"], indent=1))
    elif args.memory is not None:
        result = dict(overrides=args.overrides, memory=memory_report(args.overrides, args.memory), **environment())
        m = result["memory"]
        fits = m["fits"]
        print(f"{m['model']} {m['precision']} batch {m['batch']} x {m['accumulate_grad_batches']} accumulated: estimated "
              f"peak {m['estimate_gb']} GB per GPU (states {m['states_gb']}, activations {m['activations_gb']}, of them "
              f"attention maps {m['attention_maps_gb']}); largest batch in {m['memory_gb']} GB: {m['largest_batch']}; "
              + (f"use data.loader.batch_size={fits['batch_size']} trainer.accumulate_grad_batches="
                 f"{fits['accumulate_grad_batches']}" if fits else "not even one image fits"))
    else:
        rows = bench(args.overrides, args.attention, args.compile, args.steps, args.warmup, args.rounds)
        result = dict(overrides=args.overrides, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
                      results=rows, **environment())
        print(markdown(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
