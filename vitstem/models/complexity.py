"""Model cost: parameters and multiply-adds, counted with torch's FLOP counter.

GMACs are counted as the papers count them (pycls "GF" = 10^9 multiply-adds): torch's
``FlopCounterMode`` reports 2 x MACs for matmuls and convs, so it is halved. Attention's two matmuls
(q.k and weights.v) are counted whether they run fused or not; point-wise ops (norms, activations,
softmax) are not, as in pycls. The model runs on the meta device, so even the largest model costs no
memory or time to count.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, img_size: int, in_chans: int = 3) -> int:
    """Multiply-adds of one forward pass of one image of ``img_size`` x ``img_size``."""
    device = next(model.parameters()).device
    x = torch.zeros(1, in_chans, img_size, img_size, device=device)
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    with counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


def stem_cost(model: nn.Module, img_size: int) -> tuple[int, int]:
    """(MACs, params) of a ViT's stem (``patch_embed``) alone."""
    stem = model.patch_embed
    device = next(stem.parameters()).device
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        stem(torch.zeros(1, 3, img_size, img_size, device=device))
    return counter.get_total_flops() // 2, count_params(stem)
