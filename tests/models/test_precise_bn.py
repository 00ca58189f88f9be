"""Small callbacks: precise BatchNorm statistics."""
from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import vitstem  # noqa: F401
from vitstem.models.precise_bn import PreciseBN


class Images:
    """A data module stand-in: ``sample_dataloader`` over fixed random images (3 batches of 4)."""

    def __init__(self):
        self.x = torch.randn(12, 3, 16, 16) * 2 + 1

    def sample_dataloader(self, num_images, seed):
        return DataLoader(TensorDataset(self.x[:num_images], torch.zeros(num_images)), batch_size=4)


def trainer(data, sanity=False):
    strategy = SimpleNamespace(reduce=lambda t, reduce_op: t)
    return SimpleNamespace(sanity_checking=sanity, current_epoch=0, datamodule=data, strategy=strategy,
                           precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext))


def module(name):
    model = timm.create_model(name, img_size=16, depth=1, embed_dim=32, num_heads=2, num_classes=3)
    ema = SimpleNamespace(module=timm.create_model(name, img_size=16, depth=1, embed_dim=32, num_heads=2,
                                                   num_classes=3))
    return SimpleNamespace(model=model.eval(), ema=ema, device=torch.device("cpu"))


def test_precise_bn_is_the_mean_of_batch_statistics_for_model_and_ema():
    data, m = Images(), module("vit_c_32")
    PreciseBN(num_images=12).on_validation_start(trainer(data), m)
    for net in (m.model, m.ema.module):
        bn = next(x for x in net.modules() if isinstance(x, nn.BatchNorm2d))
        conv = net.patch_embed.proj[0]  # the first conv feeds the first BatchNorm
        with torch.no_grad():
            outs = [conv(data.x[i:i + 4]) for i in (0, 4, 8)]
        mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
        var = torch.stack([o.var((0, 2, 3), unbiased=True) for o in outs]).mean(0)
        assert torch.allclose(bn.running_mean, mean, atol=1e-5) and torch.allclose(bn.running_var, var, rtol=1e-4)
    assert not m.model.training  # the module's mode is restored


def test_precise_bn_off_in_sanity_check_and_a_no_op_without_batchnorm():
    data, m = Images(), module("vit_c_32")
    bn = next(x for x in m.model.modules() if isinstance(x, nn.BatchNorm2d))
    PreciseBN(num_images=12).on_validation_start(trainer(data, sanity=True), m)
    PreciseBN(num_images=0).on_validation_start(trainer(data), m)
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    p = module("vit_p_32")
    before = {k: v.clone() for k, v in p.model.state_dict().items()}
    PreciseBN(num_images=12).on_validation_start(trainer(data), p)
    assert all(torch.equal(before[k], v) for k, v in p.model.state_dict().items())
    with pytest.raises(ValueError, match="num_images=-1"):
        PreciseBN(num_images=-1)


def test_progress_bar_reads_the_metrics_every_n_steps_only(monkeypatch):
    """Reading the logged loss is a device sync: Lightning's bar does it every step, ours every N."""
    from lightning.pytorch.callbacks import RichProgressBar

    from vitstem.runs.progress import ProgressBar
    reads = []
    monkeypatch.setattr(RichProgressBar, "_update_metrics", lambda self, trainer, module: reads.append(1))
    monkeypatch.setattr(RichProgressBar, "on_train_batch_end",
                        lambda self, trainer, module, outputs, batch, i: self._update_metrics(trainer, module))
    bar = ProgressBar(metrics_every_n_steps=3)
    for i in range(7):
        bar.on_train_batch_end(None, None, None, None, i)
    assert len(reads) == 2  # after steps 3 and 6
    bar._update_metrics(None, None)  # epoch ends and validation: always
    assert len(reads) == 3
    with pytest.raises(ValueError, match="metrics_every_n_steps=0"):
        ProgressBar(metrics_every_n_steps=0)
