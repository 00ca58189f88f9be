"""Test callback: stop a training run at a chosen boundary, the way a user, a scheduler or a crash would."""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import lightning as L


class Killed(BaseException):
    """Ends an in-process run where SIGKILL would have (the run folder was copied as SIGKILL leaves it)."""


class StopAt(L.Callback):
    """At ``at`` do ``how``.

    ``at``: ``"step:<s>"`` (training step s + 1, before its forward: ``global_step == s``), ``"val:<e>"`` (the
    first batch of epoch e's validation) or ``"end"`` (after training, before ``results.json``).
    ``how``: a signal name sent to this process (``SIGTERM``, ``SIGINT``, ``SIGUSR1``; ``SIGKILL`` once the
    checkpoint being written is on disk), ``SIGINTx2`` (Ctrl-C twice in a row) or ``kill``: the run folder is copied to ``copy_to`` as it is on disk at that moment (what a
    SIGKILL leaves; a checkpoint being written is finished first) and the run ends with :class:`Killed`.
    """

    def __init__(self, at: str, how: str, copy_to: str | None = None):
        self.at, self.how, self.copy_to = at, how, copy_to
        self.done = False

    def _fire(self, trainer) -> None:
        if self.done:
            return
        self.done = True
        if self.how in ("kill", "SIGKILL"):  # after the checkpoint being written is on disk ("after it appears")
            from vitstem.runs.checkpoint import RunCheckpoint

            for callback in trainer.callbacks:
                if isinstance(callback, RunCheckpoint):
                    callback.wait()
        if self.how == "kill":
            shutil.copytree(trainer.default_root_dir, self.copy_to)
            (Path(self.copy_to) / "results.json").unlink(missing_ok=True)
            raise Killed(self.at)
        names = ["SIGINT", "SIGINT"] if self.how == "SIGINTx2" else [self.how]
        for name in names:
            os.kill(os.getpid(), getattr(signal, name))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        kind, _, value = self.at.partition(":")
        if kind == "step" and trainer.global_step == int(value):
            self._fire(trainer)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        kind, _, value = self.at.partition(":")
        if kind == "val" and not trainer.sanity_checking and trainer.current_epoch == int(value):
            self._fire(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.at == "end":
            self._fire(trainer)
