"""Attention layers (timm ``attn_layer``s): softmax and point-wise attention.

Point-wise attention, Wortsman et al. 2023 (arXiv 2309.08586), section 2: the attention weights are

    a_ij = L**(-alpha) * h(q_i . k_j / sqrt(d))

with ``h`` one of :data:`ACTIVATIONS` and ``L`` the sequence length. Here ``L`` counts every key a query
attends to: the patch tokens *and* the class token (and any register tokens), i.e. ``N`` in
``x.shape == (B, N, C)``; a model without a class token (``class_token: false, global_pool: avg``, big_vision's
``vit_i21k.py``) has ``L`` = patches. ``h = relu, alpha = 1`` is "ReLU attention", ``relu(q.k/sqrt(d)) / L``.
``activation="softmax"`` is timm's ``Attention`` unchanged (torch's fused ``scaled_dot_product_attention``).

qk-LayerNorm (LayerNorm over the head dimension of q and k) is timm's ``qk_norm``; the gate is timm's
``gated`` option: a projection of the block input, through a sigmoid, multiplied into the attention
output before the output projection. Both kinds script with ``torch.jit.script`` (``h`` is a module).

Memory: point-wise attention materialises its weights, B x H x N^2 values per block, and autograd keeps them
for the backward pass (fused softmax attention keeps none). For ``h`` = relu or identity, which commute with a
positive factor (``h(c x) = c h(x)``), ``L**-alpha`` is folded into q, so one N^2 tensor per block is kept (the
weights, which both h's backward and the weights.v matmul read) instead of two; other ``h`` keep two
(:data:`KEPT_MAPS`; :mod:`vitstem.models.memory` counts them).
"""
from __future__ import annotations

from functools import partialmethod

import torch
from torch import nn
from timm.layers import Attention


class ReLUSquared(nn.Module):
    """``relu(x) ** 2`` (Wortsman et al.'s ``relu2``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).square()


# h of a_ij = L**-alpha * h(q.k / sqrt(d)): modules, so that the attention scripts.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu2": ReLUSquared,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
    "relu6": nn.ReLU6,
    "sigmoid": nn.Sigmoid,
}


# h with h(c x) = c h(x) for c > 0: the length factor goes into q (one N^2 tensor kept per block, not two).
HOMOGENEOUS = ("relu", "identity")
# N^2 tensors per block that autograd keeps (softmax: none, fused kernel).
KEPT_MAPS = {"softmax": 0, **{a: 1 if a in HOMOGENEOUS else 2 for a in ACTIVATIONS}}


class ViTAttention(Attention):
    """timm's ``Attention`` with a choice of ``activation`` (``softmax`` or point-wise) and ``alpha``.

    With ``softmax`` the forward is timm's own; a point-wise ``activation`` builds a
    :class:`PointwiseAttention`. Parameters and their names are timm's, so weights load either way.
    """

    def __new__(cls, *args, activation: str = "softmax", **kwargs):
        if cls is ViTAttention and activation != "softmax":
            cls = PointwiseAttention
        return super().__new__(cls)

    def __init__(self, dim: int, num_heads: int = 8, *, activation: str = "softmax", alpha: float = 1.0,
                 gate: bool = False, **timm_kwargs):
        if activation != "softmax" and activation not in ACTIVATIONS:
            raise ValueError(f"attention activation={activation!r} is not one of {['softmax', *ACTIVATIONS]}")
        super().__init__(dim, num_heads, gated=gate, **timm_kwargs)
        self.activation, self.alpha = activation, float(alpha)


class PointwiseAttention(ViTAttention):
    """``a_ij = N**-alpha * h(q_i . k_j * scale)``, ``N`` the number of tokens (keys) in the sequence."""

    def __init__(self, dim: int, num_heads: int = 8, *, activation: str = "relu", **kwargs):
        super().__init__(dim, num_heads, activation=activation, **kwargs)
        self.act = ACTIVATIONS[activation]()
        self.fold = activation in HOMOGENEOUS

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("point-wise attention does not take a mask")
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        length = float(N) ** -self.alpha
        if self.fold:  # h(c x) = c h(x): autograd keeps one N^2 tensor, not h's output and its scaled copy
            weights = self.act((q * (self.scale * length)) @ k.transpose(-2, -1))
        else:
            weights = self.act((q * self.scale) @ k.transpose(-2, -1)) * length
        x = (self.attn_drop(weights) @ v).transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


def attention_layer(**options) -> type[ViTAttention]:
    """An attention class with ``options`` bound (timm's ``attn_layer`` must be a class): timm's softmax
    attention for ``activation: softmax``, else :class:`PointwiseAttention`."""
    base = ViTAttention if options.get("activation", "softmax") == "softmax" else PointwiseAttention
    return type(base.__name__, (base,), {"__init__": partialmethod(base.__init__, **options)})
