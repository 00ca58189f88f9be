"""The console's progress bar: Lightning's rich bar without a host-device synchronisation per step."""
from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar, reading the logged metrics only every ``metrics_every_n_steps`` steps.

    Lightning's bar reads ``trainer.progress_bar_metrics`` after every step, which turns the logged loss into
    a Python float: on a GPU a host-device synchronisation per step. The bar still advances every step; its
    loss shows the value of the last read (and every epoch end).
    """

    def __init__(self, metrics_every_n_steps: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if metrics_every_n_steps < 1:
            raise ValueError(f"callbacks.progress_bar.metrics_every_n_steps={metrics_every_n_steps} must be >= 1")
        self.metrics_every_n_steps = metrics_every_n_steps
        self._hold = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._hold = (batch_idx + 1) % self.metrics_every_n_steps != 0
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        finally:
            self._hold = False

    def _update_metrics(self, trainer, pl_module) -> None:
        if not self._hold:
            super()._update_metrics(trainer, pl_module)
