"""The ``data/augment`` config group: training augmentation shared by the CIFAR and ImageNet data modules.

One node, ``data.augment``, holds every augmentation switch (``conf/data/augment/*.yaml``):

- ``scale``: the area range of ImageNet's random-resized crop (CIFAR crops with ``data.padding``).
- ``hflip``: horizontal flip probability.
- ``auto_augment``: ``null``, an AutoAugment policy (``v0``, ``original``) or a RandAugment string
  (``rand-m9-mstd0.5-inc1``), built by timm (:mod:`timm.data.auto_augment`).
- ``color_jitter``: colour-jitter strength, or ``null`` (timm drops it when ``auto_augment`` is set).
- ``lighting``: AlexNet-style PCA lighting noise (Krizhevsky et al. 2012; pycls ``TRAIN.PCA_STD``, 0.1 in
  Xiao et al.'s recipe), :class:`Lighting`, added to the [0, 1] RGB image after the other augmentations and
  before normalisation, as pycls does.
- ``re_prob`` / ``re_mode``: random erasing (Zhong et al., 2017) probability and fill, timm's
  :class:`~timm.data.random_erasing.RandomErasing`.
- ``num_repeats``: repeated augmentation (Hoffer et al., 2020; Berman et al., 2019; the DeiT recipe):
  with ``num_repeats > 1`` the training loader samples with timm's
  :class:`~timm.data.distributed_sampler.RepeatAugSampler`, which shards over devices itself
  (:meth:`AugmentedDataModule.base_train_sampler`; made resumable like every training sampler). It sends the copies
  of an image to different devices; with fewer devices than repeats they would share a batch, which is refused.

The training transform is timm's (``timm.data.create_transform``); the data modules add their crop and the
normalisation (``data.mean`` / ``data.std``).
"""
from __future__ import annotations

import torch
from PIL import ImageOps
from timm.data import auto_augment, create_transform
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T

from vitstem.config import ConfigError
from vitstem.data.base import ImageDataModule


def posterize(img, bits_to_keep, **__):
    """timm's posterize, also for 0 bits (TF's "keep 0 MSB": a black image), which Pillow 13 refuses.

    timm 1.0's AutoAugment/RandAugment levels map to 0-8 bits; Pillow >= 13 raises for 0, so about 3% of
    AutoAugment ``v0`` calls crashed a run. Registered in timm's op table below, before any policy is built.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


for _name, _op in list(auto_augment.NAME_TO_OP.items()):
    if _op is auto_augment.posterize:
        auto_augment.NAME_TO_OP[_name] = posterize


class Lighting:
    """PCA lighting noise on a (3, H, W) RGB tensor in [0, 1]: adds ``V (alpha * lambda)`` to every pixel,
    ``alpha ~ N(0, std)`` per image, with the eigenvalues / eigenvectors of ImageNet's RGB covariance
    (Krizhevsky et al. 2012; the constants of fb.resnet.torch and pycls)."""

    on_batches = True  # also takes a (B, 3, H, W) batch: vitstem.data.transfer.SplitTransform may run it on the device
    EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
    EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])

    def __init__(self, std: float):
        self.std = std

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """One image (3, H, W), or a batch (B, 3, H, W) with an ``alpha`` per image (on the batch's device)."""
        if img.dim() == 4:
            alpha = torch.randn(img.shape[0], 3, device=img.device) * self.std
            shift = (alpha * self.EIGVAL.to(img.device)) @ self.EIGVEC.to(img.device).T
            return img + shift.to(img.dtype).view(-1, 3, 1, 1)
        alpha = torch.randn(3) * self.std
        return img + (self.EIGVEC @ (alpha * self.EIGVAL)).to(img.dtype).view(3, 1, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(std={self.std})"


def train_transform(img_size: int, augment: dict, primary: list | None = None, **kwargs) -> T.Compose:
    """``timm.data.create_transform(is_training=True)`` with the ``data.augment`` settings.

    ``primary`` replaces timm's random-resized crop and flip (CIFAR's pad-and-crop); auto-augment,
    colour jitter, normalisation and random erasing stay timm's, :class:`Lighting` goes between the tensor
    conversion and the normalisation. ``kwargs`` go to ``create_transform``.
    """
    for key in ("hflip", "re_prob"):
        if not 0 <= augment[key] <= 1:
            raise ConfigError(f"data.augment.{key}={augment[key]} must be a probability in [0, 1]")
    if augment["num_repeats"] < 1:
        raise ConfigError(f"data.augment.num_repeats={augment['num_repeats']} must be >= 1 (1 = no repeated augmentation)")
    args = dict(input_size=img_size, is_training=True, hflip=augment["hflip"], auto_augment=augment["auto_augment"],
                color_jitter=augment["color_jitter"], re_prob=augment["re_prob"], re_mode=augment["re_mode"],
                scale=tuple(augment["scale"]), **kwargs)
    try:
        timm_primary, secondary, final = create_transform(separate=True, **args)
    except (AssertionError, KeyError, ValueError) as e:
        raise ConfigError(f"data.augment.auto_augment={augment['auto_augment']!r}: timm cannot build it ({e!r}); use null, "
                          "an AutoAugment policy such as 'v0' or a RandAugment string such as 'rand-m9-mstd0.5-inc1'") from e
    final = list(final.transforms)
    if augment["lighting"]:
        final.insert(1, Lighting(augment["lighting"]))  # final = [to tensor, normalise, (random erasing)]
    primary = list(timm_primary.transforms) if primary is None else primary
    return T.Compose([*primary, *secondary.transforms, *final])


class AugmentedDataModule(ImageDataModule):
    """An :class:`ImageDataModule` with a ``data.augment`` node (repeated augmentation samples with timm's sampler)."""

    def __init__(self, num_classes: int, img_size: int, loader: dict, augment: dict, holdout: float):
        super().__init__(num_classes=num_classes, img_size=img_size, loader=loader, holdout=holdout)
        self.augment = dict(augment)

    def base_train_sampler(self, dataset: Dataset, world: int, rank: int) -> Sampler | None:
        """timm's ``RepeatAugSampler`` with ``num_repeats > 1`` (it shards over ranks itself)."""
        repeats = self.augment["num_repeats"]
        if repeats <= 1:
            return None
        if world < repeats:  # timm shards the copies over the devices: with fewer, one device gets them in a row
            raise ConfigError(f"data.augment.num_repeats={repeats} needs at least {repeats} devices (it has {world}): "
                              f"with fewer, copies of an image share a batch; train on {repeats} or more devices or "
                              "set data.augment.num_repeats=1")
        return RepeatAugSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                num_repeats=self.augment["num_repeats"])
