"""``<run_dir>/checkpoints/last.ckpt``: written every N steps, at each epoch end and on SIGTERM / SIGUSR1,
and everything a resumed run needs to continue exactly where the checkpoint left off.

Lightning restores the model, optimizer, scheduler, EMA (a submodule) and loop position. This callback
adds what it does not:

- **Random state**: Python, NumPy and torch (CPU and CUDA) generators are saved with the checkpoint
  (as plain tensors and tuples, so the file stays loadable with ``torch.load(weights_only=True)``) and
  set again just before training resumes.
- **Data position**: training samples come from a :class:`~vitstem.data.sampler.ResumableSampler`, whose
  order is a function of (seed, epoch, rank). On resume the sampler is set to the checkpoint's epoch, told
  to skip the batches that epoch already trained, and the loader iterator is made again. This also
  sidesteps Lightning issue 20550 (a loader's own mid-epoch state is dropped when ``configure_optimizers``
  reads ``trainer.estimated_stepping_batches``, as ours does, because that builds the iterator before
  the checkpoint is restored).

A run killed with SIGKILL and started again therefore ends with the same metrics as one that was never
interrupted (with ``trainer.deterministic=true``), provided the data transforms are a function of the
sample index (the synthetic set); random augmentation restarts its per-worker streams at the resumed
batch. A signal (SIGTERM from a scheduler, SIGUSR1 from SLURM before the time limit) is acted on at the
next step boundary: the checkpoint is written and training stops with ``interrupted`` set. Ctrl-C
(SIGINT) does the same; pressed twice it stops at once. A diverged
run writes no further checkpoint, so ``last.ckpt`` holds the last good weights: before each save the stability
monitor's device-side record is read (:func:`vitstem.instrument.callbacks.diverged`), so weights that went
non-finite since its last regular read are never saved.
"""
from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vitstem.instrument.callbacks import diverged
from vitstem.runs.folder import LAST

log = logging.getLogger("vitstem")



def _safe_rng(states: dict) -> dict:
    """Lightning's RNG states with NumPy's array as a tensor (weights-only loadable)."""
    name, keys, pos, has_gauss, gauss = states["numpy"]
    return {**states, "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}


def _numpy_rng(states: dict) -> dict:
    name, keys, pos, has_gauss, gauss = states["numpy"]
    return {**states, "numpy": (name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)}


class RunCheckpoint(L.Callback):
    """Keeps ``dirpath/last.ckpt`` current; see the module docstring. ``every_n_steps: null`` saves only at
    epoch ends and on signals. ``signals`` are the names of the signals that save and stop the run."""

    def __init__(self, dirpath: str, every_n_steps: int | None = 100,
                 signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1", "SIGINT"),
                 sync_every: int = 10):
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.signals = tuple(signals)
        self.sync_every = sync_every  # under DDP the ranks agree on a signal every this many steps
        self.interrupted: str | None = None  # the signal that stopped the run
        # given (signum, the handler replaced), True to keep that handler for later (vitstem.scale.slurm)
        self.defer = None
        self._received: str | None = None
        self._previous: dict[int, object] = {}
        self._rng: dict | None = None

    @property
    def last(self) -> Path:
        return self.dirpath / LAST

    # signals -----------------------------------------------------------------------------------------
    def _handler(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT":
            if self._received == "SIGINT":  # pressed twice: stop now
                raise KeyboardInterrupt
            log.warning("Ctrl-C: writing a checkpoint after this step, then stopping (press again to stop at once)")
        self._received = name
        previous = self._previous.get(signum)
        if self.defer is not None and self.defer(signum, previous):  # e.g. submitit's requeue: after the save
            return
        if callable(previous) and previous is not signal.default_int_handler:  # chain: whatever was there
            previous(signum, frame)

    def setup(self, trainer, pl_module, stage: str) -> None:
        for name in self.signals:
            signum = getattr(signal, name)
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _stop_requested(self, trainer) -> str | None:
        received = self._received
        if getattr(trainer, "received_sigterm", False):  # Lightning's own SIGTERM flag: handled here instead,
            received = received or "SIGTERM"            # so that it stops after this checkpoint, not before it
            trainer._signal_connector.received_sigterm = False
        if trainer.world_size == 1:
            return received
        if trainer.global_step % self.sync_every:
            return None
        # the ranks agree on the signal (the highest number any rank received), so all stop at this step
        mine = torch.tensor(getattr(signal, received) if received else 0, device=trainer.strategy.root_device)
        signum = int(trainer.strategy.reduce(mine, reduce_op="max"))
        if signum and not received:  # another rank got it: act as if this one had (e.g. keep submitit's handler)
            self._received = received = signal.Signals(signum).name
            if self.defer is not None:
                self.defer(signum, self._previous.get(signum))
        return received

    # saving ------------------------------------------------------------------------------------------
    def save(self, trainer) -> None:
        """Write ``last.ckpt`` atomically (a temporary file, then a rename): a kill never leaves half a file."""
        tmp = self.dirpath / f".{LAST}.tmp"
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            os.replace(tmp, self.last)
        trainer.strategy.barrier("vitstem.save")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if getattr(pl_module, "diverged_at_step", None) is not None:
            return
        stop = self._stop_requested(trainer)
        if stop or (self.every_n_steps and trainer.global_step % self.every_n_steps == 0):
            if diverged(trainer):  # found just now: these weights may be non-finite; the monitor stops the run
                return
            self.save(trainer)
        if stop:
            self.interrupted = stop
            log.warning("%s: checkpoint written at step %d to %s; stopping (run the same command to resume)",
                        stop, trainer.global_step, self.last)
            trainer.should_stop = True

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):  # SIGTERM during validation: Lightning stops at once
            self.interrupted = self.interrupted or "SIGTERM"
            log.warning("SIGTERM: stopped before a checkpoint could be written; the last one is %s", self.last)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.interrupted and not diverged(trainer):
            self.save(trainer)

    def state_dict(self) -> dict:
        return {"rng": _safe_rng(_collect_rng_states())}

    def load_state_dict(self, state_dict: dict) -> None:
        self._rng = _numpy_rng(state_dict["rng"]) if "rng" in state_dict else None

    # resuming ----------------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.ckpt_path is None:
            return
        loop = trainer.fit_loop
        done = loop.epoch_loop.batch_progress.current.processed if loop.restarted_mid_epoch else 0
        sampler = getattr(trainer.train_dataloader, "sampler", None)
        if hasattr(sampler, "start_at"):
            sampler.set_epoch(trainer.current_epoch)
            sampler.start_at(done * trainer.train_dataloader.batch_size)
            iter(loop._data_fetcher)  # the iterator made before the restore saw the wrong position
        elif done:
            log.warning("the training loader cannot skip to batch %d of epoch %d; this epoch restarts its data",
                        done, trainer.current_epoch)
        if self._rng is not None:
            _set_rng_states(self._rng)
        log.info("resumed from %s at epoch %d, step %d (batch %d of the epoch)", trainer.ckpt_path,
                 trainer.current_epoch, trainer.global_step, done)
