"""The model zoo: every ``conf/model/*.yaml`` file is a timm model, registered under its file name.

A model is a name plus a config (timm's convention); the configs are data in ``conf/model/`` (pycls's
convention), so the Hydra ``model`` group and ``timm.create_model`` read the same numbers::

    import timm, vitstem
    model = timm.create_model("vit_c_4gf")                         # Xiao et al. ViT_C-4GF
    model = timm.create_model("vit_c_4gf", attention={"activation": "relu"})  # ... with ReLU attention
    backbone = timm.create_model("vit_c_4gf", features_only=True)  # last 3 blocks as NCHW maps
    model = timm.create_model("vit_p_18gf", pretrained=True, pretrained_cfg_overlay=dict(file="vit_b16.pth"))

Every model is a :class:`~vitstem.models.vit.ViT` (timm's ``VisionTransformer`` with a
:class:`~vitstem.models.stems.ConvStem` as its ``embed_layer`` and a
:class:`~vitstem.models.attention.ViTAttention` as its ``attn_layer``), built the way timm builds its own
ViTs: ``build_model_with_cfg`` with a pretrained config registered per model (``default_cfgs``), so
``features_only``, ``forward_intermediates``, ``resolve_data_config`` and local weight files work as for
timm's models. No vitstem model has published weights: ``pretrained=True`` needs a file.

The pretrained config holds what the model's data expects, read from ``conf/data/``: 32 px models are
CIFAR-sized (``cifar10.yaml``: its mean / std and interpolation, evaluated uncropped), the others
ImageNet models (``imagenet.yaml``: ``crop_pct``, ``interpolation``; timm's ImageNet mean / std, which
vitstem's ImageNet data module normalises with, as pycls does).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models.vision_transformer import checkpoint_filter_fn

from vitstem.models.stems import first_conv
from vitstem.models.vit import ViT
from vitstem.paths import CONF_DIR

MODEL_DIR = CONF_DIR / "model"
DATA_DIR = CONF_DIR / "data"
# The data set a model's input follows, by its image size (default: ImageNet).
DATA_FOR_IMG_SIZE = {32: "cifar10"}


def _deep_merge(base: dict, over: dict) -> dict:
    """``over`` over ``base``, dicts merged key by key (as Hydra composes a defaults list); lists replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _load(path: Path) -> dict:
    """Load one config file, resolving its Hydra defaults list (``group: option`` and ``_self_``)."""
    if not path.is_file():
        options = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ValueError(f"no config {path.parent.name}/{path.stem}: choose one of {options}")
    raw = OmegaConf.to_container(OmegaConf.load(path))
    merged: dict = {}
    own = {k: v for k, v in raw.items() if k != "defaults"}
    for entry in raw.get("defaults", ["_self_"]):
        if entry == "_self_":
            merged = _deep_merge(merged, own)
        elif isinstance(entry, dict):
            (group, option), = entry.items()
            merged = _deep_merge(merged, {group: _load(path.parent / group / f"{option}.yaml")})
        else:  # another option of the same group, used as a base
            merged = _deep_merge(merged, _load(path.parent / f"{entry}.yaml"))
    if "_self_" not in raw.get("defaults", ["_self_"]):
        merged = _deep_merge(merged, own)
    return merged


def model_config(name: str) -> dict:
    """The full config of registered model ``name`` (its stem and attention included)."""
    return _load(MODEL_DIR / f"{name}.yaml")


def stem_config(name: str) -> dict:
    return _load(MODEL_DIR / "stem" / f"{name}.yaml")


def attention_config(name: str) -> dict:
    return _load(MODEL_DIR / "attention" / f"{name}.yaml")


def build_vit(stem: dict, attention: dict, **vit_kwargs: Any) -> ViT:
    """A :class:`ViT` with our stem and attention; ``vit_kwargs`` go to timm's ``VisionTransformer``."""
    return ViT(stem=stem, attention=attention, **vit_kwargs)


def pretrained_cfg(cfg: dict) -> dict:
    """timm's pretrained config (``_cfg`` of timm's ViT) of a model config: input, data and layer names."""
    size = cfg["img_size"]
    data = OmegaConf.load(DATA_DIR / f"{DATA_FOR_IMG_SIZE.get(size, 'imagenet')}.yaml")
    stem = cfg["stem"]
    return dict(
        url="", num_classes=1000, input_size=(3, size, size), pool_size=None, fixed_input_size=True,
        crop_pct=float(data.get("crop_pct", 1.0)),  # CIFAR evaluates the whole image
        interpolation=str(data.interpolation),
        mean=tuple(data.get("mean", IMAGENET_DEFAULT_MEAN)), std=tuple(data.get("std", IMAGENET_DEFAULT_STD)),
        first_conv=first_conv(stem["layers"], stem["proj_norm"], stem["proj_act"]), classifier="head",
        license="apache-2.0")


def _merge(base: dict, overrides: dict) -> dict:
    """``overrides`` over ``base``; a nested dict (stem, attention) is merged key by key."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def filter_checkpoint(state_dict: dict, model: ViT) -> dict:
    """A timm ``state_dict`` or a vitstem-train checkpoint's model weights, through timm's ViT
    ``checkpoint_filter_fn`` (position embeddings resampled to the model's grid, and so on)."""
    from vitstem.runs.restore import model_weights  # its imports are heavy; loading weights is rare

    return checkpoint_filter_fn(model_weights(state_dict), model)


_WEIGHT_SOURCES = ("file", "state_dict", "url", "hf_hub_id")


def create(name: str, pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: dict | None = None,
           **overrides: Any) -> ViT:
    """Registered model ``name`` with ``overrides`` over its config, built by timm's ``build_model_with_cfg``."""
    cfg = _merge(model_config(name), overrides)
    overlay = dict(pretrained_cfg_overlay or {})  # this model's input size and first conv (overrides change them)
    size = cfg.get("img_size")
    if isinstance(size, int) or (isinstance(size, (tuple, list)) and len(size) == 2):
        overlay.setdefault("input_size", (cfg.get("in_chans", 3), *((size, size) if isinstance(size, int) else size)))
    if isinstance(cfg.get("stem"), dict):
        stem = {"proj_norm": "none", "proj_act": "none", **cfg["stem"]}
        overlay.setdefault("first_conv", first_conv(stem.get("layers", []), stem["proj_norm"], stem["proj_act"]))
    if pretrained and not any(getattr(resolve_pretrained_cfg(name, pretrained_cfg, overlay), k, None)
                              for k in _WEIGHT_SOURCES):
        raise ValueError(
            f"{name}: vitstem models have no published weights, so pretrained=True needs a local file: "
            f"timm.create_model({name!r}, pretrained=True, pretrained_cfg_overlay=dict(file='weights.pth')) with a "
            "timm state_dict or a vitstem-train checkpoint; or pretrained=False (train one with vitstem-train)")
    out_indices = cfg.pop("out_indices", 3)  # features_only: the last 3 blocks, as timm's ViTs
    return build_model_with_cfg(ViT, name, pretrained, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay,
                                pretrained_filter_fn=filter_checkpoint,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **cfg)


def _register(name: str) -> None:
    def entrypoint(pretrained: bool = False, **overrides: Any) -> ViT:
        return create(name, pretrained, **overrides)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"vitstem model {name}, config in conf/model/{name}.yaml"
    setattr(sys.modules[__name__], name, entrypoint)
    register_model(entrypoint)


MODEL_NAMES = sorted(p.stem for p in MODEL_DIR.glob("*.yaml"))
STEM_NAMES = sorted(p.stem for p in (MODEL_DIR / "stem").glob("*.yaml"))
ATTENTION_NAMES = sorted(p.stem for p in (MODEL_DIR / "attention").glob("*.yaml"))
# timm's register_model reads this module's default_cfgs: one pretrained config (no weights) per model
default_cfgs = generate_default_cfgs({name: pretrained_cfg(model_config(name)) for name in MODEL_NAMES})
for _name in MODEL_NAMES:
    _register(_name)
