"""What every vitstem DataModule shares: the loader settings of the ``data/loader`` config group."""
from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from vitstem.data.sampler import ResumableSampler


class ImageDataModule(L.LightningDataModule):
    """Base DataModule: subclasses set ``train_set`` and ``val_set`` in ``setup``.

    ``loader`` holds the DataLoader settings (``batch_size`` per device, ``num_workers``,
    ``pin_memory``, ``persistent_workers``, ``prefetch_factor``, ``seed``). The data module builds its
    own samplers and shards them over DDP ranks itself (the train app turns Lightning's
    ``use_distributed_sampler`` off): training draws from a :class:`ResumableSampler` (around
    :meth:`base_train_sampler`, which subclasses change for repeated augmentation), so that a resumed
    run sees the same batches as an uninterrupted one; validation is sharded without shuffling.
    """

    train_set: Dataset
    val_set: Dataset

    def __init__(self, num_classes: int, img_size: int, loader: dict):
        super().__init__()
        self.num_classes, self.img_size = num_classes, img_size
        self.loader = dict(loader)

    @property
    def batch_size(self) -> int:
        return self.loader["batch_size"]

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _dataloader(self, dataset: Dataset, train: bool, sampler: Sampler, generator=None) -> DataLoader:
        workers = self.loader["num_workers"]
        extra = {}
        if workers > 0:
            extra = dict(persistent_workers=self.loader["persistent_workers"], prefetch_factor=self.loader["prefetch_factor"])
        return DataLoader(dataset, batch_size=self.loader["batch_size"], sampler=sampler, drop_last=train,
                          generator=generator, num_workers=workers, pin_memory=self.loader["pin_memory"], **extra)

    def base_train_sampler(self, world: int, rank: int) -> Sampler | None:
        """The shuffling sampler to make resumable; None: torch's ``DistributedSampler``."""
        return None

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        sampler = ResumableSampler(self.train_set, seed=self.loader["seed"], num_replicas=world, rank=rank,
                                   base=self.base_train_sampler(world, rank))
        return self._dataloader(self.train_set, train=True, sampler=sampler, generator=sampler.generator)

    def val_dataloader(self) -> DataLoader:
        world, rank = self._world()
        sampler = DistributedSampler(self.val_set, num_replicas=world, rank=rank, shuffle=False)
        return self._dataloader(self.val_set, train=False, sampler=sampler)
