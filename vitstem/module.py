"""The LightningModule that trains any timm classifier (every vitstem model among them)."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import timm
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from vitstem.config import ConfigError
import vitstem.models  # noqa: F401  (registers the model zoo)
from vitstem.optim import build_optimizer, build_scheduler, param_groups


def create_model(model: dict, num_classes: int, img_size: int) -> nn.Module:
    """``timm.create_model(model["name"], **rest)`` at the data's classes and image size."""
    cfg = {**model, "num_classes": num_classes, "img_size": img_size}
    return timm.create_model(cfg.pop("name"), **cfg)


class Classifier(L.LightningModule):
    """Image classification with cross-entropy; logs loss, lr, top-1 / top-5 accuracy (percent).

    A non-finite training loss stops the run cleanly: the step is skipped, ``diverged_at_step`` records
    it, and ``results.json`` says ``"status": "diverged"``.
    """

    def __init__(self, model: dict, optimizer: dict, weight_decay: dict, scheduler: dict, loss: dict,
                 num_classes: int, img_size: int):
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(model, num_classes, img_size)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=loss["label_smoothing"])
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
        self.best_val_acc1: float | None = None
        self.diverged_at_step: int | None = None
        self.param_rows: list[param_groups.ParamRow] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.criterion(self(x), y)
        if self.trainer.strategy.reduce_boolean_decision(not torch.isfinite(loss).item(), all=False):
            self.diverged_at_step = self.global_step
            self.trainer.should_stop = True
            return None
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_acc1.update(logits, y)
        self.val_acc5.update(logits, y)
        self.log("val/loss", self.criterion(logits, y), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        acc1, acc5 = 100.0 * self.val_acc1.compute().item(), 100.0 * self.val_acc5.compute().item()
        self.val_acc1.reset(), self.val_acc5.reset()
        self.log("val/acc1", acc1, prog_bar=True, sync_dist=True)  # equal on all ranks: compute() syncs
        self.log("val/acc5", acc5, sync_dist=True)
        if not self.trainer.sanity_checking:
            self.best_val_acc1 = acc1 if self.best_val_acc1 is None else max(self.best_val_acc1, acc1)

    def configure_optimizers(self):
        trainer = self.trainer
        global_batch = trainer.datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches
        try:
            optimizer, self.param_rows = build_optimizer(self.model, self.hparams.optimizer,
                                                         self.hparams.weight_decay, global_batch)
            epochs = trainer.max_epochs
            steps_per_epoch = max(1, trainer.estimated_stepping_batches // epochs)
            scheduler = build_scheduler(optimizer, self.hparams.scheduler, steps_per_epoch, epochs)
        except ValueError as e:  # a bad optimizer / weight_decay / scheduler setting: fail before step 0
            raise ConfigError(str(e)) from e
        Path(trainer.default_root_dir).mkdir(parents=True, exist_ok=True)
        (Path(trainer.default_root_dir) / "param_groups.tsv").write_text(param_groups.format_table(self.param_rows))
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
