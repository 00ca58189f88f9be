"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from the official python-version archives.

On disk (what the archives unpack to, under ``data.root``)::

    <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}

Each split file is a pickled dict with ``b'data'`` (uint8, N x 3072, channel-major 32 x 32) and
``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100). File names, archive URLs and MD5 sums are
torchvision's (:class:`torchvision.datasets.CIFAR10` / ``CIFAR100``); the files are read here so that
``verify_checksums=false`` accepts other data in the same format (a subset, a re-saved copy).

Training transform: random crop 32 with ``padding`` (4), the ``data.augment`` flip, then a resize to
``img_size`` when it is not 32 (so 224 px models train on CIFAR), timm's auto-augment, normalisation
with the CIFAR mean / std (PCA lighting before it, if set), random erasing (:mod:`vitstem.data.augment`). Evaluation: resize (if not
32 px) and normalise.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision import transforms as T
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from vitstem.config import ConfigError
from vitstem.data.augment import AugmentedDataModule, train_transform

VARIANTS = {"cifar10": (datasets.CIFAR10, "labels"), "cifar100": (datasets.CIFAR100, "fine_labels")}


class CIFAR(Dataset):
    """The images and labels of one split, as PIL images through ``transform``."""

    def __init__(self, folder: Path, files: list[str], label_key: str, transform):
        data, labels = [], []
        for name in files:
            with open(folder / name, "rb") as f:
                entry = pickle.load(f, encoding="bytes")
            data.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += list(entry[label_key.encode()])
        self.data = np.concatenate(data).transpose(0, 2, 3, 1)  # N x 32 x 32 x 3
        self.targets, self.transform = [int(y) for y in labels], transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


class CIFARDataModule(AugmentedDataModule):
    """``data=cifar10`` / ``data=cifar100``: the official archives under ``root`` (see the module docstring)."""

    def __init__(self, name: str, root: str, download: bool, verify_checksums: bool, num_classes: int,
                 img_size: int, padding: int, interpolation: str, mean: list[float], std: list[float],
                 holdout: float, loader: dict, augment: dict):
        super().__init__(num_classes=num_classes, img_size=img_size, loader=loader, augment=augment, holdout=holdout)
        if name not in VARIANTS:
            raise ConfigError(f"data.name={name!r}: must be one of {sorted(VARIANTS)}")
        self.spec, self.label_key = VARIANTS[name]
        self.name, self.root, self.download, self.verify = name, Path(root), download, verify_checksums
        self.folder = self.root / self.spec.base_folder
        if not download:
            self._check_files()
        resize = [T.Resize(img_size, interpolation=T.InterpolationMode(interpolation))] if img_size != 32 else []
        norm = dict(mean=tuple(mean), std=tuple(std))
        crop_flip = [T.RandomCrop(32, padding=padding), T.RandomHorizontalFlip(self.augment["hflip"])]
        self.train_transform = train_transform(img_size, self.augment, primary=[*crop_flip, *resize],
                                               interpolation=interpolation, **norm)
        self.eval_transform = T.Compose([*resize, T.ToTensor(), T.Normalize(**norm)])

    def _files(self) -> list[tuple[str, str]]:
        return [*self.spec.train_list, *self.spec.test_list, (self.spec.meta["filename"], self.spec.meta["md5"])]

    def _check_files(self) -> None:
        """Fail before training when a file is missing or (with ``verify_checksums``) not the official one."""
        missing = [name for name, _ in self._files() if not (self.folder / name).is_file()]
        if missing:
            raise ConfigError(
                f"{self.name}: no data at {self.folder} (missing {', '.join(missing)}). Set data.download=true to fetch "
                f"{self.spec.url} into data.root={self.root}, or download and unpack it there yourself; data.root "
                f"defaults to $VITSTEM_DATA (else ./data)")
        if self.verify:
            bad = [name for name, md5 in self._files() if not check_integrity(str(self.folder / name), md5)]
            if bad:
                raise ConfigError(
                    f"{self.name}: {', '.join(bad)} in {self.folder} fail(s) the MD5 check of the official "
                    f"{self.spec.filename}; set data.verify_checksums=false to use other data in the same format")

    def prepare_data(self) -> None:
        if self.download and not all((self.folder / n).is_file() for n, _ in self._files()):
            download_and_extract_archive(self.spec.url, str(self.root), filename=self.spec.filename, md5=self.spec.tgz_md5)

    def setup(self, stage: str | None = None) -> None:
        if self.download:
            self._check_files()
        train_files = [n for n, _ in self.spec.train_list]
        test_files = [n for n, _ in self.spec.test_list]
        self.train_set = CIFAR(self.folder, train_files, self.label_key, self.train_transform)
        self.val_set = CIFAR(self.folder, test_files, self.label_key, self.eval_transform)
        labels = set(self.train_set.targets) | set(self.val_set.targets)
        if labels and not 0 <= min(labels) <= max(labels) < self.num_classes:
            raise ConfigError(f"{self.name}: labels in {self.folder} range {min(labels)}..{max(labels)}, "
                              f"outside data.num_classes={self.num_classes}")
