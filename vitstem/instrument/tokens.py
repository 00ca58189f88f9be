"""Token statistics (``callbacks.tokens``): patch-token diversity per block (raw and EMA weights) and attention
statistics per block on a fixed validation batch, once per epoch (:func:`vitstem.instrument.metrics.block_statistics`)."""
from __future__ import annotations

import lightning as L
import torch

from vitstem.instrument.metrics import block_statistics


class TokenStatistics(L.Callback):
    """Every ``every_n_epochs`` epochs, after validation: :func:`~vitstem.instrument.metrics.block_statistics` on
    the first ``num_images`` images of the first validation batch (fixed: validation data are not shuffled), for
    the raw weights (``diversity/*``, ``attention/*``) and the EMA (``diversity_ema/*``). Global rank 0 only."""

    def __init__(self, num_images: int, every_n_epochs: int):
        self.num_images, self.every_n_epochs = int(num_images), int(every_n_epochs)
        self.last: dict[str, float] = {}
        self._batch: torch.Tensor | None = None

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self._batch is None and batch_idx == 0 and dataloader_idx == 0:
            self._batch = batch[0][:self.num_images].detach().clone()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if (trainer.sanity_checking or self._batch is None or not trainer.is_global_zero
                or getattr(pl_module, "diverged_at_step", None) is not None
                or (trainer.current_epoch + 1) % self.every_n_epochs):
            return
        precision = trainer.precision_plugin
        x = precision.convert_input(self._batch)
        with precision.forward_context():
            stats = block_statistics(pl_module.model, x)
            ema = getattr(pl_module, "ema", None)
            if ema is not None:
                stats |= {k.replace("diversity/", "diversity_ema/"): v
                          for k, v in block_statistics(ema.module, x, attention=False).items()}
        self.last = stats
        for key, value in stats.items():
            pl_module.log(key, value, rank_zero_only=True)

    def results(self) -> dict:
        def block(prefix):
            return {k[len(prefix):]: v for k, v in self.last.items() if k.startswith(prefix)} or None
        return {"diversity": block("diversity/"), "diversity_ema": block("diversity_ema/")}
