"""What every vitstem DataModule shares: the loader settings of the ``data/loader`` config group."""
from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset, Sampler


class ImageDataModule(L.LightningDataModule):
    """Base DataModule: subclasses set ``train_set`` and ``val_set`` in ``setup``.

    ``loader`` holds the DataLoader settings (``batch_size`` per device, ``num_workers``,
    ``pin_memory``, ``persistent_workers``, ``prefetch_factor``). Distributed sampling is left to
    Lightning, which wraps these loaders in a ``DistributedSampler`` under DDP, unless a subclass passes
    its own ``sampler`` (repeated augmentation, :mod:`vitstem.data.augment`).
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

    def _dataloader(self, dataset: Dataset, train: bool, sampler: Sampler | None = None) -> DataLoader:
        workers = self.loader["num_workers"]
        extra = {}
        if workers > 0:
            extra = dict(persistent_workers=self.loader["persistent_workers"], prefetch_factor=self.loader["prefetch_factor"])
        return DataLoader(dataset, batch_size=self.loader["batch_size"], shuffle=train and sampler is None,
                          sampler=sampler, drop_last=train,
                          num_workers=workers, pin_memory=self.loader["pin_memory"], **extra)

    def train_dataloader(self) -> DataLoader:
        return self._dataloader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._dataloader(self.val_set, train=False)
