"""``vitstem-shard``: write an ImageNet-style image folder as webdataset tar shards for ``data=imagenet_shards``.

    vitstem-shard /data/imagenet /data/imagenet_shards                  # 1000 images a shard, ~110 MB
    vitstem-shard /data/imagenet /data/in100_shards --num-classes 100 --shard-size 256MB
    vitstem-train data=imagenet_shards data.root=/data/imagenet_shards

The format: :mod:`vitstem.data.shard_writer`; the loader: :mod:`vitstem.data.shards`. Errors (a missing folder, a class setting that does not fit,
an output folder that is not empty) end the command with one line and exit status 2.
"""
from __future__ import annotations

import argparse
import sys

from vitstem.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vitstem-shard", description=__doc__.split("\n\n")[0].replace("``", ""),
                                epilog="Then: vitstem-train data=imagenet_shards data.root=OUT data.num_classes=<classes>")
    p.add_argument("imagenet", help="the image folder: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
    p.add_argument("out", help="a new (or empty) folder for <split>-NNNNNN.tar and index.json")
    p.add_argument("--shard-size", default="1000", help="images per shard (1000) or a size per shard (256MB, 1GB)")
    p.add_argument("--num-classes", type=int, help="every (n/k)-th of the n sorted class folders (default: all)")
    p.add_argument("--classes", nargs="+", metavar="WNID", help="exactly these classes, in this label order")
    p.add_argument("--max-per-class", type=int, help="the first N training images (by file name) per class")
    p.add_argument("--seed", type=int, default=0, help="of the random order of the training samples over the shards")
    p.add_argument("--workers", type=int, default=4, help="shards written at once (threads)")
    p.add_argument("--overwrite", action="store_true", help="replace the index.json and shards already in OUT")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="leave out an image that does not decode (listed in index.json), instead of stopping")
    p.add_argument("--no-verify", action="store_true", help="copy the images unchecked (else each is decoded first)")
    a = p.parse_args(argv)
    from vitstem.data.shard_writer import ShardError, write_shards  # torch and timm: seconds, not for --help

    try:
        index = write_shards(a.imagenet, a.out, shard_size=a.shard_size, num_classes=a.num_classes, classes=a.classes,
                             max_per_class=a.max_per_class, seed=a.seed, overwrite=a.overwrite, workers=a.workers,
                             verify=not a.no_verify, skip_corrupt=a.skip_corrupt)
    except (ConfigError, ShardError, OSError) as e:
        message = " ".join(str(e).split()).removeprefix("vitstem-shard: ")
        print(f"vitstem-shard: error: {message}", file=sys.stderr)
        return 2
    splits = index["splits"]
    gb = sum(s["bytes"] for split in splits.values() for s in split["shards"]) / 1e9
    images = splits["train"]["samples"] + splits["val"]["samples"]
    bad = index["unreadable"]
    checked = (f"all {images} images decoded" if not bad else f"{images} images decoded, {len(bad)} that do not left "
               f"out (listed in {a.out}/index.json, e.g. {bad[0]})") if index["verified"] else \
        f"{images} images copied unverified (--no-verify)"
    print(f"wrote {splits['train']['samples']} training images in {len(splits['train']['shards'])} shards and "
          f"{splits['val']['samples']} validation images in {len(splits['val']['shards'])} shards ({gb:.2f} GB) to "
          f"{a.out}; {checked}; train with: vitstem-train data=imagenet_shards data.root={a.out} "
          f"data.num_classes={len(index['classes'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
