"""Tiny data sets on disk in the real formats: CIFAR-10/100 pickles and an ImageFolder of JPEG files."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_FILES = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                           "batches.meta", b"labels", b"label_names"),
               "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", b"fine_labels", b"fine_label_names")}


def write_cifar(root: Path, name: str, train_size: int = 20, test_size: int = 8, seed: int = 0) -> dict:
    """Write ``name`` in the official pickle layout under ``root``; return the images and labels written."""
    folder_name, train_files, test_files, meta, label_key, names_key = CIFAR_FILES[name]
    classes = 10 if name == "cifar10" else 100
    folder = root / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for split, files, size in (("train", train_files, train_size), ("test", test_files, test_size)):
        data = rng.integers(0, 256, (size, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, classes, size)]
        written[split] = (data, labels)
        for i, file in enumerate(files):
            part = slice(i * size // len(files), (i + 1) * size // len(files))
            entry = {b"batch_label": file.encode(), b"data": data[part], label_key: labels[part]}
            (folder / file).write_bytes(pickle.dumps(entry))
    (folder / meta).write_bytes(pickle.dumps({names_key: [f"c{i}".encode() for i in range(classes)]}))
    return written


def write_imagefolder(root: Path, classes: int = 4, train_per_class: int = 4, val_per_class: int = 2,
                      size: int = 24, width: int | None = None) -> Path:
    """``root/{train,val}/n0000000k/*.JPEG``: small real JPEG files (``size`` high, ``width`` wide: ``size + 4``
    unless given), a colour per class plus noise."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(rng.normal(40 * c + 60, 30, (size, size + 4 if width is None else width, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"n{c:08d}_{i}.JPEG", quality=90)
    return root
