"""Built-in synthetic image-classification data: no files, no download, any image size.

Each image is rendered on the fly from ``(seed, split, index)`` alone, so the data set is the same on
every machine and in every worker, and costs no memory however large it is.

How an image is made (all sizes are fractions of the image, so 32 px and 224 px images show the same
scene):

- The class fixes a *pattern*: gratings at four orientations (0, 45, 90, 135 degrees), a disk, a ring,
  a square, a cross, a checkerboard and a triangle. With more than ten classes, class ``k`` draws
  pattern ``k % 10`` at size band ``k // 10``: the object scale (and grating frequency) ranges are split
  into disjoint bands, so classes still differ only in spatial structure.
- Everything else is random per image: position, size, small rotation, grating phase and frequency,
  and two colours (foreground and background) drawn independently and uniformly in RGB. The mean
  colour of an image therefore carries no information about its class; a model has to see the shape.
- Gaussian pixel noise (std ``noise``) is added; pixels are clipped to [0, 1] and normalised with
  ``data.mean`` and ``data.std`` (0.5 and 0.25).

The images are not augmented: a recipe's ``data.augment`` (an experiment's) is reported once and ignored.

Labels are balanced: image ``i`` has class ``i % num_classes``.
"""
from __future__ import annotations

import logging
import math

import torch
from torch.utils.data import Dataset

from vitstem.data.base import ImageDataModule

log = logging.getLogger("vitstem")

NUM_PATTERNS = 10
_SPLIT_SALT = {"train": 0, "val": 1}


def _mask(pattern: int, y: torch.Tensor, x: torch.Tensor, scale: float, freq: float, phase: float) -> torch.Tensor:
    """Foreground mask in [0, 1] of one pattern on centred, rotated coordinates ``y, x`` in [-1, 1]."""
    if pattern < 4:  # gratings: 0, 45, 90, 135 degrees
        theta = pattern * math.pi / 4
        u = x * math.cos(theta) + y * math.sin(theta)
        return (torch.sin(2 * math.pi * freq * u / 2 + phase) > 0).float()
    r = scale
    if pattern == 4:  # disk
        return ((x**2 + y**2).sqrt() < r).float()
    if pattern == 5:  # ring
        return (((x**2 + y**2).sqrt() - r).abs() < 0.25 * r).float()
    if pattern == 6:  # square
        return (torch.maximum(x.abs(), y.abs()) < 0.8 * r).float()
    if pattern == 7:  # cross
        w = 0.3 * r
        return (((x.abs() < w) & (y.abs() < r)) | ((y.abs() < w) & (x.abs() < r))).float()
    if pattern == 8:  # checkerboard
        return ((torch.sin(math.pi * freq * x + phase) * torch.sin(math.pi * freq * y + phase)) > 0).float()
    # triangle, apex up
    return ((y > -r) & (y < r) & (x.abs() < (y + r) / 2)).float()


def render(index: int, label: int, num_classes: int, img_size: int, seed: int, split: str, noise: float) -> torch.Tensor:
    """Render image ``index`` of ``split`` as a float tensor in [0, 1] of shape (3, img_size, img_size)."""
    g = torch.Generator().manual_seed(((seed * 2 + _SPLIT_SALT[split]) << 32) + index)
    u = torch.rand(12, generator=g).tolist()
    pattern, band = label % NUM_PATTERNS, label // NUM_PATTERNS
    bands = math.ceil(num_classes / NUM_PATTERNS)
    b0 = band / bands  # this class's slice of the size range
    scale = 0.3 + 0.45 * (b0 + u[0] / bands)
    freq = 2.0 + 3.0 * (b0 + u[1] / bands)
    phase = 2 * math.pi * u[2]
    angle = (u[3] - 0.5) * math.radians(20)
    cy, cx = (u[4] - 0.5) * 0.6, (u[5] - 0.5) * 0.6
    coords = torch.linspace(-1, 1, img_size)
    yy, xx = torch.meshgrid(coords - cy, coords - cx, indexing="ij")
    c, s = math.cos(angle), math.sin(angle)
    y, x = c * yy - s * xx, s * yy + c * xx
    m = _mask(pattern, y, x, scale, freq, phase)
    fg = torch.tensor(u[6:9]).view(3, 1, 1)
    bg = torch.tensor(u[9:12]).view(3, 1, 1)
    img = bg + m * (fg - bg)
    img = img + noise * torch.randn(3, img_size, img_size, generator=g)
    return img.clamp_(0, 1)


class SyntheticImages(Dataset):
    """``size`` procedurally rendered images of one split (see the module docstring)."""

    def __init__(self, size: int, num_classes: int, img_size: int, seed: int, split: str, noise: float,
                 mean: list[float], std: list[float]):
        self.size, self.num_classes, self.img_size = size, num_classes, img_size
        self.seed, self.split, self.noise = seed, split, noise
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = index % self.num_classes
        img = render(index, label, self.num_classes, self.img_size, self.seed, self.split, self.noise)
        return (img - self.mean) / self.std, label


class SyntheticDataModule(ImageDataModule):
    """The default data set: deterministic procedural shapes, ``num_classes`` classes, any image size."""

    def __init__(self, num_classes: int, img_size: int, train_size: int, val_size: int, seed: int,
                 noise: float, mean: list[float], std: list[float], holdout: float, loader: dict, augment: dict):
        super().__init__(num_classes=num_classes, img_size=img_size, loader=loader, holdout=holdout)
        if img_size < 8:
            raise ValueError(f"data.img_size={img_size}: the synthetic data set renders images of 8 px or more")
        self.train_size, self.val_size, self.seed, self.noise = train_size, val_size, seed, noise
        self.mean, self.std = mean, std
        if augment["auto_augment"] or augment["lighting"] or augment["re_prob"] or augment["num_repeats"] > 1:
            log.info("synthetic data: the recipe's augmentation (data.augment: auto_augment=%s, lighting=%s, re_prob=%s, "
                     "num_repeats=%s) is not applied; it takes effect with data=imagenet|cifar10|cifar100",
                     augment["auto_augment"], augment["lighting"], augment["re_prob"], augment["num_repeats"])

    def setup(self, stage: str | None = None) -> None:
        args = dict(num_classes=self.num_classes, img_size=self.img_size, seed=self.seed, noise=self.noise,
                    mean=self.mean, std=self.std)
        self.train_set = SyntheticImages(self.train_size, split="train", **args)
        self.val_set = SyntheticImages(self.val_size, split="val", **args)
