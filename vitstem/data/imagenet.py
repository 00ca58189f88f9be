"""ImageNet (ILSVRC-2012, Russakovsky et al., 2015) and its class subsets, from image folders.

On disk, under ``data.root``::

    <root>/train/<wnid>/*.JPEG      e.g. train/n01440764/n01440764_10026.JPEG
    <root>/val/<wnid>/*.JPEG        the 50k validation images sorted into the same 1000 wnid folders

Classes (label ``i`` is ``classes[i]``):

- ``classes=[n01440764, ...]``: exactly these wnids, in this order (``num_classes`` must be its length).
- else ``num_classes=k`` of the ``n`` wnid folders of ``train/`` in sorted order: ``k == n`` takes
  all; ``k < n`` takes every (n/k)-th, ``wnids[i * n // k]`` for ``i < k``: for ImageNet-1k and
  ``k=100`` that is every 10th wnid, starting at n01440764. The list is fixed by the folder names alone.

``max_per_class`` keeps the first images (in sorted file-name order) of each training class, for quick
studies; validation stays whole. Folders are scanned when the data module is built, so an empty class
folder, a missing class or train / val folders with different classes stop the run before training.

Images are read with PIL as RGB. An unreadable file raises :class:`CorruptImageError` naming it, or,
with ``skip_corrupt=true``, is replaced by the next readable sample, logged and counted
(:attr:`ImageNetDataModule.skipped`, a count of distinct files shared with the loader workers).

Transforms are timm's (``timm.data.create_transform``): training random-resized crop (``data.augment.scale``),
the ``data.augment`` flip / auto-augment / lighting / random erasing; evaluation resize to
``img_size / crop_pct`` and centre crop, with ``interpolation``; both normalise with ``mean`` / ``std``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from vitstem.config import ConfigError, DataError
from vitstem.data.augment import AugmentedDataModule, train_transform

log = logging.getLogger("vitstem")

HOW_TO_GET = ("ImageNet cannot be downloaded automatically: get ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
              "from https://image-net.org, unpack them to <root>/train/<wnid>/ and <root>/val/<wnid>/ (sort the flat "
              "val images into wnid folders, e.g. with imagenet/extract_ILSVRC.sh of github.com/pytorch/examples), and "
              "point data.root (default $VITSTEM_DATA/imagenet, else ./data/imagenet) at <root>")


class CorruptImageError(DataError):
    """An image file that PIL cannot read."""


class ImageFiles(Dataset):
    """``(path, label)`` samples read as RGB PIL images through ``transform`` (see the module docstring)."""

    def __init__(self, samples: list[tuple[str, int]], transform, skip_corrupt: bool):
        self.samples, self.transform, self.skip_corrupt = samples, transform, skip_corrupt
        self.bad = torch.zeros(len(samples), dtype=torch.bool).share_memory_()  # seen by all loader workers

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        for k in range(index, index + len(self.samples)):
            k %= len(self.samples)
            if self.bad[k]:
                continue
            path, label = self.samples[k]
            try:
                with open(path, "rb") as f:
                    img = Image.open(f).convert("RGB")
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
                if not self.skip_corrupt:
                    raise CorruptImageError(f"cannot read image {path}: {e!r}; replace or delete it, or set "
                                            "data.skip_corrupt=true to skip (and count) unreadable images") from e
                self.bad[k] = True
                log.warning("skipping unreadable image %s: %r", path, e)
                continue
            return self.transform(img), label
        raise CorruptImageError(f"no readable image among the {len(self.samples)} of this split")

    @property
    def skipped(self) -> int:
        return int(self.bad.sum())


def _subdirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())


def _images(folder: Path, limit: int | None = None) -> list[str]:
    files = sorted(e.path for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS))
    return files[:limit]


# The names the scan's errors give the settings: the config keys of ``data=imagenet``; vitstem-shard names its options.
CONFIG_KEYS = {"who": "imagenet", "root": "data.root", "num_classes": "data.num_classes", "classes": "data.classes",
               "max_per_class": "data.max_per_class", "how": HOW_TO_GET}


def select_classes(wnids: list[str], num_classes: int, classes: list[str] | None, keys: dict = CONFIG_KEYS) -> list[str]:
    """The classes to use: ``classes`` if given, else ``num_classes`` evenly spaced ``wnids`` (module docstring)."""
    if classes is not None:
        if len(classes) != num_classes or len(set(classes)) != len(classes):
            raise ConfigError(f"{keys['classes']} has {len(classes)} entries ({len(set(classes))} distinct) but "
                              f"{keys['num_classes']}={num_classes}: list each class once and set "
                              f"{keys['num_classes']}={len(set(classes))}")
        return list(classes)
    n = len(wnids)
    if not 1 <= num_classes <= n:
        raise ConfigError(f"{keys['num_classes']}={num_classes}: the train folder has {n} class folders; use 1..{n}")
    return [wnids[i * n // num_classes] for i in range(num_classes)]


def _scan_split(split_dir: Path, classes: list[str], limit: int | None, keys: dict) -> list[tuple[str, int]]:
    samples = []
    for label, wnid in enumerate(classes):
        files = _images(split_dir / wnid, limit)
        if not files:
            raise ConfigError(f"{keys['who']}: class folder {split_dir / wnid} holds no images "
                              f"({', '.join(IMG_EXTENSIONS)}); "
                              f"add its images, delete the folder in both train/ and val/, or leave the class out "
                              f"with {keys['classes']} / {keys['num_classes']}")
        samples += [(f, label) for f in files]
    return samples


def scan_imagefolder(root: str | Path, num_classes: int | None, classes: list[str] | None, max_per_class: int | None,
                     keys: dict = CONFIG_KEYS) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """``(classes, train samples, val samples)`` of the wnid folders under ``root`` (rules: module docstring);
    ``num_classes=None`` takes every class folder. Samples are ``(path, label)`` in class, then file-name order.
    Raises :class:`ConfigError` naming the folder and the setting (``keys``: the setting names to use)."""
    root = Path(root)
    train_dir, val_dir = root / "train", root / "val"
    for d in (train_dir, val_dir):
        if not d.is_dir():
            raise ConfigError(f"{keys['who']}: no folder {d} ({keys['root']}={root}). {keys['how']}")
    wnids, val_wnids = _subdirs(train_dir), _subdirs(val_dir)
    if wnids != val_wnids:
        only_train, only_val = sorted(set(wnids) - set(val_wnids)), sorted(set(val_wnids) - set(wnids))
        raise ConfigError(f"{keys['who']}: {train_dir} and {val_dir} hold different class folders (only in train: "
                          f"{only_train[:5]}{' ...' if len(only_train) > 5 else ''}, only in val: {only_val[:5]}"
                          f"{' ...' if len(only_val) > 5 else ''}); both need the same wnid folders")
    if num_classes is None:
        num_classes = len(classes) if classes is not None else len(wnids)
    selected = select_classes(wnids, num_classes, classes, keys)
    if unknown := sorted(set(selected) - set(wnids)):
        raise ConfigError(f"{keys['classes']}: {unknown} are not class folders of {train_dir}")
    if max_per_class is not None and max_per_class < 1:
        raise ConfigError(f"{keys['max_per_class']}={max_per_class} must be >= 1, or null for all images")
    return selected, _scan_split(train_dir, selected, max_per_class, keys), _scan_split(val_dir, selected, None, keys)


def imagenet_transforms(img_size: int, augment: dict, interpolation: str, crop_pct: float, mean: list[float],
                        std: list[float], who: str = "imagenet") -> tuple:
    """``(train, eval)`` transforms of ImageNet images (module docstring), shared by the folder and shard modules."""
    try:
        norm = dict(mean=tuple(mean), std=tuple(std))
        train = train_transform(img_size, augment, interpolation=interpolation, **norm)
        evaluate = create_transform(img_size, is_training=False, interpolation=interpolation, crop_pct=crop_pct, **norm)
    except (AssertionError, KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"{who}: bad transform setting (data.augment.scale={augment['scale']}, "
                          f"data.interpolation={interpolation}, data.crop_pct={crop_pct}): {e!r}") from e
    return train, evaluate


class ImageNetDataModule(AugmentedDataModule):
    """``data=imagenet``: wnid image folders under ``root`` (see the module docstring)."""

    def __init__(self, root: str, num_classes: int, img_size: int, classes: list[str] | None,
                 max_per_class: int | None, skip_corrupt: bool, interpolation: str, crop_pct: float,
                 mean: list[float], std: list[float], holdout: float, loader: dict, augment: dict):
        super().__init__(num_classes=num_classes, img_size=img_size, loader=loader, augment=augment, holdout=holdout)
        self.root, self.skip_corrupt = Path(root), skip_corrupt
        self.classes, self.train_samples, self.val_samples = scan_imagefolder(root, num_classes, classes, max_per_class)
        self.train_transform, self.eval_transform = imagenet_transforms(img_size, self.augment, interpolation, crop_pct,
                                                                        mean, std)

    def setup(self, stage: str | None = None) -> None:
        if not hasattr(self, "train_set"):  # keep the counters of skipped files across setup calls
            self.train_set = ImageFiles(self.train_samples, self.train_transform, self.skip_corrupt)
            self.val_set = ImageFiles(self.val_samples, self.eval_transform, self.skip_corrupt)

    @property
    def skipped(self) -> int:
        """Distinct unreadable images skipped so far (``skip_corrupt=true``), train and val."""
        return self.train_set.skipped + self.val_set.skipped if hasattr(self, "train_set") else 0

    def teardown(self, stage: str | None = None) -> None:
        if self.skipped:
            log.warning("imagenet: skipped %d unreadable image(s) (data.skip_corrupt=true)", self.skipped)
