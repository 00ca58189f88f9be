"""Weight-decay policies (conf/weight_decay/*.yaml) on a real vitstem model: ViT_C-4GF on the meta device."""
from __future__ import annotations

import pytest
import timm
import torch
from omegaconf import OmegaConf

import vitstem.models  # noqa: F401
from vitstem.optim import build_optimizer, param_groups
from vitstem.paths import CONF_DIR

LR, WD = 1e-3, 0.24

# Parameter names of vit_c_4gf: the conv stem is Conv-BN-ReLU x 4 (indices 0/1, 3/4, 6/7, 9/10), then a 1x1 conv (12).
STEM_CONV = ["patch_embed.proj.0.weight", "patch_embed.proj.9.weight", "patch_embed.proj.12.weight"]
STEM_BN = ["patch_embed.proj.1.weight", "patch_embed.proj.1.bias", "patch_embed.proj.10.weight", "patch_embed.proj.10.bias"]
TOKENS = ["cls_token", "pos_embed"]
KERNELS = ["blocks.0.attn.qkv.weight", "blocks.10.mlp.fc2.weight", "head.weight"]
ONE_D = ["blocks.0.attn.qkv.bias", "blocks.0.norm1.weight", "blocks.0.norm1.bias", "norm.weight",
         "head.bias", "patch_embed.proj.12.bias"]

# decayed names, per policy
EXPECTED = {
    "timm": STEM_CONV + KERNELS,
    "kernels": STEM_CONV + KERNELS,
    "pycls": STEM_CONV + KERNELS + TOKENS,
    "all": STEM_CONV + KERNELS + TOKENS + STEM_BN + ONE_D,
}
# (tensors, params) in the decay group: 50 kernels = 1,019,664 stem + 11 x 1,474,560 blocks + 384,000 head
DECAY_COUNTS = {"timm": (50, 17_623_824), "kernels": (50, 17_623_824), "pycls": (52, 17_699_856),
                "all": (152, 17_754_136)}


@pytest.fixture(scope="module")
def model():
    with torch.device("meta"):
        return timm.create_model("vit_c_4gf")


def policy(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "weight_decay" / f"{name}.yaml"))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_policy_places_parameters(model, name):
    rows = {r.name: r for r in param_groups.assign(model, LR, WD, **policy(name))}
    for n in STEM_CONV + STEM_BN + TOKENS + KERNELS + ONE_D:
        decayed = n in EXPECTED[name]
        assert rows[n].group == ("decay" if decayed else "no_decay"), (name, n)
        assert rows[n].weight_decay == (WD if decayed else 0.0)
        assert rows[n].lr == LR
    summary = param_groups.summarize(list(rows.values()))
    assert (summary["decay"]["tensors"], summary["decay"]["params"]) == DECAY_COUNTS[name]
    assert sum(s["params"] for s in summary.values()) == 17_754_136  # all parameters, once


def test_multipliers_first_match_wins(model):
    mults = [{"pattern": r"^patch_embed\.", "lr": 0.5, "wd": 2.0}, {"pattern": r"proj", "lr": 3.0}]
    rows = {r.name: r for r in param_groups.assign(model, LR, WD, **{**policy("timm"), "multipliers": mults})}
    stem_conv, stem_bn = rows["patch_embed.proj.0.weight"], rows["patch_embed.proj.1.weight"]
    assert (stem_conv.group, stem_conv.lr, stem_conv.weight_decay) == (r"decay[^patch_embed\.]", 0.5 * LR, 2.0 * WD)
    assert (stem_bn.group, stem_bn.lr, stem_bn.weight_decay) == (r"no_decay[^patch_embed\.]", 0.5 * LR, 0.0)
    attn_proj = rows["blocks.0.attn.proj.weight"]  # second entry: lr x3, wd x1
    assert (attn_proj.group, attn_proj.lr, attn_proj.weight_decay) == ("decay[proj]", 3.0 * LR, WD)
    assert (rows["head.weight"].group, rows["head.weight"].lr) == ("decay", LR)


def test_optimizer_groups_follow_the_table():
    model = timm.create_model("vit_c_32", num_classes=10)
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "optimizer" / "adamw.yaml"))
    cfg |= {"lr": 1e-3, "weight_decay": 0.24, "ref_batch_size": 2048}
    opt, rows = build_optimizer(model, cfg, policy("pycls"), global_batch_size=512)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"decay", "no_decay"}
    assert groups["decay"]["lr"] == groups["no_decay"]["lr"] == pytest.approx(2.5e-4)  # 1e-3 x 512 / 2048
    assert (groups["decay"]["weight_decay"], groups["no_decay"]["weight_decay"]) == (0.24, 0.0)
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert id(model.pos_embed) in ids["decay"] and id(model.patch_embed.proj[1].weight) in ids["no_decay"]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(rows) == len(list(model.parameters()))


def test_format_summary():
    rows = [param_groups.ParamRow("a", (3, 4), "decay", 1e-3, 0.1), param_groups.ParamRow("b", (4,), "no_decay", 1e-3, 0.0)]
    text = param_groups.format_summary(param_groups.summarize(rows))
    assert text.splitlines()[1].split() == ["decay", "1", "12", "0.001", "0.1"]
    assert text.splitlines()[2].split() == ["no_decay", "1", "4", "0.001", "0"]
