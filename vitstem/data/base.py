"""What every vitstem DataModule shares: the loader settings of the ``data/loader`` config group."""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from vitstem.data import transfer
from vitstem.data.sampler import ResumableSampler


class ImageDataModule(L.LightningDataModule):
    """Base DataModule: subclasses set ``train_set`` and ``val_set`` in ``setup``.

    ``loader`` holds the DataLoader settings (``batch_size`` per device, ``num_workers``,
    ``pin_memory``, ``persistent_workers``, ``prefetch_factor``, ``normalize_on_device``, ``seed``); ``auto`` settings
    follow the trainer's device and the job's CPUs (:mod:`vitstem.data.transfer`), resolved when the trainer is
    attached. ``train_transform`` / ``eval_transform`` are kept as :class:`~vitstem.data.transfer.SplitTransform`:
    with ``normalize_on_device`` they stop at uint8 and :meth:`on_after_batch_transfer` finishes on the device. The data module builds its
    own samplers and shards them over DDP ranks itself (the train app turns Lightning's
    ``use_distributed_sampler`` off): training draws from a :class:`ResumableSampler` (around
    :meth:`base_train_sampler`, which subclasses change for repeated augmentation), so that a resumed
    run sees the same batches as an uninterrupted one; validation is sharded without shuffling.

    ``holdout`` (``data.holdout``) keeps a fixed random share of the training images out of training (the
    same images whatever the run's seed): big_vision's ImageNet recipe trains on 99% and keeps 1% as minival.
    """

    train_set: Dataset
    val_set: Dataset

    def __init__(self, num_classes: int, img_size: int, loader: dict, holdout: float):
        super().__init__()
        self.num_classes, self.img_size, self.holdout = num_classes, img_size, holdout
        self._loader, self._auto, self._resolved_for = dict(loader), [k for k, v in loader.items() if v == "auto"], None

    @property
    def loader(self) -> dict:
        """The loader settings, ``auto`` ones resolved for the attached trainer's device (a CPU without one)."""
        strategy = getattr(self.trainer, "strategy", None)
        cuda = strategy is not None and strategy.root_device.type == "cuda"
        key = (cuda, getattr(self.trainer, "num_devices", 1))
        if self._resolved_for != key:
            resolved = transfer.resolve({k: "auto" for k in self._auto}, *key)
            self._loader.update(resolved)
            self._resolved_for = key
            uint8 = bool(self._loader.get("normalize_on_device"))
            for name in ("train_transform", "eval_transform"):
                t = getattr(self, name, None)
                if isinstance(t, transfer.SplitTransform):
                    t.uint8 = uint8 and t.splittable
        return self._loader

    def __setattr__(self, name, value):
        if name in ("train_transform", "eval_transform") and not isinstance(value, (transfer.SplitTransform, type(None))):
            value = transfer.SplitTransform(value)  # the same transform; uint8 output when the loader says so
        super().__setattr__(name, value)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """A uint8 batch (``normalize_on_device``) finished on the device: to floats, normalised (lighting, erasing)."""
        x, y = batch
        if isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
            x = (self.train_transform if self.trainer.training else self.eval_transform).finish(x)
        return x, y

    def cpu_collate(self, train: bool = True):
        """The collate function of a loader whose batches Lightning does not move (finishes uint8 on the CPU)."""
        transform = getattr(self, "train_transform" if train else "eval_transform", None)
        return transfer.FinishOnCPU(transform) if isinstance(transform, transfer.SplitTransform) else None

    @property
    def trained_set(self) -> Dataset:
        """The training images trained on: ``train_set`` less the ``holdout`` share."""
        if not self.holdout:
            return self.train_set
        if getattr(self, "_trained", (None,))[0] is not self.train_set:
            n = len(self.train_set)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
            kept = order[: n - round(self.holdout * n)].sort().values.tolist()
            self._trained = (self.train_set, Subset(self.train_set, kept))
        return self._trained[1]

    @property
    def batch_size(self) -> int:
        return self.loader["batch_size"]

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _dataloader(self, dataset: Dataset, train: bool, sampler: Sampler, generator=None) -> DataLoader:
        loader = self.loader
        workers = loader["num_workers"]
        extra = {}
        if workers > 0:
            extra = dict(persistent_workers=loader["persistent_workers"], prefetch_factor=loader["prefetch_factor"])
        return DataLoader(dataset, batch_size=loader["batch_size"], sampler=sampler, drop_last=train,
                          generator=generator, num_workers=workers, pin_memory=loader["pin_memory"], **extra)

    def base_train_sampler(self, dataset: Dataset, world: int, rank: int) -> Sampler | None:
        """The shuffling sampler of ``dataset`` to make resumable; None: torch's ``DistributedSampler``."""
        return None

    def train_dataloader(self) -> DataLoader:
        world, rank, dataset = *self._world(), self.trained_set
        sampler = ResumableSampler(dataset, seed=self.loader["seed"], num_replicas=world, rank=rank,
                                   base=self.base_train_sampler(dataset, world, rank))
        return self._dataloader(dataset, train=True, sampler=sampler, generator=sampler.generator)

    def sample_dataloader(self, num_images: int, seed: int) -> DataLoader:
        """``num_images`` random training images (a fixed draw for ``seed``), transformed as in training and
        split over the ranks: the data of statistics such as precise BatchNorm. Workers as in training, not kept.
        Every rank gets as many images (``num_images`` rounded down to a multiple of the ranks), so as many batches:
        under ``sync_batchnorm`` each forward is a collective that all ranks must make."""
        world, rank = self._world()
        dataset = self.trained_set
        num_images -= num_images % world
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_images]
        workers = self.loader["num_workers"]
        return DataLoader(Subset(dataset, order[rank::world].tolist()), batch_size=self.loader["batch_size"],
                          num_workers=workers, pin_memory=self.loader["pin_memory"], collate_fn=self.cpu_collate(),
                          **({"prefetch_factor": self.loader["prefetch_factor"]} if workers else {}))

    def val_dataloader(self) -> DataLoader:
        world, rank = self._world()
        sampler = DistributedSampler(self.val_set, num_replicas=world, rank=rank, shuffle=False)
        return self._dataloader(self.val_set, train=False, sampler=sampler)
