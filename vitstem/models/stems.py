"""Stems (timm ``embed_layer``s): patchify, convolutional and scaled-ReLU stems described as data.

A stem turns an image into a grid of tokens of width ``embed_dim`` with total stride ``patch_size``.
Every stem here is one class, :class:`ConvStem`, configured by a list of conv layers followed by a
projection conv to the embedding width; the named presets live in ``conf/model/stem/*.yaml``:

- ``patchify``: no layers, projection kernel = stride = patch size, with bias (ViT, Dosovitskiy et al.).
- ``conv_xiao_*``: Xiao et al. 2021 (arXiv 2106.14881), Table 1 / section 3: 3x3 convs (no bias), each
  followed by BatchNorm then ReLU, then a 1x1 conv with bias to width d; ``conv_xiao_4gf_s*``: Table 3.
- ``scaled_relu*``: for Wang et al. 2022 (arXiv 2109.03810). The paper states that the BatchNorm -> ReLU
  ("scaled ReLU") inside a conv stem is what stabilises training, and ablates its components and the
  stem's stride; it does not give the stem's layers (no code was released). The layers are *our reading*:
  VOLO's stem (timm ``volo.py`` ``PatchEmbed(stem_conv=True)``, as later code of the authors' group
  builds it): 7x7 stride-2 conv, two 3x3 convs, 64 channels, each with BN -> ReLU, then a projection
  conv with kernel = stride = patch/2. The ablation presets (no BN, no ReLU, neither, LayerNorm) are our
  reading of the components the paper studies.

Initialisation (``init``), applied by the stem after timm's ViT init:

- ``pycls_2021``: Xiao et al.'s code as first released, pycls commit d74b462 (7 July 2021,
  ``pycls/models/vit.py::init_weights_vit``), the paper's time: the 3x3 convs keep PyTorch's default
  init; the last 1x1 conv N(0, sqrt(2 / out_channels)), zero bias.
- ``pycls_2022``: pycls commit 8709e4f (14 March 2022, "Add VitConv configs"): the 3x3 convs
  N(0, sqrt(2 / out_channels)); the last 1x1 conv N(0, sqrt(1 / out_channels)), zero bias.

  Which of the two the paper's runs used is not stated. In both, a patchify conv is truncated-normal with
  std sqrt(1 / fan_in) (fan_in = in_channels x kernel^2; torch's bounds +-2 absolute) and zero bias, and
  BatchNorm keeps PyTorch's default. "out_channels" is the conv's output channels only, not x kernel^2.
  Verified with ``git show d74b462:pycls/models/vit.py`` and ``git show 8709e4f:...`` in
  facebookresearch/pycls. pycls's conv stem hard-codes kernel 3 for every conv but the last, so the
  Table 3 stems (2x2 ... 16x16 convs) were not in its code; here the 3x3 rule applies to every conv
  before the projection.
- ``torch``: PyTorch's default init for every layer of the stem, whatever the ViT's ``weight_init``
  (VOLO's code, which the ``scaled_relu`` stem follows, leaves its convs at PyTorch's default).
- ``timm``: the stem is left to timm's ViT init (``model.weight_init``): ``''`` keeps PyTorch's default
  (DeiT's code, timm's ViT of its time), ``jax`` gives convs lecun-normal weights and zero bias
  (big_vision's Flax default for the patch embedding, Wortsman et al.).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from functools import reduce

import torch
from torch import nn
from timm.layers import LayerNorm2d, PatchEmbed

NORM_LAYERS = {"batchnorm": nn.BatchNorm2d, "layernorm": LayerNorm2d, "none": None}
ACT_LAYERS = {"relu": nn.ReLU, "gelu": nn.GELU, "hardswish": nn.Hardswish, "none": None}
INITS = ("pycls_2021", "pycls_2022", "torch", "timm")


def _choice(table: dict, value: str, what: str) -> type[nn.Module] | None:
    if value not in table:
        raise ValueError(f"stem {what}={value!r} is not one of {sorted(table)}")
    return table[value]


def conv_norm_act(in_chs: int, out_chs: int, kernel: int, stride: int, norm: str, act: str, bias: bool,
                  padding: int, **dd) -> list[nn.Module]:
    """One conv, optionally followed by a norm and an activation (the Conv-Norm-Act unit of a stem)."""
    norm_layer, act_layer = _choice(NORM_LAYERS, norm, "norm"), _choice(ACT_LAYERS, act, "act")
    mods: list[nn.Module] = [nn.Conv2d(in_chs, out_chs, kernel, stride, padding, bias=bias, **dd)]
    if norm_layer is not None:
        mods.append(norm_layer(out_chs, **dd))
    if act_layer is not None:
        mods.append(act_layer(inplace=True) if act_layer is nn.ReLU else act_layer())
    return mods


def _side(size: int, convs: list[tuple[int, int, int]]) -> int:
    """The side of a ``size`` x ``size`` input after ``convs`` of (kernel, stride, padding)."""
    for kernel, stride, padding in convs:
        size = (size + 2 * padding - kernel) // stride + 1
    return size


def first_conv(layers: Sequence[dict], proj_norm: str = "none", proj_act: str = "none") -> str:
    """The name of a ViT's first conv (timm's ``first_conv``) when its stem is a :class:`ConvStem` with these
    settings: the projection alone is ``proj`` itself, else ``proj`` is a ``Sequential``."""
    return "patch_embed.proj" if not layers and proj_norm == "none" and proj_act == "none" else "patch_embed.proj.0"


class ConvStem(PatchEmbed):
    """A stem given as data: ``layers`` of (kernel, stride, channels[, padding, norm, act]) then a projection.

    Each layer is a ``kernel x kernel`` conv with ``padding`` (unset: ``(kernel - 1) // 2``) and no bias, then
    its ``norm`` and ``act`` (defaulting to the stem-wide ``norm`` and ``act``). The projection is a conv
    with ``proj_kernel`` and ``proj_stride`` (``None``: the stride still missing to reach
    ``patch_size``, i.e. kernel = stride as in a patchify stem) to ``embed_dim`` channels, with bias,
    optionally followed by ``proj_norm`` and ``proj_act`` (a patchify stem with BN+ReLU after it).

    Invariants, checked at construction: the strides multiply to ``patch_size``, ``img_size`` divides by
    ``patch_size``, and the convs (kernels, paddings) map ``img_size`` to ``img_size / patch_size`` tokens a
    side. Subclassing timm's ``PatchEmbed`` keeps its token grid bookkeeping and output formats; only
    ``proj`` is replaced.
    """
    __jit_unused_properties__ = ["projection"]  # torch.jit.script compiles forward only

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        layers: Sequence[dict] = (),
        norm: str = "batchnorm",
        act: str = "relu",
        proj_kernel: int | None = None,
        proj_stride: int | None = None,
        proj_norm: str = "none",
        proj_act: str = "none",
        init: str = "torch",
        bias: bool = True,
        device=None,
        dtype=None,
        **patch_embed_kwargs,
    ):
        layers = [dict(layer) for layer in layers]
        strides = [int(layer["stride"]) for layer in layers]
        layer_stride = reduce(lambda a, b: a * b, strides, 1)
        if proj_stride is None:
            if patch_size % layer_stride:
                raise ValueError(
                    f"stem layer strides {strides} multiply to {layer_stride}, which does not divide "
                    f"patch_size={patch_size}: the strides must multiply to the patch size")
            proj_stride = patch_size // layer_stride
        proj_kernel = proj_stride if proj_kernel is None else proj_kernel
        if layer_stride * proj_stride != patch_size:
            raise ValueError(
                f"stem strides {strides} and proj_stride={proj_stride} multiply to {layer_stride * proj_stride}, "
                f"not patch_size={patch_size}: change the strides or model.patch_size")
        if init not in INITS:
            raise ValueError(f"stem init={init!r} is not one of {INITS} (pycls_2021 / pycls_2022: pycls commits "
                             "d74b462 / 8709e4f; see vitstem/models/stems.py)")
        dd = dict(device=device, dtype=dtype)
        super().__init__(img_size, patch_size, in_chans, embed_dim, bias=bias, **dd, **patch_embed_kwargs)
        self.init = init
        mods: list[nn.Module] = []
        chs = in_chans
        for layer in layers:
            kernel = int(layer["kernel"])
            padding = int(layer.get("padding", (kernel - 1) // 2))
            mods += conv_norm_act(chs, int(layer["channels"]), kernel, int(layer["stride"]), layer.get("norm", norm),
                                  layer.get("act", act), bias=False, padding=padding, **dd)
            chs = int(layer["channels"])
        mods += conv_norm_act(chs, embed_dim, proj_kernel, proj_stride, proj_norm, proj_act, bias=bias, padding=0, **dd)
        convs = [(m.kernel_size[0], m.stride[0], m.padding[0]) for m in mods if isinstance(m, nn.Conv2d)]
        for size in (img_size,) if isinstance(img_size, int) else img_size:
            if size is not None and size % patch_size:
                raise ValueError(f"img_size={size} is not divisible by the stem's patch_size={patch_size}")
            if size is not None and _side(size, convs) != size // patch_size:
                raise ValueError(f"the stem's convs (kernel, stride, padding) {convs} map img_size={size} to "
                                 f"{_side(size, convs)} tokens a side, not {size // patch_size}: change a layer's "
                                 "padding or kernel, or proj_kernel")
        self.proj = mods[0] if len(mods) == 1 else nn.Sequential(*mods)
        self.init_weights()

    @property
    def projection(self) -> nn.Conv2d:
        """The conv that maps to the embedding width."""
        convs = [m for m in self.proj.modules() if isinstance(m, nn.Conv2d)]
        return convs[-1]

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise as ``self.init`` says (see module docstring); timm's ViT init calls this."""
        if self.init == "timm" or self.projection.weight.device.type == "meta":
            return
        for m in self.proj.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        if self.init == "torch":
            return
        *body, last = [m for m in self.proj.modules() if isinstance(m, nn.Conv2d)]
        if not body:  # patchify: the same in both pycls versions
            fan_in = last.in_channels * last.kernel_size[0] * last.kernel_size[1]
            nn.init.trunc_normal_(last.weight, std=math.sqrt(1.0 / fan_in))
        else:
            if self.init == "pycls_2022":
                for conv in body:
                    nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(2.0 / conv.out_channels))
            gain = 2.0 if self.init == "pycls_2021" else 1.0
            nn.init.normal_(last.weight, mean=0.0, std=math.sqrt(gain / last.out_channels))
        if last.bias is not None:
            nn.init.zeros_(last.bias)
