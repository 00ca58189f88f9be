"""``vitstem-train``: one training run, composed by Hydra from ``conf/train.yaml``.

    vitstem-train                                     # the default: a small ViT on synthetic data, CPU
    vitstem-train model=vit_c_32 optimizer=sgd optimizer.lr=0.1
    vitstem-train experiment=xiao_c_4gf              # a paper's recipe (conf/experiment/)
    vitstem-train -m hydra/launcher=slurm seed=0,1   # every job of a multirun a SLURM job (vitstem.scale.slurm)
    vitstem-train --help | --cfg job                  # options | the composed config

Every run writes one directory (``run_dir``): ``config.yaml`` (resolved), ``metrics.csv``,
``param_groups.tsv`` / ``param_groups.json``, ``checkpoints/last.ckpt`` and ``results.json`` (see
:mod:`vitstem.results`; with an EMA it adds ``final_val_ema_acc1`` and ``best_val_ema_acc1``).
"""
from __future__ import annotations

import json
import logging
import sys
import time
import traceback
import warnings
from pathlib import Path

from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from vitstem.config import ConfigError, validate
from vitstem.instrument import RESULT_KEYS
from vitstem.paths import CONF_DIR
from vitstem.results import hparams, make_results, write_results
from vitstem.runs import folder
from vitstem.scale import ddp, slurm
from vitstem.summary import print_summary

if TYPE_CHECKING:
    import lightning as L

    from vitstem.module import Classifier
    from vitstem.runs.checkpoint import RunCheckpoint

# torch, timm and Lightning take seconds to import: they are imported where first needed, after the config has
# been checked, so that --help, --cfg job and a configuration error answer at once.

log = logging.getLogger("vitstem")
# Known-harmless notices: CSV metrics share the run directory with config.yaml by design.
warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def build(cfg: DictConfig, resume_step: int | None = None) -> tuple[L.LightningDataModule, Classifier, L.Trainer]:
    """Everything a run needs, built (and so checked) before any compute starts."""
    from lightning.pytorch.callbacks import ProgressBar

    from vitstem.instrument import callbacks as instrument
    from vitstem.loggers import CSVLogger
    from vitstem.module import Classifier

    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    groups = {k: OmegaConf.to_container(cfg[k], resolve=True)
              for k in ("model", "optimizer", "weight_decay", "scheduler", "loss", "mixup", "ema")}
    module = Classifier(**groups, compile=cfg.compile, num_classes=datamodule.num_classes, img_size=datamodule.img_size)
    loggers = [hydra.utils.instantiate(c) for c in (cfg.logger or {}).values() if c is not None]
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    if not cfg.trainer.get("enable_progress_bar", True):  # one switch turns any progress bar off
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    # the stability monitor first: a checkpoint written at a step must see that step's record
    callbacks.sort(key=lambda c: not isinstance(c, instrument.StabilityMonitor))
    if not any(isinstance(c, instrument.StabilityMonitor) for c in callbacks):
        log.warning("callbacks.stability is off: a run whose loss, gradients or weights go non-finite is not stopped")
    plugins = slurm.lightning_plugins()  # under submitit: its processes, and Lightning's SLURM requeue off
    trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers, callbacks=callbacks, default_root_dir=cfg.run_dir,
                                      **({"plugins": plugins} if plugins else {}))
    checkpointer = _checkpointer(trainer)
    if checkpointer is not None:  # submitit's requeue handler runs after the checkpoint, not inside the step
        checkpointer.signals = (*checkpointer.signals, *slurm.requeue_signals())
        checkpointer.defer = slurm.defer_requeue
    if resume_step is not None:  # continue metrics.csv: keep the rows logged before the checkpoint's step
        for logger in loggers:
            if isinstance(logger, CSVLogger):
                logger.resume_before(resume_step)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    ddp.adopt(trainer, overrides, str(cfg.run_dir), cfg.ckpt_path)
    return datamodule, module, trainer


def run(cfg: DictConfig) -> dict:
    """Train once as ``cfg`` says into its run folder and return ``results.json``'s record.

    Rank 0 first decides what the folder needs (:func:`vitstem.runs.folder.plan`): a finished run is not
    retrained, a checkpoint is resumed, a folder of other settings is refused. ``results.json`` is then
    always written, also when the config is bad or training fails.
    """
    resumed_from = None
    if not ddp.is_child():
        plan = folder.plan(cfg, Path(cfg.run_dir), retrain=cfg.retrain)
        if plan.action == "skip":
            log.info("%s already holds a %s run; not retrained (retrain=true trains again into a fresh folder)",
                     plan.run_dir, plan.previous["status"])
            print_summary(plan.previous)
            return plan.previous
        resumed_from = plan.ckpt_path if plan.action == "resume" else None
        with open_dict(cfg):
            cfg.run_dir, cfg.ckpt_path = str(plan.run_dir), resumed_from
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    status, error, start = "failed", None, time.perf_counter()
    module = trainer = None
    global_batch = None
    with ddp.job_environment():
        try:
            try:
                validate(cfg)
                (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
                import lightning as L
                import torch

                from vitstem.checkpoints import check_resumable, init_weights
                from vitstem.models.complexity import count_params

                L.seed_everything(cfg.seed, workers=True)
                torch.set_float32_matmul_precision(cfg.matmul_precision)
                resume_step = check_resumable(cfg.ckpt_path) if cfg.ckpt_path else None
                datamodule, module, trainer = build(cfg, resume_step)
                if cfg.init_from:
                    report = init_weights(module.model, cfg.init_from)
                    (run_dir / "init_from.json").write_text(json.dumps(report, indent=2))
            except (ValueError, InstantiationException) as e:  # report our own message, not Hydra's wrapper
                cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ else e
                raise ConfigError(str(cause)) from e
            global_batch = datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches
            log.info("run dir %s | model %s (%.2f M params) | global batch %d = %d per device x %d devices x %d "
                     "accumulated%s", run_dir, cfg.model.name, count_params(module.model) / 1e6, global_batch,
                     datamodule.batch_size, trainer.world_size, trainer.accumulate_grad_batches,
                     f" | resuming {cfg.ckpt_path}" if cfg.ckpt_path else "")
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
            status = "diverged" if module.diverged_at_step is not None else "finished"
            if status == "finished" and _checkpointer(trainer) and _checkpointer(trainer).interrupted:
                status, error = "interrupted", f"stopped by {_checkpointer(trainer).interrupted}"
        except KeyboardInterrupt:
            status, error = "interrupted", "KeyboardInterrupt"
            raise
        except BaseException as e:
            stopped = _checkpointer(trainer).interrupted if _checkpointer(trainer) else None
            if _sigterm(e) or stopped:  # e.g. Ctrl-C twice (Lightning turns it into SystemExit)
                status, error = "interrupted", f"stopped by {stopped or 'SIGTERM'}"
            else:
                error = ddp.launcher_failure(trainer) or f"{type(e).__name__}: {e}"
                if not isinstance(e, ConfigError) and (trainer is None or trainer.is_global_zero):
                    (run_dir / "traceback.txt").write_text(traceback.format_exc())
                raise
        finally:
            results = collect(cfg, module, trainer, status, error, time.perf_counter() - start, global_batch)
            results["resumed_from"] = resumed_from
            if trainer is None or trainer.is_global_zero:
                write_results(run_dir, results)
                print_summary(results)
            if "wandb" in sys.modules:  # no wandb run can be open if wandb was never imported
                from vitstem.loggers import finish_wandb
                finish_wandb(failed=status == "failed")
            ddp.join_ranks(trainer)
    if status == "interrupted":
        raise Interrupted(f"{error}; the checkpoint is {run_dir / 'checkpoints' / 'last.ckpt'}: "
                          "run the same command again to resume")
    return results


class Interrupted(Exception):
    """Training stopped on a signal after writing its checkpoint."""


def _sigterm(e: BaseException) -> bool:
    """Lightning's SIGTERMException (it can only come once Lightning is imported)."""
    exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return exceptions is not None and isinstance(e, exceptions.SIGTERMException)


def _checkpointer(trainer: L.Trainer | None) -> RunCheckpoint | None:
    if trainer is None:
        return None
    from vitstem.runs.checkpoint import RunCheckpoint
    return next((c for c in trainer.callbacks if isinstance(c, RunCheckpoint)), None)


def collect(cfg, module: Classifier | None, trainer: L.Trainer | None, status: str, error: str | None,
            wall: float, global_batch: int | None) -> dict:
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


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except ConfigError as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweeper records this job as failed and goes on to the next
        sys.exit(f"vitstem-train: configuration error: {e}")
    except Interrupted as e:
        slurm.requeue_if_signalled()  # under submitit, after a time-limit / preemption signal: requeue (rank 0)
        if ddp.is_child():  # a rank that stopped with the others: its own exit code, not a failure (scale.launcher)
            sys.exit(ddp.INTERRUPTED_EXIT)
        sys.exit(f"vitstem-train: interrupted: {e}")


def main() -> None:
    slurm.require_launcher_plugin(sys.argv[1:])  # one line with the install command, not Hydra's search path
    _main()


if __name__ == "__main__":
    main()
