"""The vitstem ViT: timm's ``VisionTransformer`` with a vitstem stem and attention, and an optional tanh
pre-logits ("representation") layer.

big_vision's ViT (``big_vision/models/vit.py``, ``rep_size``; ``configs/vit_i1k.py`` sets ``rep_size=True``,
i.e. width d) maps the pooled features through ``Dense(rep_size) -> tanh`` before the head; timm 1.0 dropped
that layer. ``rep_size: null`` (the default) leaves timm's model as it is; an int inserts
``rep = Sequential(fc: Linear(d, rep_size), act: Tanh)`` between the pooled (and ``fc_norm``-ed) features and
the head. Then ``head_hidden_size = rep_size`` (``forward_head(pre_logits=True)`` returns the tanh output),
``num_features`` stays ``d`` (the tokens of ``forward_features``), ``reset_classifier`` keeps the layer (a new
head reads ``rep_size`` features) and pruning the head for ``features_only`` removes it. In ``jax`` init mode
``rep.fc`` is lecun-normal with zero bias (Flax's ``Dense`` default, as big_vision leaves it; timm < 1.0 did
the same for its ``pre_logits``), otherwise it follows timm's init for linears.

The layer is named ``rep``, not ``pre_logits``: timm's ViT ``checkpoint_filter_fn`` drops every
``pre_logits`` tensor, which would lose ours when a checkpoint is loaded through timm.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from typing import List, Optional, Union

import torch
from timm.layers import lecun_normal_
from timm.models import VisionTransformer
from timm.models.vision_transformer import get_init_weights_vit
from torch import nn

from vitstem.models.attention import attention_layer
from vitstem.models.stems import ConvStem


class ViT(VisionTransformer):
    """timm's ``VisionTransformer`` with ``embed_layer=ConvStem(**stem)``, ``attn_layer`` from ``attention``
    and a tanh pre-logits layer of width ``rep_size`` (``None``: none); other keyword arguments are timm's."""

    def __init__(self, stem: dict, attention: dict, rep_size: Optional[int] = None, **timm_kwargs):
        if rep_size is not None and (isinstance(rep_size, bool) or not isinstance(rep_size, int) or rep_size < 1):
            raise ValueError(f"rep_size={rep_size!r} must be a positive int (the tanh pre-logits width, big_vision's "
                             "rep_size; the model width for rep_size=True) or null for none")
        attention = dict(attention)
        qk_norm = attention.pop("qk_norm", False)
        super().__init__(embed_layer=partial(ConvStem, **stem), attn_layer=attention_layer(**attention),
                         qk_norm=qk_norm, **timm_kwargs)
        self.rep_size = rep_size
        if rep_size is None:
            self.rep = nn.Identity()
            return
        dd = dict(device=timm_kwargs.get("device"), dtype=timm_kwargs.get("dtype"))
        self.rep = nn.Sequential(OrderedDict(fc=nn.Linear(self.embed_dim, rep_size, **dd), act=nn.Tanh()))
        self.head_hidden_size = rep_size
        self.head = nn.Linear(rep_size, self.num_classes, **dd) if self.num_classes > 0 else nn.Identity()
        self._init_head_and_rep(self.weight_init_mode)

    def _init_head_and_rep(self, mode: str) -> None:
        """The new head and ``rep.fc`` as timm's ``mode`` initialises a head and a linear (jax: big_vision's)."""
        if self.rep_size is None or mode == "reset" or self.rep.fc.weight.device.type == "meta":
            return
        head_bias = -math.log(self.num_classes) if "nlhb" in mode and self.num_classes > 0 else 0.0
        get_init_weights_vit(mode, head_bias)(self.head, name="head")
        with torch.no_grad():
            if mode.startswith("jax"):
                lecun_normal_(self.rep.fc.weight)
                nn.init.zeros_(self.rep.fc.bias)
            else:
                get_init_weights_vit(mode, head_bias)(self.rep.fc, name="rep.fc")

    def init_weights(self, mode: str = "", needs_reset: bool = True) -> None:
        super().init_weights(mode, needs_reset)
        if "rep" in self._modules:  # timm's __init__ calls this before the layer exists
            self._init_head_and_rep(mode or self.weight_init_mode)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        if self.head_hidden_size != self.embed_dim and num_classes > 0:  # the head reads the rep layer
            ref = self.rep.fc.weight
            self.head = nn.Linear(self.head_hidden_size, num_classes, device=ref.device, dtype=ref.dtype)

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        if prune_head:
            self.rep, self.head_hidden_size = nn.Identity(), self.embed_dim
        return super().prune_intermediate_layers(indices, prune_norm, prune_head)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        x = self.fc_norm(x)
        x = self.rep(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)
