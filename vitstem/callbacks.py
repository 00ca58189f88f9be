"""Small Lightning callbacks that no library provides in the form vitstem needs."""
from __future__ import annotations

import time

import lightning as L


class Throughput(L.Callback):
    """Training images per second (global: all devices), timed over training batches only.

    The first batch of the run (warm-up, compilation) is left out. Logs ``train/images_per_s`` at the
    end of every epoch; ``images_per_s`` is the whole run's figure for ``results.json``.
    """

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._start = 0.0
        self._batches = 0

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batches += 1
        if self._batches > 1:
            self.seconds += time.perf_counter() - self._start
            self.images += len(batch[0]) * trainer.world_size

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.images_per_s is not None:
            pl_module.log("train/images_per_s", self.images_per_s, sync_dist=True)
