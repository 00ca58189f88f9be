"""Attention layers (timm ``attn_layer``s): softmax and point-wise attention.

Point-wise attention, Wortsman et al. 2023 (arXiv 2309.08586), section 2: the attention weights are

    a_ij = L**(-alpha) * h(q_i . k_j / sqrt(d))

with ``h`` one of :data:`ACTIVATIONS` and ``L`` the sequence length. Here ``L`` counts every key a query
attends to: the patch tokens *and* the class token (and any register tokens), i.e. ``N`` in
``x.shape == (B, N, C)``. ``h = relu, alpha = 1`` is "ReLU attention", ``relu(q.k/sqrt(d)) / L``.
``activation="softmax"`` is the standard attention through torch's fused ``scaled_dot_product_attention``
(timm's own forward, unchanged).

qk-LayerNorm (LayerNorm over the head dimension of q and k) is timm's ``qk_norm``; the gate is timm's
``gated`` option: a projection of the block input, through a sigmoid, multiplied into the attention
output before the output projection.
"""
from __future__ import annotations

from functools import partialmethod

import torch
import torch.nn.functional as F
from timm.layers import Attention

ACTIVATIONS = {
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),
    "gelu": F.gelu,
    "softplus": F.softplus,
    "identity": lambda x: x,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
}


class ViTAttention(Attention):
    """timm's ``Attention`` with a choice of ``activation`` (``softmax`` or point-wise) and ``alpha``.

    Parameters and their names are timm's, so weights load either way.
    """

    def __init__(self, dim: int, num_heads: int = 8, *, activation: str = "softmax", alpha: float = 1.0,
                 gate: bool = False, **timm_kwargs):
        if activation != "softmax" and activation not in ACTIVATIONS:
            raise ValueError(f"attention activation={activation!r} is not one of {['softmax', *ACTIVATIONS]}")
        super().__init__(dim, num_heads, gated=gate, **timm_kwargs)
        self.activation, self.alpha = activation, float(alpha)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if self.activation == "softmax":
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None or is_causal:
            raise NotImplementedError("point-wise attention does not take a mask")
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        weights = ACTIVATIONS[self.activation]((q * self.scale) @ k.transpose(-2, -1)) * N ** -self.alpha
        x = (self.attn_drop(weights) @ v).transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


def attention_layer(**options) -> type[ViTAttention]:
    """A ``ViTAttention`` class with ``options`` bound: timm's ``attn_layer`` must be a class."""
    return type("ViTAttention", (ViTAttention,), {"__init__": partialmethod(ViTAttention.__init__, **options)})
