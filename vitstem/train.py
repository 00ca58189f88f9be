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

import logging
import sys
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from vitstem.callbacks import Throughput
from vitstem.config import ConfigError, validate
from vitstem.loggers import finish_wandb
from vitstem.models.complexity import count_params
from vitstem.module import Classifier
from vitstem.paths import CONF_DIR
from vitstem.results import make_results, write_results
from vitstem.scale import slurm
from vitstem.summary import print_summary

log = logging.getLogger("vitstem")
# Known-harmless notices: CSV metrics share the run directory with config.yaml by design.
warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, Classifier, L.Trainer]:
    """Everything a run needs, built (and so checked) before any compute starts."""
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    groups = {k: OmegaConf.to_container(cfg[k], resolve=True)
              for k in ("model", "optimizer", "weight_decay", "scheduler", "loss", "mixup", "ema")}
    module = Classifier(**groups, compile=cfg.compile, num_classes=datamodule.num_classes, img_size=datamodule.img_size)
    loggers = [hydra.utils.instantiate(c) for c in (cfg.logger or {}).values() if c is not None]
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    if not cfg.trainer.get("enable_progress_bar", True):  # one switch turns any progress bar off
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    # a data module that samples itself (repeated augmentation) must not be re-wrapped by Lightning under DDP
    own_sampler = {"use_distributed_sampler": False} if getattr(datamodule, "builds_sampler", False) else {}
    plugins = slurm.lightning_plugins()  # under submitit: its processes, and Lightning's SLURM requeue off
    trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers, callbacks=callbacks, default_root_dir=cfg.run_dir,
                                      **own_sampler, **({"plugins": plugins} if plugins else {}))
    return datamodule, module, trainer


def run(cfg: DictConfig) -> dict:
    """Train once as ``cfg`` says; always write ``results.json`` (also when the config is bad); return it."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    status, error, start = "failed", None, time.perf_counter()
    module = trainer = None
    global_batch = None
    try:
        try:
            validate(cfg)
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            L.seed_everything(cfg.seed, workers=True)
            torch.set_float32_matmul_precision(cfg.matmul_precision)
            datamodule, module, trainer = build(cfg)
        except (ValueError, InstantiationException) as e:  # report our own message, not Hydra's wrapper
            cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ else e
            raise ConfigError(str(cause)) from e
        global_batch = datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches
        log.info("run dir %s | model %s (%.2f M params) | global batch %d = %d per device x %d devices x %d "
                 "accumulated", run_dir, cfg.model.name, count_params(module.model) / 1e6, global_batch,
                 datamodule.batch_size, trainer.world_size, trainer.accumulate_grad_batches)
        slurm.stop_for_requeue(trainer)  # under submitit: its time-limit / preemption signal ends training early
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        status = "diverged" if module.diverged_at_step is not None else "finished"
        if slurm.requeue_pending() and trainer.global_step < trainer.estimated_stepping_batches:
            status, error = "failed", (f"stopped at step {trainer.global_step} for a time limit or preemption; "
                                       "submitit requeues the job")
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        results = collect(cfg, module, trainer, status, error, time.perf_counter() - start, global_batch)
        if trainer is None or trainer.is_global_zero:
            write_results(run_dir, results)
            print_summary(results)
        finish_wandb(failed=status == "failed")
    return results


def collect(cfg, module: Classifier | None, trainer: L.Trainer | None, status: str, error: str | None,
            wall: float, global_batch: int | None) -> dict:
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()} if trainer else {}
    throughput = next((c for c in trainer.callbacks if isinstance(c, Throughput)), None) if trainer else None
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return make_results(
        status, metrics.get("val/acc1"), module.best_val_acc1 if module else None,
        final_val_acc5=metrics.get("val/acc5"), final_train_loss=metrics.get("train/loss"),
        epochs=trainer.current_epoch if trainer else 0, steps=trainer.global_step if trainer else 0,
        wall_time_s=round(wall, 2), train_images_per_s=throughput.images_per_s if throughput else None,
        diverged_at_step=module.diverged_at_step if module else None, error=error, model=cfg.model.name,
        final_val_ema_acc1=metrics.get("val_ema/acc1"), best_val_ema_acc1=module.best_val_ema_acc1 if module else None,
        params_m=count_params(module.model) / 1e6 if module else None, global_batch_size=global_batch,
        overrides=overrides, run_dir=str(cfg.run_dir))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _main(cfg: DictConfig) -> None:
    try:
        results = run(cfg)
    except ConfigError as e:
        sys.exit(f"vitstem-train: configuration error: {e}")
    if results["status"] == "failed":  # stopped early for submitit's requeue signal: hand the job back to it
        slurm.requeue_if_signalled()


def main() -> None:
    slurm.require_launcher_plugin(sys.argv[1:])  # one line with the install command, not Hydra's search path
    _main()


if __name__ == "__main__":
    main()
