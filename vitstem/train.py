"""``vitstem-train``: one training run, composed by Hydra from ``conf/train.yaml``.

    vitstem-train                                     # the default: a small ViT on synthetic data, CPU
    vitstem-train model=vit_c_32 optimizer=sgd optimizer.lr=0.1
    vitstem-train experiment=xiao_c_4gf              # a paper's recipe (conf/experiment/)
    vitstem-train -m hydra/launcher=slurm seed=0,1   # every job of a multirun a SLURM job (vitstem.scale.slurm)
    vitstem-train --help | --cfg job                  # options | the composed config

Every run writes one directory (``run_dir``): ``config.yaml`` (resolved), ``metrics.csv``,
``param_groups.tsv`` / ``param_groups.json``, ``checkpoints/last.ckpt`` and ``results.json`` (see
:mod:`vitstem.runs.results`; with an EMA it adds ``final_val_ema_acc1`` and ``best_val_ema_acc1``).
"""
from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from vitstem.config import ConfigError, DataError, validate
from vitstem.paths import CONF_DIR
from vitstem.runs import folder
from vitstem.runs.lock import FolderBusy
from vitstem.runs.record import Interrupted, RunRecord, checkpointer, config_errors
from vitstem.runs.results import ResultsError, print_summary
from vitstem.scale import ddp, slurm

if TYPE_CHECKING:
    import lightning as L

    from vitstem.models.classifier import Classifier

# torch, timm and Lightning take seconds to import: they are imported where first needed, after the config has
# been checked, so that --help, --cfg job and a configuration error answer at once.

log = logging.getLogger("vitstem")
# Known-harmless notices: CSV metrics share the run directory with config.yaml by design.
warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


MODULE_GROUPS = ("model", "optimizer", "weight_decay", "scheduler", "loss", "mixup", "ema")


def module_groups(cfg: DictConfig) -> dict:
    """The config groups :class:`~vitstem.models.classifier.Classifier` takes, as plain dicts (an empty or null
    ``mixup`` / ``ema``: none)."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if cfg[k] is not None else None for k in MODULE_GROUPS}


def build(cfg: DictConfig, resume_step: int | None = None) -> tuple[L.LightningDataModule, Classifier, L.Trainer]:
    """Everything a run needs, built (and so checked) before any compute starts."""
    from lightning.pytorch.callbacks import ProgressBar

    from vitstem.instrument import callbacks as instrument
    from vitstem.models.classifier import Classifier
    from vitstem.runs.loggers import CSVLogger
    from vitstem.scale import environments, launcher

    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    module = Classifier(**module_groups(cfg), compile=cfg.compile, num_classes=datamodule.num_classes,
                        img_size=datamodule.img_size)
    loggers = [hydra.utils.instantiate(c) for c in (cfg.logger or {}).values() if c is not None]
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    if not cfg.trainer.get("enable_progress_bar", True):  # one switch turns any progress bar off
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    # the stability monitor first: a checkpoint written at a step must see that step's record
    callbacks.sort(key=lambda c: not isinstance(c, instrument.StabilityMonitor))
    if not any(isinstance(c, instrument.StabilityMonitor) for c in callbacks):
        log.warning("callbacks.stability is off: a run whose loss, gradients or weights go non-finite is not stopped")
    plugins = environments.lightning_plugins()  # under submitit: its processes, and Lightning's SLURM requeue off
    trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers, callbacks=callbacks, default_root_dir=cfg.run_dir,
                                      **({"plugins": plugins} if plugins else {}))
    run_checkpoint = checkpointer(trainer)
    if run_checkpoint is not None:  # submitit's requeue handler runs after the checkpoint, not inside the step
        run_checkpoint.signals = (*run_checkpoint.signals, *slurm.requeue_signals())
        run_checkpoint.defer = slurm.defer_requeue
    if resume_step is not None:  # continue metrics.csv: keep the rows logged before the checkpoint's step
        for logger in loggers:
            if isinstance(logger, CSVLogger):
                logger.resume_before(resume_step)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    launcher.adopt(trainer, overrides, str(cfg.run_dir), cfg.ckpt_path)
    return datamodule, module, trainer


def run(cfg: DictConfig) -> dict:
    """Train once as ``cfg`` says into its run folder and return ``results.json``'s record.

    Plan (:func:`vitstem.runs.folder.decide`: rank 0 refuses a folder of other settings or one being written,
    skips a finished run, resumes a checkpoint), validate, build, fit; :class:`vitstem.runs.record.RunRecord`
    writes ``results.json`` whatever happens.
    """
    plan = folder.decide(cfg)
    if plan.action == "skip":
        log.info("%s already holds a %s run; not retrained (retrain=true trains again into a fresh folder)",
                 plan.run_dir, plan.previous["status"])
        print_summary(plan.previous)
        return plan.previous
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunRecord(cfg, plan) as record:
        with config_errors():
            validate(cfg)
            if folder.plans_here():
                (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            import lightning as L
            import torch

            from vitstem.runs.restore import check_resumable, check_same_model, init_weights

            L.seed_everything(cfg.seed, workers=True)
            torch.set_float32_matmul_precision(cfg.matmul_precision)
            resume_step = check_resumable(cfg.ckpt_path) if cfg.ckpt_path else None
            datamodule, module, trainer = build(cfg, resume_step)
            if cfg.ckpt_path:
                check_same_model(cfg.ckpt_path, module)
            if cfg.init_from:
                report = init_weights(module.model, cfg.init_from)
                (run_dir / "init_from.json").write_text(json.dumps(report, indent=2))
        record.built(module, trainer, datamodule.batch_size)  # logs what is trained, where, with which batch
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
        record.trained()
    return record.results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _main(cfg: DictConfig) -> None:
    if "lightning" in sys.modules:  # imported before vitstem (a script, a notebook): quieted now, with Hydra's logging
        from vitstem.console import quiet_lightning

        quiet_lightning()
    try:
        run(cfg)
    except ConfigError as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweeper records this job as failed and goes on to the next
        sys.exit(f"vitstem-train: configuration error: {e}")
    except DataError as e:  # a damaged shard or image met in training (all of it in traceback.txt)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        sys.exit(f"vitstem-train: data error: {e}")
    except (FolderBusy, ResultsError) as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # a busy job folder: another process trains it (the sweeper says so)
        sys.exit(f"vitstem-train: {e}")
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
