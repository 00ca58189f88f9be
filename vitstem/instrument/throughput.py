"""Throughput (``callbacks.throughput``): training images/s with and without data loading, and MFU."""
from __future__ import annotations

import logging
import time
from functools import partial

import lightning as L
import torch

from vitstem.instrument.metrics import compute_dtype, peak_flops, train_flops_per_image

log = logging.getLogger("vitstem")


class Throughput(L.Callback):
    """Training images per second (global: all devices), with and without data loading, and MFU.

    ``train/images_per_s``: images over the time of the training steps alone (from ``on_train_batch_start`` to
    ``on_train_batch_end``: forward, backward, optimizer; on a GPU timed with CUDA events, so no synchronisation
    per step). ``train/images_per_s_with_data``: images over the wall time of the training loop (data loading,
    logging and callbacks included; validation not; a GPU is synchronised once per epoch). The first batch of the
    run (warm-up, compilation) is left out. ``train/mfu``: model FLOPs utilisation, the training FLOPs per image
    (forward and backward, :func:`~vitstem.instrument.metrics.train_flops_per_image`) x images/s with data over
    the devices' peak: ``peak_flops`` per device if set, else :func:`~vitstem.instrument.metrics.peak_flops`
    (none on CPU: then not logged, null in ``results.json``). Logged at each epoch end.
    """

    def __init__(self, peak_flops: float | None):
        self.peak_flops = peak_flops
        self.images = 0
        self.step_s = self.wall_s = 0.0
        self.flops_per_image: int | None = None
        self.available: float | None = None
        self._world, self._cuda = 1, False
        self._first, self._mark, self._start, self._events = True, None, None, []

    def on_train_start(self, trainer, pl_module) -> None:
        device = trainer.strategy.root_device
        self._cuda = device.type == "cuda"
        self.available = self.peak_flops or peak_flops(device, compute_dtype(trainer.precision))
        hp = getattr(pl_module, "hparams", {})
        if {"model", "num_classes", "img_size"} <= set(hp):
            from vitstem.models.classifier import create_model

            try:
                self.flops_per_image = train_flops_per_image(
                    partial(create_model, hp["model"], hp["num_classes"], hp["img_size"]), hp["img_size"])
            except Exception as e:  # a model the FLOP counter cannot trace: no MFU
                log.warning("MFU not measured: counting the model's FLOPs failed (%s: %s)", type(e).__name__, e)

    def _now(self) -> float:
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._mark = None if self._first else self._now()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = self._now()
        if self._first:  # the run's first batch: left out
            self._first, self._mark = False, now
            return
        if self._cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((self._start, end))
        else:
            self.step_s += now - self._start
        if self._mark is not None:
            self.wall_s += now - self._mark
        self._mark = now
        self.images += len(batch[0]) * trainer.world_size

    def _close(self) -> None:
        """End a stretch of training (before validation, at the epoch end): the GPU's queued work is waited for."""
        if self._cuda:
            torch.cuda.synchronize()
            self.step_s += sum(start.elapsed_time(end) for start, end in self._events) / 1000
            self._events = []
        if self._mark is not None:
            self.wall_s += self._now() - self._mark
            self._mark = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._close()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and not self._first and trainer.state.fn == "fit":
            self._mark = self._now()  # validation inside an epoch: the loop resumes here

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._close()
        for key, value in self.metrics().items():
            if value is not None:
                pl_module.log(f"train/{key}", value, sync_dist=True)

    def metrics(self) -> dict:
        fast = self.images / self.step_s if self.step_s > 0 else None
        with_data = self.images / self.wall_s if self.wall_s > 0 else None
        mfu = None
        if with_data and self.flops_per_image and self.available:
            mfu = self.flops_per_image * with_data / (self.available * self._world)
        return {"images_per_s": fast, "images_per_s_with_data": with_data, "mfu": mfu}

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._world = trainer.world_size

    def results(self) -> dict:
        m = self.metrics()
        return {"train_images_per_s": m["images_per_s"], "train_images_per_s_with_data": m["images_per_s_with_data"],
                "train_flops_per_image": self.flops_per_image, "mfu": m["mfu"]}
