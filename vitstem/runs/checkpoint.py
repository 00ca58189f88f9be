"""``<run_dir>/checkpoints/last.ckpt``: written every ``every_n_minutes`` minutes (and/or every ``every_n_steps``
optimizer steps), at each epoch end and on SIGTERM / SIGUSR1 / SIGINT, with everything a resumed run needs to
continue exactly where the checkpoint left off.

Lightning restores the model, optimizer, scheduler, EMA (a submodule) and loop position. This callback
adds what it does not:

- **Random state**: Python, NumPy and torch (CPU and CUDA) generators are saved with the checkpoint
  (as plain tensors and tuples, so the file stays loadable with ``torch.load(weights_only=True)``) and
  set again just before training resumes. A checkpoint holding more CUDA generators than the resumed job
  sees (8 GPUs, resumed on 1) sets those that exist, with one warning.
- **Data position**: training samples come from a :class:`~vitstem.data.sampler.ResumableSampler`, whose
  order is a function of (seed, epoch, rank). On resume the sampler is set to the checkpoint's epoch, told
  to skip the batches that epoch already trained, and the loader iterator is made again. This also
  sidesteps Lightning issue 20550 (a loader's own mid-epoch state is dropped when ``configure_optimizers``
  reads ``trainer.estimated_stepping_batches``, as ours does, because that builds the iterator before
  the checkpoint is restored).
- **Logs**: ``metrics.csv`` is flushed before each checkpoint and the checkpoint records how many rows it
  held; a resumed run keeps exactly those rows (whatever the stopped attempt logged after its checkpoint
  is logged again, once). The last logged values (``final_*`` of ``results.json``) are kept too, for a run
  resumed from the checkpoint written after its last step.

**Where a checkpoint is taken.** Only at the boundaries Lightning resumes exactly from: after an optimizer
step's logging, inside an epoch (never between micro-batches of ``accumulate_grad_batches``, never right
after a validation inside an epoch), and at each epoch end after its validation. A save or a stop due at
an epoch's last step waits for that epoch's end (Lightning would resume a checkpoint from the last step
in the next epoch, skipping the validation and epoch-end hooks of the one before).

**Signals** only set a flag in the handler (no collective, no I/O). The flag is acted on at the next
boundary: the checkpoint is written and training stops, with no further validation, and ``results.json``
says ``interrupted``; running the same command resumes. Ctrl-C pressed twice stops at once (the last
checkpoint stays). Under DDP the ranks agree on a stop (and on a time-due save, by rank 0's clock) with one
all-reduce every ``sync_every`` steps and at epoch ends, outside any signal handler; Lightning's own SIGTERM
handling is switched off (its handler runs a broadcast inside the signal handler and forwards SIGTERM to the
ranks it started, and its loop broadcasts a flag and reads it to the host every step).

**Saving** copies the state to the CPU (the only part that blocks training) and writes it from a
background thread into a temporary file that is then renamed: a kill never leaves half a file, and
``last.ckpt`` is always a complete checkpoint. A diverged run writes no further checkpoint, so
``last.ckpt`` holds the last good weights: before each save the stability monitor's device-side record is
read (:func:`vitstem.instrument.callbacks.diverged`).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import OrderedDict
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states
from lightning.pytorch.loops.utilities import _is_max_limit_reached
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

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


def set_rng_states(states: dict) -> None:
    """Set Python's, NumPy's and torch's generators from :func:`_collect_rng_states`'s record. CUDA generators
    are set for the devices this process sees; more saved states than devices (a checkpoint from a node with
    more GPUs) are skipped with a warning, instead of torch's IndexError."""
    import random

    torch.set_rng_state(states["torch"])
    cuda = list(states.get("torch.cuda", []))
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(cuda) > visible:
        log.warning("the checkpoint holds %d CUDA random states, this process sees %d device(s): the first %d are "
                    "restored, the rest ignored", len(cuda), visible, visible)
    for index, state in enumerate(cuda[:visible]):
        torch.cuda.set_rng_state(state, index)
    np.random.set_state(states["numpy"])
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))


def _to_cpu(obj):
    """A copy of ``obj`` whose tensors are CPU copies (a snapshot that later training steps cannot change)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, _to_cpu(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class RunCheckpoint(L.Callback):
    """Keeps ``dirpath/last.ckpt`` current; see the module docstring.

    ``every_n_minutes``: a checkpoint at the first boundary after this many minutes since the last one (null:
    off). ``every_n_steps``: also every this many optimizer steps (null: off). Epoch ends and signals always
    save. ``signals``: the names of the signals that save and stop the run. ``sync_every``: under DDP, the
    ranks agree on a signal or a time-due save every this many optimizer steps (one all-reduce)."""

    def __init__(self, dirpath: str, every_n_minutes: float | None = 30.0, every_n_steps: int | None = None,
                 signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1", "SIGINT"), sync_every: int = 10):
        if every_n_minutes is not None and not every_n_minutes > 0:
            raise ValueError(f"callbacks.checkpoint.every_n_minutes={every_n_minutes} must be > 0 (null: off)")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"callbacks.checkpoint.every_n_steps={every_n_steps} must be >= 1 (null: off)")
        if sync_every < 1:
            raise ValueError(f"callbacks.checkpoint.sync_every={sync_every} must be >= 1")
        self.dirpath = Path(dirpath)
        self.every_n_minutes = every_n_minutes
        self.every_n_steps = every_n_steps
        self.signals = tuple(signals)
        self.sync_every = sync_every
        self.interrupted: str | None = None  # the signal that stopped the run
        # given (signum, the handler replaced), True to keep that handler for later (vitstem.scale.slurm)
        self.defer = None
        self._received: str | None = None
        self._previous: dict[int, object] = {}
        self._rng: dict | None = None
        self._metrics: dict[str, float] = {}      # the last logged values, restored on resume
        self._rows: int | None = None             # metrics.csv rows: held at the save / to keep on resume
        self._saved_at = time.monotonic()
        self._last_step: int | None = None
        self._pending = False                     # a save due at a step where none may be taken: at the next one
        self._validated = False                   # a validation ran inside the current step's loop iteration
        self._writer: threading.Thread | None = None
        self._loaded = self._restored = False     # a checkpoint's state was loaded / its logs restored
        self._write_error: BaseException | None = None

    @property
    def last(self) -> Path:
        return self.dirpath / LAST

    # signals -----------------------------------------------------------------------------------------
    def _handler(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT":
            if self._received == "SIGINT":  # pressed twice: stop now
                self.interrupted = "SIGINT twice (stopped at once; the last checkpoint is kept)"
                raise KeyboardInterrupt
            log.warning("Ctrl-C: writing a checkpoint after this step, then stopping (press again to stop at once)")
        self._received = self._received or name
        previous = self._previous.get(signum)
        if self.defer is not None and self.defer(signum, previous):  # e.g. submitit's requeue: after the save
            return
        if callable(previous) and previous is not signal.default_int_handler:  # chain: whatever was there
            previous(signum, frame)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        for name in self.signals:
            signum = getattr(signal, name)
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)
        # Lightning's SIGTERM handling off (see the module docstring): its handlers are installed after this
        # hook, so they are not installed at all; and its loop's per-step broadcast of the flag is a no-op
        trainer._signal_connector.register_signal_handlers = lambda: None
        loop = trainer.fit_loop.epoch_loop
        loop._broadcast_sigterm_tensor = lambda: None
        if not getattr(loop, "_vitstem_wrapped", False):  # the step boundary: after the step's logging
            original = loop.on_advance_end

            def on_advance_end(data_fetcher) -> None:
                original(data_fetcher)
                self._after_step(trainer)
            loop.on_advance_end, loop._vitstem_wrapped = on_advance_end, True

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.wait()
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _agree(self, trainer, time_check: bool = True) -> tuple[str | None, bool]:
        """(the signal to stop for, whether a time-due save is wanted), the same on every rank: under DDP with
        one all-reduce (call on every rank at the same point)."""
        due = bool(time_check and self.every_n_minutes and trainer.is_global_zero
                   and time.monotonic() - self._saved_at >= 60 * self.every_n_minutes)
        if trainer.world_size == 1:
            return self._received, due
        mine = torch.tensor([getattr(signal, self._received) if self._received else 0, int(due)],
                            device=trainer.strategy.root_device)
        signum, due = (int(v) for v in trainer.strategy.reduce(mine, reduce_op="max").tolist())
        if signum and not self._received:  # another rank got it: act as if this one had (e.g. keep submitit's)
            self._received = signal.Signals(signum).name
            if self.defer is not None:
                self.defer(signum, self._previous.get(signum))
        return (signal.Signals(signum).name if signum else None), bool(due)

    def _stop(self, trainer, name: str) -> None:
        self.interrupted = name
        log.warning("%s: checkpoint written at step %d to %s; stopping (run the same command to resume)",
                    name, trainer.global_step, self.last)
        trainer.should_stop = True

    # where checkpoints are taken ---------------------------------------------------------------------
    def on_validation_end(self, trainer, pl_module) -> None:
        self._validated = not trainer.sanity_checking

    def _after_step(self, trainer) -> None:
        """After an optimizer step's logging (and any validation that followed it): save if due, stop if asked."""
        loop = trainer.fit_loop.epoch_loop
        validated, self._validated = self._validated, False
        step = trainer.global_step
        if loop._should_accumulate() or step == self._last_step:  # between micro-batches: no optimizer step yet
            return
        self._last_step = step
        if getattr(trainer.lightning_module, "diverged_at_step", None) is not None or self.interrupted:
            return
        by_steps = bool(self.every_n_steps) and step % self.every_n_steps == 0
        if loop._num_ready_batches_reached() or validated:
            # the epoch end saves (and stops) after its validation; after a validation inside an epoch Lightning
            # would resume as if the step were not done yet: the next step saves instead
            self._pending = self._pending or by_steps
            return
        if trainer.world_size > 1 and not (by_steps or self._pending or step % self.sync_every == 0):
            return  # under DDP the ranks agree only every sync_every steps
        stop, by_time = self._agree(trainer)
        if stop or by_time or by_steps or self._pending:
            if diverged(trainer):  # found just now: these weights may be non-finite; the monitor stops the run
                return
            self.save(trainer)
        if stop:
            self._stop(trainer, stop)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.interrupted or getattr(pl_module, "diverged_at_step", None) is not None:
            return  # stopped inside the epoch: its checkpoint is the one to resume from
        stop, _ = self._agree(trainer, time_check=False)
        if diverged(trainer):
            return
        self.save(trainer)
        if stop:
            loop = trainer.fit_loop
            if _is_max_limit_reached(loop.epoch_progress.current.processed, loop.max_epochs) \
                    or _is_max_limit_reached(trainer.global_step, loop.max_steps):
                log.warning("%s at the end of training: nothing left to stop", stop)
            else:
                self._stop(trainer, stop)

    def on_train_end(self, trainer, pl_module) -> None:
        self.wait()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) and not self.interrupted:
            self.interrupted = "KeyboardInterrupt (the last checkpoint is kept)"
        try:
            self.wait()
        except OSError as e:  # the run's own error is the one to report
            log.error("%s", e)
        for signum, previous in self._previous.items():  # the handlers as before (SIGINT: Lightning ignores it
            if not (signum == signal.SIGINT and isinstance(exception, KeyboardInterrupt)):  # while shutting down)
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    # saving ------------------------------------------------------------------------------------------
    def save(self, trainer) -> None:
        """Write ``last.ckpt``: flush the CSV log, snapshot the state to the CPU, write it in the background
        into a temporary file and rename it (atomic: a kill never leaves half a file)."""
        from vitstem.runs.loggers import CSVLogger

        self.wait()  # one write at a time; the previous one is complete before its successor starts
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                self._rows = logger.flush()
        self._metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        self._saved_at = time.monotonic()
        self._pending = False
        tmp = self.dirpath / f".{LAST}.tmp"
        if type(trainer.strategy) not in (SingleDeviceStrategy, DDPStrategy):  # sharded states: Lightning's way
            trainer.save_checkpoint(tmp, weights_only=False)
            if trainer.is_global_zero:
                os.replace(tmp, self.last)
            trainer.strategy.barrier("vitstem.save")
            return
        if not trainer.is_global_zero:  # DDP: rank 0 holds every state there is to save
            return
        checkpoint = _to_cpu(trainer._checkpoint_connector.dump_checkpoint(weights_only=False))
        self._writer = threading.Thread(target=self._write, args=(checkpoint, tmp), name="vitstem-checkpoint")
        self._writer.start()

    def _write(self, checkpoint: dict, tmp: Path) -> None:
        try:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
            os.replace(tmp, self.last)
        except BaseException as e:  # noqa: BLE001  (raised in the training thread, at the next save or the end)
            e.vitstem_file = tmp  # the file the write was writing (torch.save's own error may not name it)
            self._write_error = e

    def wait(self) -> None:
        """Wait for the checkpoint being written; raise its error, if it failed."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._write_error is not None:
            error, self._write_error = self._write_error, None
            cause = error  # a full disk or a file size limit, maybe under torch.save's own RuntimeError
            while cause is not None and not (isinstance(cause, OSError) and cause.errno):
                cause = cause.__cause__ or cause.__context__
            if cause is not None:
                raise OSError(cause.errno, os.strerror(cause.errno), str(error.vitstem_file)) from error
            raise OSError(f"writing {self.last} failed: {type(error).__name__}: {error}") from error

    def state_dict(self) -> dict:
        state = {"rng": _safe_rng(_collect_rng_states()), "metrics": dict(self._metrics)}
        if self._rows is not None:
            state["metrics_csv_rows"] = self._rows
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._rng = _numpy_rng(state_dict["rng"]) if "rng" in state_dict else None
        self._metrics = dict(state_dict.get("metrics", {}))
        self._rows = state_dict.get("metrics_csv_rows")
        self._loaded, self._restored = True, False

    # resuming ----------------------------------------------------------------------------------------
    def _restore_logs(self, trainer) -> None:
        """metrics.csv cut to the rows the checkpoint held; the last logged values set again (what a run resumed
        from the checkpoint after its last step reports: Lightning then skips training, on_train_start included)."""
        from vitstem.runs.loggers import CSVLogger

        if trainer.ckpt_path is None or self._restored:
            return
        self._restored = True
        if self._rows is not None:
            for logger in trainer.loggers:
                if isinstance(logger, CSVLogger):
                    logger.keep_rows(self._rows)
        metrics = trainer._logger_connector._callback_metrics
        for key, value in self._metrics.items():
            metrics.setdefault(key, torch.tensor(value))

    def on_fit_start(self, trainer, pl_module) -> None:
        if self._loaded:  # the checkpoint's callback states are restored before this hook (DDP, one device)
            self._restore_logs(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        self._saved_at, self._last_step, self._pending = time.monotonic(), trainer.global_step, False
        if trainer.ckpt_path is None:
            return
        loop = trainer.fit_loop
        done = loop.epoch_loop.batch_progress.current.processed if loop.restarted_mid_epoch else 0
        if done >= trainer.num_training_batches:  # an older checkpoint from an epoch's last step: the next epoch
            log.warning("%s was written at the last step of an epoch, before its validation: that validation is "
                        "skipped", trainer.ckpt_path)
            done = 0
        sampler = getattr(trainer.train_dataloader, "sampler", None)
        if hasattr(sampler, "start_at"):
            sampler.set_epoch(trainer.current_epoch)
            sampler.start_at(done * trainer.train_dataloader.batch_size)
            iter(loop._data_fetcher)  # the iterator made before the restore saw the wrong position
        elif done:
            log.warning("the training loader cannot skip to batch %d of epoch %d; this epoch restarts its data",
                        done, trainer.current_epoch)
        if self._rng is not None:
            set_rng_states(self._rng)
        self._restore_logs(trainer)
        log.info("resumed from %s at epoch %d, step %d (batch %d of the epoch)", trainer.ckpt_path,
                 trainer.current_epoch, trainer.global_step, done)
