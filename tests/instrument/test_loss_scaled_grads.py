"""16-mixed with a fused optimizer: the gradient norms logged are the true ones, not multiplied by the loss scale."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from tests.models.test_classifier import build_tiny
from vitstem.instrument.callbacks import StabilityMonitor
from vitstem.instrument.metrics import total_norm


@pytest.mark.parametrize("fused", [True, False])
def test_gradient_norms_are_unscaled(tmp_path, fused):
    """Lightning unscales before on_before_optimizer_step only for optimizers that do not unscale in their step; a fused
    AdamW's gradients are still x 1024 there (faked: Lightning refuses fp16 autocast on a CPU)."""
    _, module, _ = build_tiny([], tmp_path)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # the scaler's scale tensor exists once it has scaled a loss
    trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler), global_step=0)
    monitor = StabilityMonitor(every_n_steps=4, grad_spike_factor=10.0, loss_spike_factor=10.0, spike_window=8,
                               spike_warmup=2, max_spikes=5)
    monitor.on_train_start(trainer, module)
    params = [p for p in module.model.parameters() if p.requires_grad]
    for p in params:  # every true gradient entry 2
        p.grad = torch.full_like(p, 2.0 * 1024 if fused else 2.0)  # Lightning unscaled the non-fused ones already
    optimizer = torch.optim.AdamW(params, fused=fused)
    monitor.on_before_optimizer_step(trainer, module, optimizer)
    expected = 2.0 * math.sqrt(sum(p.numel() for p in params))
    assert total_norm(monitor._grad.numpy()) == pytest.approx(expected, rel=1e-6)
