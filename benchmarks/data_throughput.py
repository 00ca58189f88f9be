"""Training-loader throughput of a vitstem data module: images/s for each ``num_workers`` and each recipe's
training augmentation (``--augment``: options of ``conf/data/augment``, e.g. basic xiao deit wortsman_i1k), for the
image folder and, with ``--shards DIR``, the same images as tar shards (written to DIR with ``vitstem-shard``,
timed as ``data=imagenet_shards``); and the loader workers a GPU needs to be fed ``--gpu-images-per-s`` images/s
(default 10700, our ViT-S/16 target on an H100 / H200): ``ceil(gpu images/s / images/s per worker)``.

The data module is the one ``vitstem-train <overrides>`` would build (Hydra compose of ``conf/train.yaml``).
For each augmentation and worker count the training loader (``persistent_workers`` on, so worker start-up
is not timed) is iterated for ``--warmup`` batches, then ``--batches`` batches are timed; the loader is
re-iterated when an epoch ends. Writes JSON with images/s (and per worker, and the workers needed) per data set,
augmentation and worker count, batch size, image size, data set and the machine; prints a Markdown table. The
figures are per loader worker on *this* machine's cores: a shared or busy machine gives noisy, low ones.

    # no ImageNet here: make a tiny ImageFolder of real JPEGs and time it at 224 px
    python benchmarks/data_throughput.py --make-imagefolder /tmp/tinyin --classes 4 --per-class 64 \\
        --size 256 --workers 1 2 -- model.img_size=224 data.loader.batch_size=32
    python benchmarks/data_throughput.py --make-imagefolder /tmp/tinyin --augment basic xiao deit wortsman_i1k \
        --workers 1 -- model.img_size=224 data.loader.batch_size=32     # each recipe's transforms
    python benchmarks/data_throughput.py --make-imagefolder /tmp/tinyin --shards /tmp/tinyin_shards \
        --augment basic xiao deit wortsman_i1k --workers 1 2 -- model.img_size=224 data.loader.batch_size=32
    python benchmarks/data_throughput.py --workers 0 4 8 -- data=imagenet data.root=/data/imagenet model=vit_s16
    python benchmarks/data_throughput.py --shards /data/imagenet_shards --workers 4 8 -- data=imagenet \
        data.root=/data/imagenet model=vit_s16          # writes all of ImageNet as shards first (once: --reuse-shards)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from types import SimpleNamespace
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from vitstem.data import shard_cli
from vitstem.paths import CONF_DIR

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "data_throughput.json"


def make_imagefolder(root: Path, classes: int, per_class: int, size: int, seed: int = 0) -> Path:
    """``root/{train,val}/<wnid>/*.JPEG``: smooth random colour fields with noise, ``size`` px, JPEG quality 90.

    Validation gets a quarter as many images per class (at least one).
    """
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", max(1, per_class // 4))):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                img = np.asarray(Image.fromarray(coarse).resize((size * 5 // 4, size), Image.BICUBIC), dtype=np.float32)
                img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"n{c:08d}_{i}.JPEG", quality=90)
    return root


def build_datamodule(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="data_throughput"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    return cfg, hydra.utils.instantiate(cfg.data, _convert_="all")


def time_loader(dm, workers: int, batches: int, warmup: int) -> dict:
    dm.loader.update(num_workers=workers, persistent_workers=workers > 0)
    repeats = getattr(dm, "augment", {}).get("num_repeats", 1)
    if repeats > 1:  # repeated augmentation runs on at least as many devices: one device's loader of that many
        dm.trainer = SimpleNamespace(world_size=repeats, global_rank=0)
    loader = dm.train_dataloader()
    if len(loader) == 0:
        raise SystemExit(f"the training loader has no full batch of {dm.batch_size}: lower data.loader.batch_size")
    it, images, start = iter(loader), 0, None
    for step in range(warmup + batches):
        if step == warmup:
            start, images = time.perf_counter(), 0
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(loader)
            x, _ = next(it)
        images += len(x)
    seconds = time.perf_counter() - start
    del it, loader  # stop the workers before the next setting
    per_s = images / seconds
    return dict(num_workers=workers, images_per_s=round(per_s, 1), images_per_s_per_worker=round(per_s / max(1, workers), 1),
                images=images, seconds=round(seconds, 3))


def write_shards(cfg, out: Path, shard_size: str) -> list[str]:
    """Write the image folder of ``cfg`` (a ``data=imagenet`` config) as shards to ``out`` with ``vitstem-shard``,
    the same classes and images; the overrides that time them instead of the folder."""
    data = cfg.data
    argv = [str(data.root), str(out), "--overwrite", "--shard-size", shard_size, "--num-classes", str(data.num_classes)]
    argv += ["--classes", *data.classes] if data.classes else []
    argv += ["--max-per-class", str(data.max_per_class)] if data.max_per_class else []
    if shard_cli.main(argv):
        raise SystemExit(f"vitstem-shard {' '.join(argv)} failed")
    return [f"data.root={out}"]


def machine() -> dict:
    return dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(), cpus_available=len(os.sched_getaffinity(0)),
                python=platform.python_version(), torch=torch.__version__, torch_threads=torch.get_num_threads())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Hydra overrides (as for vitstem-train) go after the options, e.g. -- data=cifar10")
    p.add_argument("overrides", nargs="*", help="vitstem-train overrides, e.g. data=imagenet model.img_size=224")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="num_workers settings to time")
    p.add_argument("--batches", type=int, default=20, help="timed batches per setting")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--augment", nargs="+", default=[None], metavar="OPTION",
                   help="data/augment options to time in turn (default: the one the overrides compose)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    p.add_argument("--make-imagefolder", type=Path, metavar="DIR",
                   help="write a tiny ImageFolder of JPEGs to DIR and time data=imagenet on it")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--per-class", type=int, default=64, help="training images per class (val: a quarter)")
    p.add_argument("--size", type=int, default=256, help="image height in px (width is 5/4 of it)")
    p.add_argument("--shards", type=Path, metavar="DIR",
                   help="also time the images as tar shards: write them to DIR (vitstem-shard), time data=imagenet_shards")
    p.add_argument("--reuse-shards", action="store_true", help="DIR holds the shards already: do not write them")
    p.add_argument("--shard-size", default="1000", help="vitstem-shard --shard-size")
    p.add_argument("--gpu-images-per-s", type=float, default=10700.0,
                   help="training images/s of one GPU (ViT-S/16 on an H100/H200: 10700): the workers needed are printed")
    a = p.parse_args(argv)
    overrides = list(a.overrides)
    if a.make_imagefolder:
        make_imagefolder(a.make_imagefolder, a.classes, a.per_class, a.size)
        given = {o.split("=", 1)[0] for o in overrides}
        overrides = [o for k, o in (("data", "data=imagenet"), ("data.root", f"data.root={a.make_imagefolder}"),
                                    ("data.num_classes", f"data.num_classes={a.classes}")) if k not in given] + overrides
    settings = [overrides]
    if a.shards:
        cfg, _ = build_datamodule(overrides)
        if cfg.hydra.runtime.choices["data"] != "imagenet":
            raise SystemExit("--shards writes the image folder of data=imagenet as shards: add data=imagenet data.root=...")
        root = [f"data.root={a.shards}"] if a.reuse_shards else write_shards(cfg, a.shards, a.shard_size)
        keep = [o for o in overrides if not o.startswith(("data=", "data.root=", "data.classes=", "data.max_per_class="))]
        settings.append(keep + ["data=imagenet_shards", *root])
    runs, first = [], None
    for option in a.augment:
        for setting in settings:
            cfg, dm = build_datamodule(setting + ([f"data/augment={option}"] if option else []))
            dm.setup("fit")
            first = first or (cfg, dm)
            name, data = cfg.hydra.runtime.choices["data/augment"], cfg.hydra.runtime.choices["data"]
            for w in a.workers:
                timing = time_loader(dm, w, a.batches, a.warmup)
                runs.append(dict(augment=name, **timing, settings=OmegaConf.to_container(cfg.data.augment), data=data,
                                 workers_needed=math.ceil(a.gpu_images_per_s / timing["images_per_s_per_worker"])))
                print(f"data={data} augment={name} num_workers={w}: {runs[-1]['images_per_s']:.1f} images/s", flush=True)
    gpu = f"{a.gpu_images_per_s:g}"
    print(f"\n| data | augment | workers | images/s | images/s per worker | workers for {gpu} images/s |\n"
          "|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['data']} | {r['augment']} | {r['num_workers']} | {r['images_per_s']} | "
              f"{r['images_per_s_per_worker']} | {r['workers_needed']} |")
    cfg, dm = first
    result = dict(data=cfg.hydra.runtime.choices["data"], overrides=overrides, img_size=dm.img_size,
                  batch_size=dm.batch_size, train_images=len(dm.train_set),
                  batches=a.batches, warmup=a.warmup, results=runs, machine=machine(),
                  time=time.strftime("%Y-%m-%d %H:%M:%S"), gpu_images_per_s=a.gpu_images_per_s,
                  shards=dict(dir=str(a.shards), overrides=settings[1]) if a.shards else None)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
