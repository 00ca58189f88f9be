"""The model zoo: every ``conf/model/*.yaml`` file is a timm model, registered under its file name.

A model is a name plus a config (timm's convention); the configs are data in ``conf/model/`` (pycls's
convention), so the Hydra ``model`` group and ``timm.create_model`` read the same numbers::

    import timm, vitstem
    model = timm.create_model("vit_c_4gf")                         # Xiao et al. ViT_C-4GF
    model = timm.create_model("vit_c_4gf", attention={"activation": "relu"})  # ... with ReLU attention

Every model is timm's ``VisionTransformer`` with a :class:`~vitstem.models.stems.ConvStem` as its
``embed_layer`` and a :class:`~vitstem.models.attention.ViTAttention` as its ``attn_layer``.
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from timm.models import VisionTransformer, register_model

from vitstem.models.attention import attention_layer
from vitstem.models.stems import ConvStem
from vitstem.paths import CONF_DIR

MODEL_DIR = CONF_DIR / "model"


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
            merged = {**merged, **own}
        elif isinstance(entry, dict):
            (group, option), = entry.items()
            merged[group] = _load(path.parent / group / f"{option}.yaml")
        else:  # another option of the same group, used as a base
            merged = {**merged, **_load(path.parent / f"{entry}.yaml")}
    if "_self_" not in raw.get("defaults", ["_self_"]):
        merged = {**merged, **own}
    return merged


def model_config(name: str) -> dict:
    """The full config of registered model ``name`` (its stem and attention included)."""
    return _load(MODEL_DIR / f"{name}.yaml")


def stem_config(name: str) -> dict:
    return _load(MODEL_DIR / "stem" / f"{name}.yaml")


def attention_config(name: str) -> dict:
    return _load(MODEL_DIR / "attention" / f"{name}.yaml")


def build_vit(stem: dict, attention: dict, **vit_kwargs: Any) -> VisionTransformer:
    """timm's ``VisionTransformer`` with our stem and attention; ``vit_kwargs`` go to it unchanged."""
    attention = dict(attention)
    qk_norm = attention.pop("qk_norm", False)
    return VisionTransformer(
        embed_layer=partial(ConvStem, **stem),
        attn_layer=attention_layer(**attention),
        qk_norm=qk_norm,
        **vit_kwargs,
    )


def _merge(base: dict, overrides: dict) -> dict:
    """``overrides`` over ``base``; a nested dict (stem, attention) is merged key by key."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def _register(name: str) -> None:
    def entrypoint(pretrained: bool = False, **overrides: Any) -> VisionTransformer:
        if pretrained:
            raise ValueError(f"{name}: vitstem models have no pretrained weights; train one with vitstem-train")
        overrides.pop("pretrained_cfg", None), overrides.pop("pretrained_cfg_overlay", None)
        overrides.pop("cache_dir", None)
        return build_vit(**_merge(model_config(name), overrides))

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"vitstem model {name}, config in conf/model/{name}.yaml"
    setattr(sys.modules[__name__], name, entrypoint)
    register_model(entrypoint)


MODEL_NAMES = sorted(p.stem for p in MODEL_DIR.glob("*.yaml"))
STEM_NAMES = sorted(p.stem for p in (MODEL_DIR / "stem").glob("*.yaml"))
ATTENTION_NAMES = sorted(p.stem for p in (MODEL_DIR / "attention").glob("*.yaml"))
for _name in MODEL_NAMES:
    _register(_name)
