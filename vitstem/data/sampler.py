"""The training sampler: an order that is a pure function of (seed, epoch, rank), resumable mid-epoch."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler


class ResumableSampler(Sampler[int]):
    """Wraps a sampler that has ``set_epoch`` (by default torch's ``DistributedSampler``) so that a run
    killed mid-epoch continues with exactly the samples it had not seen.

    - The order of epoch ``e`` on rank ``r`` depends only on ``(seed, e, r, world)``: torch's
      ``DistributedSampler`` shuffles with a generator seeded from ``seed + e`` and gives rank ``r`` every
      ``world``-th index (one process is rank 0 of 1). Lightning calls :meth:`set_epoch` before each epoch.
    - :meth:`start_at` makes the next iteration skip the first ``n`` indices once (the batches that the
      checkpoint's loop position says were trained already); ``len()`` stays the epoch's full length,
      which is what Lightning counts the restored position against.
    - ``generator`` (shared with the DataLoader) is reseeded from ``(seed, epoch)`` too, so the seeds of
      the loader's workers do not depend on how many epochs this process has run.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0,
                 base: Sampler | None = None):
        self.base = base if base is not None else DistributedSampler(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)
        self.generator.manual_seed(self.seed * 100_003 + epoch)

    def start_at(self, n: int) -> None:
        self._skip = max(0, int(n))

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        for i, index in enumerate(self.base):
            if i >= skip:
                yield index
