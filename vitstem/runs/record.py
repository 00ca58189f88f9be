"""One attempt of a run, recorded whatever happens: status, error, ``results.json``, the summary, wandb, ranks.

:class:`RunRecord` is the run's life cycle as one context manager (lightning-hydra-template's ``task_wrapper``
does the same for its tasks): inside it the run is built and trained; on the way out, however it leaves
(finished, diverged, a bad config, an exception, Ctrl-C, a signal), ``results.json`` says how it ended,
the summary table is printed, the wandb run is closed, the ranks this process started are joined and the
folder's lock is released. A run stopped by a signal after its checkpoint raises :class:`Interrupted`.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from vitstem.config import ConfigError
from vitstem.instrument import RESULT_KEYS
from vitstem.runs import folder, lock
from vitstem.runs.results import ResultsError, hparams, make_results, print_summary, write_results
from vitstem.scale import ddp

if TYPE_CHECKING:
    import lightning as L

    from vitstem.models.classifier import Classifier
    from vitstem.runs.checkpoint import RunCheckpoint

log = logging.getLogger("vitstem")


class Interrupted(Exception):
    """Training stopped on a signal after writing its checkpoint."""


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """Checks and building: a bad value (a ValueError, also inside Hydra's instantiate) is a ConfigError."""
    try:
        yield
    except (ValueError, InstantiationException) as e:  # report our own message, not Hydra's wrapper
        cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ else e
        raise ConfigError(str(cause)) from e


class RunRecord:
    """``with RunRecord(cfg, plan) as record: ... record.built(module, trainer, global_batch) ...
    record.trained()``; ``record.results`` afterwards (see the module docstring)."""

    def __init__(self, cfg: DictConfig, plan: folder.Plan):
        self.cfg, self.plan, self.resumed_from = cfg, plan, cfg.ckpt_path
        self.run_dir = Path(cfg.run_dir)
        self.status, self.error = "failed", None
        self.module: Classifier | None = None
        self.trainer: L.Trainer | None = None
        self.global_batch: int | None = None
        self.results: dict | None = None

    def built(self, module: Classifier, trainer: L.Trainer, batch_size: int) -> None:
        """The run is built: say what is trained, where, and with which global batch."""
        from vitstem.models.complexity import count_params

        self.module, self.trainer = module, trainer
        self.global_batch = batch_size * trainer.world_size * trainer.accumulate_grad_batches
        log.info("run dir %s | model %s (%.2f M params) | global batch %d = %d per device x %d devices x %d "
                 "accumulated%s", self.run_dir, self.cfg.model.name, count_params(module.model) / 1e6,
                 self.global_batch, batch_size, trainer.world_size, trainer.accumulate_grad_batches,
                 f" | resuming {self.cfg.ckpt_path}" if self.cfg.ckpt_path else "")

    def trained(self) -> None:
        """After ``trainer.fit`` returned: finished, diverged, or interrupted by a signal it handled."""
        self.status = "diverged" if self.module.diverged_at_step is not None else "finished"
        run_checkpoint = checkpointer(self.trainer)
        if self.status == "finished" and run_checkpoint is not None and run_checkpoint.interrupted:
            self.status, self.error = "interrupted", f"stopped by {run_checkpoint.interrupted}"

    def __enter__(self) -> RunRecord:
        self.start = time.perf_counter()
        self._environment = ddp.job_environment()
        self._environment.__enter__()
        return self

    def __exit__(self, kind, e, tb) -> bool:
        swallow = False
        run_checkpoint = checkpointer(self.trainer)
        stopped = run_checkpoint.interrupted if run_checkpoint is not None else None
        if isinstance(e, KeyboardInterrupt):
            self.status, self.error = "interrupted", "KeyboardInterrupt"
        elif e is not None and (_sigterm(e) or stopped):  # Ctrl-C twice: Lightning's SystemExit after our stop
            self.status, self.error, swallow = "interrupted", f"stopped by {stopped or 'SIGTERM'}", True
        elif e is not None:
            self.error = _launcher_failure(self.trainer) or f"{type(e).__name__}: {e}"
            if isinstance(e, OSError) and e.errno in _FULL:
                self.error = f"cannot write {_written_file(e, tb) or 'in ' + str(self.run_dir)}: {e.strerror} (disk " \
                             "full or a file size limit?): free space and run the same command again to resume"
            if not isinstance(e, ConfigError) and self._rank_zero:
                with contextlib.suppress(OSError):
                    (self.run_dir / "traceback.txt").write_text("".join(traceback.format_exception(kind, e, tb)))
        try:
            self._write(failing=e is not None and not swallow)
        finally:
            self._environment.__exit__(None, None, None)
            folder.end(self.plan)
            if self.plan.locked:
                lock.release(self.run_dir)
        if isinstance(e, OSError) and e.errno in _FULL:
            raise ResultsError(self.error) from None  # one line, not a traceback
        if self.status == "interrupted" and (e is None or swallow):
            raise Interrupted(f"{self.error}; the checkpoint is {self.run_dir / 'checkpoints' / 'last.ckpt'}: "
                              "run the same command again to resume")
        return swallow

    @property
    def _rank_zero(self) -> bool:
        return self.trainer.is_global_zero if self.trainer is not None else folder.plans_here()

    def _write(self, failing: bool) -> None:
        try:
            self.results = collect(self.cfg, self.module, self.trainer, self.status, self.error,
                                   time.perf_counter() - self.start, self.global_batch)
            self.results["resumed_from"] = self.resumed_from
            if self._rank_zero:
                try:
                    write_results(self.run_dir, self.results)
                except ResultsError as e:
                    if not failing:
                        raise
                    log.error("%s", e)  # the run's own error is the one to report
                print_summary(self.results)
        finally:
            if "wandb" in sys.modules:  # no wandb run can be open if wandb was never imported
                from vitstem.runs.loggers import finish_wandb
                finish_wandb(failed=self.status == "failed")
            if self.trainer is not None:  # Lightning is imported already: the launcher module costs nothing more
                from vitstem.scale.launcher import join_ranks
                join_ranks(self.trainer)


def _launcher_failure(trainer) -> str | None:
    """Why a rank of this job died, if one did (none without a trainer)."""
    if trainer is None:
        return None
    from vitstem.scale.launcher import launcher_failure
    return launcher_failure(trainer)


_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _written_file(e: OSError, tb) -> str | None:
    """The file a failed write was writing: the error's own, else the innermost frame's ``filepath``-like local."""
    if e.filename:
        return str(e.filename)
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for name in ("filepath", "filename", "path", "urlpath", "metrics_file_path"):
            value = frame.f_locals.get(name)
            if isinstance(value, (str, Path)) and value:
                return str(value)
    return None


def _sigterm(e: BaseException) -> bool:
    """Lightning's SIGTERMException (it can only come once Lightning is imported)."""
    exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return exceptions is not None and isinstance(e, exceptions.SIGTERMException)


def checkpointer(trainer: L.Trainer | None) -> RunCheckpoint | None:
    if trainer is None:
        return None
    from vitstem.runs.checkpoint import RunCheckpoint
    return next((c for c in trainer.callbacks if isinstance(c, RunCheckpoint)), None)


def collect(cfg, module: Classifier | None, trainer: L.Trainer | None, status: str, error: str | None,
            wall: float, global_batch: int | None) -> dict:
    """``results.json``'s record of this attempt (:mod:`vitstem.runs.results` lists its keys)."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()} if trainer else {}
    if status == "diverged":  # validation of blown-up weights is not a result (best_* stay: measured before)
        metrics = {k: v for k, v in metrics.items() if not k.startswith(("val/", "val_ema/"))}
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    if trainer is not None:
        from vitstem.instrument.callbacks import results as instrument_results
        instrumented = instrument_results(trainer)
    else:
        instrumented = dict.fromkeys(RESULT_KEYS)
    params_m = None
    if module is not None:
        from vitstem.models.complexity import count_params
        params_m = count_params(module.model) / 1e6
    return make_results(
        status, metrics.get("val/acc1"), module.best_val_acc1 if module else None,
        final_val_acc5=metrics.get("val/acc5"), final_train_loss=metrics.get("train/loss"),
        epochs=trainer.current_epoch if trainer else 0, steps=trainer.global_step if trainer else 0,
        wall_time_s=round(wall, 2), **instrumented,
        diverged_at_step=module.diverged_at_step if module else None, error=error, model=cfg.model.name,
        final_val_ema_acc1=metrics.get("val_ema/acc1"), best_val_ema_acc1=module.best_val_ema_acc1 if module else None,
        params_m=params_m, global_batch_size=global_batch,
        overrides=overrides, run_dir=str(cfg.run_dir), hparams=hparams(cfg, choices, global_batch))
