"""The LightningModule that trains any timm classifier (every vitstem model among them)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import hydra
import lightning as L
import timm
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

import vitstem.models  # noqa: F401  (registers the model zoo)
from vitstem.config import ConfigError
from vitstem.data.transfer import rank_cpus
from vitstem.models import memory
from vitstem.models.loss import init_head_bias
from vitstem.optim import build_optimizer, build_scheduler, fit_warmup, param_groups, warmup_steps

log = logging.getLogger("vitstem")


def create_model(model: dict, num_classes: int, img_size: int) -> nn.Module:
    """``timm.create_model(model["name"], **rest)`` at the data's classes and image size."""
    cfg = {**model, "num_classes": num_classes, "img_size": img_size}
    return timm.create_model(cfg.pop("name"), **cfg)


def ema_decay(ema: dict, total_steps: int) -> float:
    """The per-step EMA decay: ``ema.decay`` if set, else ``1 - 1 / (ema.horizon * total_steps)``.

    pycls (Xiao et al.) mixes ``alpha = EMA_ALPHA * batch / epochs`` of the weights in per step, a time
    constant of ``1 / (EMA_ALPHA * N)`` of the run for ``N`` training images; ``horizon`` states that
    fraction directly, so the same config averages over the same share of a 50- or a 400-epoch run.
    """
    if ema["decay"] is not None:
        return float(ema["decay"])
    return max(0.0, 1.0 - 1.0 / (ema["horizon"] * total_steps))


_WARNED: set[str] = set()


def warn_full_fp32(precision: str, matmul_precision: str, device: str) -> bool:
    """Say once per process when a GPU run computes in full fp32 (``32-true`` at ``matmul_precision=highest``): the
    precision default is ``32-true`` where the config saw no NVIDIA device file (a container without /dev/nvidia*),
    silently several times slower than bf16. Returns whether it warned."""
    if precision not in ("32-true", "32") or matmul_precision != "highest" or "fp32" in _WARNED:
        return False
    _WARNED.add("fp32")
    log.warning("this run trains in full fp32 on %s (trainer.precision=%s, matmul_precision=highest; the default is "
                "32-true where no /dev/nvidia* device file is seen): set trainer.precision=bf16-mixed, or "
                "matmul_precision=high for TF32", device, precision)
    return True


class EMA(ModelEmaV3):
    """timm's ``ModelEmaV3`` whose stochastic-rounding generator follows the copy's device.

    timm makes that generator (bf16 weights are rounded stochastically) on the device the model has when the EMA is
    built, the CPU here; Lightning then moves the module to the GPU (and ``trainer.precision=bf16-true`` makes the
    weights bf16), and the first update drew on CUDA with a CPU generator and crashed. Each move (``.to``,
    ``.cuda``, ``.bfloat16``) makes a new generator on the copy's device, seeded as timm seeds it.
    """

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        device = next(self.module.parameters()).device
        if getattr(self._sr_generator, "device", None) != device:
            self._sr_generator = torch.Generator(device=device).manual_seed(self.stochastic_rounding_seed)
        return out


class Classifier(L.LightningModule):
    """Image classification; logs loss, lr, top-1 / top-5 accuracy (percent).

    - ``loss`` (``conf/loss``, :mod:`vitstem.models.loss`): softmax or sigmoid cross-entropy, with label smoothing
      of hard labels and an optional initial head bias; validation reports the same loss.
    - ``mixup`` (``conf/mixup``): a ``timm.data.Mixup`` applied to each training batch (mixup or CutMix,
      Zhang et al. 2018 / Yun et al. 2019); the loss takes its soft targets, label smoothing included.
    - ``ema`` (``conf/ema``): a ``timm.utils.ModelEmaV3`` copy of the weights, updated after every
      optimizer step and evaluated beside the raw weights as ``val_ema/{loss,acc1,acc5}``. It averages the
      whole ``state_dict``, buffers included: the BatchNorm running statistics of a conv stem are EMA'd
      along with the weights, as pycls does (``ema.exclude_buffers=true`` copies them from the raw model
      instead). With ``ema.copy_during_warmup`` the EMA equals the weights until lr warm-up ends (pycls).
    - ``compile``: ``torch.compile`` the model (and its EMA) in place; parameter names do not change.

    Divergence (a non-finite loss, gradient or parameter) is found by
    :class:`~vitstem.instrument.callbacks.StabilityMonitor` without a host-device sync per step: it sets
    ``diverged_at_step`` and stops the run (``results.json``: ``"status": "diverged"``); from then on no best
    accuracy is recorded.
    """

    def __init__(self, model: dict, optimizer: dict, weight_decay: dict, scheduler: dict, loss: dict,
                 num_classes: int, img_size: int, mixup: dict | None = None, ema: dict | None = None,
                 compile: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(model, num_classes, img_size)
        loss = dict(loss)
        init_head_bias(self.model, loss.pop("head_bias_init"))
        self.criterion = hydra.utils.instantiate(loss)
        self.mixup = hydra.utils.instantiate(mixup, num_classes=num_classes) if mixup else None
        self.ema = None
        if ema:
            # Only validation_step calls the EMA, and Lightning runs validation in eval mode; the copy's mode
            # otherwise follows the module's (ModelEmaV3 sets eval, which Lightning would warn about).
            self.ema = EMA(self.model, exclude_buffers=ema["exclude_buffers"]).requires_grad_(False).train()
        prefixes = ("val", "val_ema") if self.ema else ("val",)
        self.acc1 = nn.ModuleDict({p: MulticlassAccuracy(num_classes, top_k=1, average="micro") for p in prefixes})
        self.acc5 = nn.ModuleDict({p: MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
                                   for p in prefixes})
        self.best_val_acc1: float | None = None
        self.best_val_ema_acc1: float | None = None
        self.diverged_at_step: int | None = None
        self.channels_last = False  # set in configure_model: a conv stem on a GPU
        self.param_rows: list[param_groups.ParamRow] = []

    def setup(self, stage: str) -> None:
        """Every rank: its torch threads capped at the CPUs it has (:func:`vitstem.data.transfer.rank_cpus`; not when
        ``OMP_NUM_THREADS`` is set); on a GPU, the memory check (:meth:`check_memory`)."""
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(rank_cpus(self.trainer.num_devices))
        if stage == "fit" and self.trainer.strategy.root_device.type == "cuda":
            device = self.trainer.strategy.root_device
            warn_full_fp32(str(self.trainer.precision), torch.get_float32_matmul_precision(), torch.cuda.get_device_name(device))
            if hasattr(self.trainer.datamodule, "batch_size"):  # a vitstem data module: the batch is known
                self.check_memory(torch.cuda.get_device_properties(device).total_memory, torch.cuda.get_device_name(device))

    def memory_estimate(self) -> memory.MemoryEstimate:
        """The estimated peak memory of one device in a training step at this run's settings (eager)."""
        trainer, hp = self.trainer, self.hparams
        return memory.estimate(lambda: create_model(hp.model, hp.num_classes, hp.img_size), trainer.datamodule.batch_size,
                               hp.img_size, str(trainer.precision), memory.optimizer_states(hp.optimizer),
                               ema=self.ema is not None, ddp=trainer.world_size > 1)

    def check_memory(self, total: int, device: str = "the device") -> memory.MemoryEstimate:
        """Before training: the estimate (:mod:`vitstem.models.memory`) against ``total`` bytes of device memory. A
        batch estimated not to fit is refused (with ``compile=true``, which keeps less, only warned about) with the
        per-device batch and accumulation that keep the global batch and fit; one that fits only tightly is warned about."""
        est = self.memory_estimate()
        accumulate = self.trainer.accumulate_grad_batches
        batch_key = f"data.loader.batch_size={est.batch}"
        if est.total <= total * (1 - memory.RESERVE):
            log.info("memory: estimated peak %.1f GB of %.1f GB on %s at %s", est.total / memory.GB, total / memory.GB,
                     device, batch_key)
            return est
        fit = memory.fit_batch(est, accumulate, total)
        advice = (f"use data.loader.batch_size={fit[0]} trainer.accumulate_grad_batches={fit[1]} (the same global batch)"
                  if fit else "not even one image fits: use a smaller model or image size")
        message = (f"{batch_key} needs about {est.total / memory.GB:.1f} GB per device (activations "
                   f"{est.activations / memory.GB:.1f} GB, of which point-wise attention maps "
                   f"{est.attention_maps_per_image * est.batch / memory.GB:.1f} GB), {device} has {total / memory.GB:.1f} GB: "
                   f"{advice}; the largest batch that fits is about {memory.largest_batch(est, total)}")
        if est.total > total and not self.hparams.compile:
            raise ConfigError(message)
        log.warning("memory: %s", message)
        return est

    def configure_model(self) -> None:
        """Before the strategy moves the module and wraps it in DDP (whose gradient buckets then see the final strides):
        channels-last for a conv stem on a GPU, and ``torch.compile``."""
        trainer = self._trainer
        if trainer is not None and self.wants_channels_last(trainer.strategy.root_device):
            self.channels_last = True
            for net in (self.model, self.ema.module if self.ema else None):
                if net is not None:
                    net.patch_embed.to(memory_format=torch.channels_last)
        if self.hparams.compile and self.model._compiled_call_impl is None:
            for m in (self.model, self.ema.module if self.ema else None):
                if m is not None:
                    m.compile()

    def wants_channels_last(self, device: torch.device) -> bool:
        """On a GPU, a conv stem (more than one conv) runs channels-last: cuDNN's fast layout for 3x3 convs with
        BatchNorm. The stem's weights and the input batch change layout; parameter names and values do not."""
        convs = [m for m in self.model.patch_embed.modules() if isinstance(m, nn.Conv2d)]
        return device.type == "cuda" and len(convs) > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """The input batch in the stem's memory layout (channels-last for a conv stem on a GPU)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = self._layout(x)
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        loss = self.criterion(self(x), y)  # non-finite: vitstem.instrument's StabilityMonitor stops the run
        self.log("train/loss", loss, prog_bar=True)
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:  # a float logged is a host-to-device copy,
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])  # so only when it is written
        return loss

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Lightning refuses to clip for a fused optimizer under mixed precision, since with fp16 it would clip
        scaled gradients; bf16 has no gradient scaler, so clip as in full precision."""
        if gradient_clip_val and optimizer.defaults.get("fused") and self.trainer.precision == "bf16-mixed":
            clip = {"value": torch.nn.utils.clip_grad_value_, "norm": torch.nn.utils.clip_grad_norm_}
            clip[gradient_clip_algorithm or "norm"](self.parameters(), gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # global_step counts completed steps, this one not yet
            self.ema.update(self.model, step=self.global_step + 1)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        x = self._layout(x)
        for prefix, net in (("val", self.model), ("val_ema", self.ema.module if self.ema else None)):
            if net is not None:
                logits = net(x)
                self.acc1[prefix].update(logits, y)
                self.acc5[prefix].update(logits, y)
                self.log(f"{prefix}/loss", self.criterion(logits, y), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        for prefix in self.acc1:
            acc1, acc5 = 100.0 * self.acc1[prefix].compute().item(), 100.0 * self.acc5[prefix].compute().item()
            self.acc1[prefix].reset(), self.acc5[prefix].reset()
            self.log(f"{prefix}/acc1", acc1, prog_bar=prefix == "val", sync_dist=True)  # compute() synced
            self.log(f"{prefix}/acc5", acc5, sync_dist=True)
            if not self.trainer.sanity_checking and self.diverged_at_step is None:
                best = f"best_{prefix}_acc1"
                setattr(self, best, acc1 if getattr(self, best) is None else max(getattr(self, best), acc1))

    _KEPT = ("best_val_acc1", "best_val_ema_acc1")  # carried across a resume in the checkpoint

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vitstem"] = {k: getattr(self, k) for k in self._KEPT}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for k, v in checkpoint.get("vitstem", {}).items():
            if k in self._KEPT:
                setattr(self, k, v)

    def configure_optimizers(self):
        trainer = self.trainer
        datamodule = trainer.datamodule
        global_batch = datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches
        try:
            steps = trainer.estimated_stepping_batches  # sets up the training data (a limit below one batch fails)
            if steps < 1:  # a run that trains nothing must not finish as if it had
                raise ValueError(f"the run would train 0 steps: {len(datamodule.trained_set)} training images make no "
                                 f"full batch of data.loader.batch_size={datamodule.batch_size} per device x "
                                 f"{trainer.world_size} devices (the last incomplete batch is dropped): use more "
                                 "training images or a smaller data.loader.batch_size")
            optimizer, self.param_rows = build_optimizer(self.model, self.hparams.optimizer,
                                                         self.hparams.weight_decay, global_batch)
            epochs = trainer.max_epochs
            steps_per_epoch = max(1, steps // epochs)
            schedule = fit_warmup(self.hparams.scheduler, steps_per_epoch, epochs)
            scheduler = build_scheduler(optimizer, schedule, steps_per_epoch, epochs)
        except (ValueError, MisconfigurationException) as e:  # bad data / optimizer / schedule setting: fail now
            raise ConfigError(str(e)) from e
        if self.ema is not None:
            ema = self.hparams.ema
            self.ema.decay = ema_decay(ema, steps_per_epoch * epochs)
            self.ema.update_after_step = warmup_steps(schedule, steps_per_epoch) if ema["copy_during_warmup"] else 0
        self._report_param_groups(Path(trainer.default_root_dir))
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _report_param_groups(self, run_dir: Path) -> None:
        """``param_groups.tsv`` (per parameter), ``param_groups.json`` (per group), a log table, the loggers."""
        if not self.trainer.is_global_zero:
            return
        summary = param_groups.summarize(self.param_rows)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "param_groups.tsv").write_text(param_groups.format_table(self.param_rows))
        (run_dir / "param_groups.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("optimizer parameter groups:\n%s", param_groups.format_summary(summary))
        for logger in self.loggers:
            logger.log_hyperparams({"param_groups": summary})
