"""Writing ImageNet as tar shards in the webdataset format: ``vitstem-shard`` (:mod:`vitstem.data.shard_cli`) writes
them with :func:`write_shards`, ``data=imagenet_shards`` (:mod:`vitstem.data.shards`) streams them.

On disk (``vitstem-shard <imagenet> <out>``, :func:`write_shards`)::

    <out>/train-000000.tar ...  per image <key>.jpg (the original file's bytes, unchanged) and <key>.cls (its label as text)
    <out>/val-000000.tar ...
    <out>/index.json            classes (wnids in label order) and the number of samples of every shard of each split

The images and classes are those of ``data=imagenet`` (:func:`vitstem.data.imagenet.scan_imagefolder`: all class
folders, or ``--num-classes`` / ``--classes``, and ``--max-per-class``). A key is ``<wnid>/<file stem>`` (dots made
underscores: webdataset splits a member name at the first dot of its base name); a file's extension becomes ``jpg``
for ``.JPEG`` / ``.jpeg`` and stays otherwise (``png``). Training samples are written in one random order over all
shards (``--seed``), validation samples in class order. ``--shard-size`` is a number of images (``1000``) or a size
(``256MB``). Every image is decoded before it is written (``--no-verify``: copied unchecked; ``--skip-corrupt``: one
that does not decode is left out and listed in ``index.json``, else it stops the writing naming the file).
``index.json`` is written last: without it the shards are incomplete. It holds each shard's size in bytes, so that
training finds a truncated or replaced shard before it starts.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vitstem.config import ConfigError, DataError
from vitstem.data.imagenet import scan_imagefolder

INDEX = "index.json"
FORMAT = "vitstem-shards/1"
SPLITS = ("train", "val")
IMAGE_EXTS = ("jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp")
SHARD_NAME = re.compile(r"^(train|val)-\d{6}\.tar$")


class ShardError(DataError):
    """Shards that cannot be written or read as they are (a missing member, a duplicate key, ...)."""


CLI_KEYS = {"who": "vitstem-shard", "root": "IMAGENET", "num_classes": "--num-classes", "classes": "--classes",
            "max_per_class": "--max-per-class",
            "how": "IMAGENET must hold train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (the layout of data=imagenet)"}


def parse_shard_size(text: str) -> tuple[int | None, int | None]:
    """``"1000"``: (1000 images, None); ``"256MB"`` / ``"1GB"``: (None, bytes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG][bB])?\s*", str(text))
    units = {None: None, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    if not m or (m[2] is None and "." in m[1]) or float(m[1]) <= 0:
        raise ConfigError(f"--shard-size={text!r} must be a positive number of images (1000) or a size (256MB, 1GB)")
    if m[2] is None:
        return int(m[1]), None
    return None, int(float(m[1]) * units[m[2].lower()])


def _key(path: str) -> tuple[str, str]:
    """``(key, extension)`` of an image file: ``<wnid>/<stem>`` and ``jpg`` / the lower-case extension."""
    p = Path(path)
    ext = p.suffix[1:].lower()
    return f"{p.parent.name}/{p.stem.replace('.', '_')}", "jpg" if ext == "jpeg" else ext


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o444, "", ""  # the same bytes every time
    return info


def undecodable(data: bytes) -> str | None:
    """None if ``data`` is an image PIL decodes in full, else why not (one line). A JPEG is decoded at 1/8 scale
    (PIL's ``draft``: every byte is still read, so truncation is still found; 2.7 ms instead of 3.5 ms for a 92 kB
    500 x 375 JPEG on one loaded core)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    except UnidentifiedImageError:
        return "not an image file PIL can identify"
    except Exception as e:  # noqa: BLE001  (PIL raises OSError, SyntaxError, ValueError, ... on bad data)
        return " ".join(f"{type(e).__name__}: {e}".split())
    return None


def _write_shard(path: Path, samples: list[tuple[str, str, str, int]], verify: bool = True,
                 skip_corrupt: bool = False) -> tuple[int, int, list[str]]:
    """Write ``(key, ext, file, label)`` samples to the tar ``path`` (via a temporary name): its size in bytes, the
    samples written and the files left out. With ``verify`` every image must decode (:func:`undecodable`): one that
    does not stops the writing (:class:`ShardError` naming it), or with ``skip_corrupt`` is left out."""
    tmp, written, left_out = path.with_name(f".{path.name}.tmp"), 0, []
    try:
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
            for key, ext, file, label in samples:
                data = Path(file).read_bytes()
                if verify and (why := undecodable(data)):
                    if not skip_corrupt:
                        raise ShardError(f"cannot decode image {file} ({why}): replace it, or pass --skip-corrupt to "
                                         f"leave unreadable images out (listed in {INDEX}) or --no-verify to copy "
                                         "images unchecked (then run again with --overwrite)")
                    left_out.append(str(file))
                    continue
                tar.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))
                cls = str(label).encode()
                tar.addfile(_tarinfo(f"{key}.cls", len(cls)), io.BytesIO(cls))
                written += 1
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path.stat().st_size, written, left_out


def _chunks(samples: list, images: int | None, max_bytes: int | None) -> list[list]:
    if images is not None:
        return [samples[i:i + images] for i in range(0, len(samples), images)]
    chunks, size = [[]], 0
    for s in samples:
        n = os.path.getsize(s[2]) + 1536  # the two members' headers and padding
        if chunks[-1] and size + n > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(s)
        size += n
    return chunks


def _clear(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``; then delete its index and shards (nothing else)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} is a file: choose a folder")
    entries = sorted(e.name for e in out.iterdir()) if out.is_dir() else []
    if entries and not overwrite:
        raise ConfigError(f"output folder {out} is not empty ({len(entries)} entries, e.g. {entries[0]}): choose a new "
                          f"folder, or pass --overwrite to replace its {INDEX} and <split>-NNNNNN.tar shards")
    if (out / INDEX).exists():
        (out / INDEX).unlink()  # first: a crash below leaves shards without an index, i.e. incomplete
    for name in entries:
        if SHARD_NAME.match(name):
            (out / name).unlink()


def write_shards(root: str | Path, out: str | Path, shard_size: str = "1000", num_classes: int | None = None,
                 classes: list[str] | None = None, max_per_class: int | None = None, seed: int = 0,
                 overwrite: bool = False, workers: int = 4, progress: Callable[[str], None] = print, verify: bool = True,
                 skip_corrupt: bool = False) -> dict:
    """Write the ImageNet-style folder ``root`` as shards into ``out`` (module docstring); return the index.

    ``verify``: decode every image before it is written; an image that does not decode stops the writing with a
    :class:`ShardError` naming it (the index is not written: the shards are incomplete), or with ``skip_corrupt``
    is left out and listed in the index (``unreadable``). ``verify=False`` copies the bytes unchecked (the index
    says ``"verified": false``)."""
    if not str(out).strip():
        raise ConfigError("the output folder is empty (''): give the folder to write the shards to")
    images, max_bytes = parse_shard_size(shard_size)
    if workers < 1:
        raise ConfigError(f"--workers={workers} must be >= 1")
    out = Path(out)
    classes, train, val = scan_imagefolder(root, num_classes, classes, max_per_class, keys=CLI_KEYS)
    inside = [Path(root).resolve() / s for s in SPLITS]
    if out.resolve() == Path(root).resolve() or any(d == out.resolve() or d in out.resolve().parents for d in inside):
        raise ConfigError(f"output folder {out} is the image folder {root} or inside its train/ or val/: choose another")
    _clear(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(train))  # one random order over all training shards
    splits, unreadable = {}, []
    for split, samples in (("train", [train[i] for i in order]), ("val", val)):
        rows = [(*_key(path), path, label) for path, label in samples]
        keys = [r[0] for r in rows]
        if len(set(keys)) != len(keys):
            seen = set()
            dup = next(k for k in keys if k in seen or seen.add(k))
            raise ShardError(f"two {split} images make the key {dup!r} (file names that differ only by dots or "
                             "extension in one class folder): rename one")
        chunks = _chunks(rows, images, max_bytes)
        paths = [out / f"{split}-{i:06d}.tar" for i in range(len(chunks))]
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(_write_shard, p, c, verify, skip_corrupt) for p, c in zip(paths, chunks)]
            written, step = [], max(1, len(chunks) // 10)
            try:
                for i, future in enumerate(futures):
                    written.append(future.result())
                    if (i + 1) % step == 0 or i + 1 == len(chunks):
                        progress(f"{split}: {i + 1}/{len(chunks)} shards written")
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # the shards not begun are not written
                raise
        unreadable += [f for _, _, left_out in written for f in left_out]
        splits[split] = dict(samples=sum(n for _, n, _ in written), shuffled=split == "train",
                             shards=[dict(file=p.name, samples=n, bytes=size) for p, (size, n, _) in zip(paths, written)])
    index = dict(format=FORMAT, classes=classes, source=str(Path(root).resolve()), seed=seed, shard_size=str(shard_size),
                 max_per_class=max_per_class, verified=verify, unreadable=unreadable, splits=splits)
    tmp = out / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, out / INDEX)
    return index
