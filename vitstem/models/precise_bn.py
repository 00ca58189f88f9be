"""Precise BatchNorm statistics before each evaluation (pycls's ``BN.USE_PRECISE_STATS``)."""
from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.optim.swa_utils import update_bn


class PreciseBN(L.Callback):
    """Precise BatchNorm statistics (pycls ``BN.USE_PRECISE_STATS``, on in Xiao et al.'s recipe).

    Before each evaluation (not the sanity check) the running mean and variance of every BatchNorm in the
    model, and in its EMA copy, are recomputed as the average over ``num_images`` training images (transformed
    as in training, the same draw for both, a new draw each epoch) of the per-batch statistics, with torch's
    ``torch.optim.swa_utils.update_bn``; under DDP each rank takes its share of the images and the ranks'
    statistics are averaged. ``num_images: 0`` turns it off; a model without BatchNorm is left alone.
    """

    def __init__(self, num_images: int) -> None:
        if num_images < 0:
            raise ValueError(f"callbacks.precise_bn.num_images={num_images} must be >= 0 (0: off)")
        self.num_images = num_images

    def on_validation_start(self, trainer, pl_module) -> None:
        if not self.num_images or trainer.sanity_checking:
            return
        nets = [pl_module.model, *([pl_module.ema.module] if pl_module.ema is not None else [])]
        bns = [[m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] for net in nets]
        if not bns[0]:
            return
        for net, layers in zip(nets, bns):
            loader = trainer.datamodule.sample_dataloader(self.num_images, seed=trainer.current_epoch)
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                update_bn(loader, net, device=pl_module.device)
            for bn in layers:  # average over ranks (no-op on one process)
                bn.running_mean.copy_(trainer.strategy.reduce(bn.running_mean, reduce_op="mean"))
                bn.running_var.copy_(trainer.strategy.reduce(bn.running_var, reduce_op="mean"))
