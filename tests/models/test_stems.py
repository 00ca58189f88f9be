"""Stems: the presets' exact layers, their invariants, and their initialisation."""
import math
from types import SimpleNamespace

import pytest
import timm
import torch
from torch import nn

from vitstem.models.complexity import stem_cost
from vitstem.models.stems import ConvStem
from vitstem.models.zoo import STEM_NAMES, stem_config


def convs(stem):
    return [m for m in stem.proj.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("size,channels,strides,width", [
    ("1gf", [24, 48, 96, 192], [2, 2, 2, 2], 192),
    ("4gf", [48, 96, 192, 384], [2, 2, 2, 2], 384),
    ("18gf", [64, 128, 128, 256, 256, 512], [2, 2, 1, 2, 1, 2], 768),
    ("36gf", [64, 128, 128, 256, 256, 512], [2, 2, 1, 2, 1, 2], 1024),
])
def test_xiao_stems_have_the_papers_layers(size, channels, strides, width):
    stem = ConvStem(224, 16, 3, width, **stem_config(f"conv_xiao_{size}"))
    *body, last = convs(stem)
    assert [c.out_channels for c in body] == channels and [c.stride[0] for c in body] == strides
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in body)
    assert (last.kernel_size, last.in_channels, last.out_channels, last.bias is not None) == ((1, 1), channels[-1], width, True)
    kinds = [type(m) for m in stem.proj]
    assert kinds[:3] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] and kinds[-1] is nn.Conv2d
    assert stem(torch.randn(1, 3, 224, 224)).shape == (1, 196, width)


# Xiao et al. 2021 Table 3 (papers.md): kernels, strides, padding, channels (the final 1x1 to 384 implied), stem MF.
# S1's printed channels give 389 M MACs, not its printed 422 (papers.md: the table is inconsistent there).
@pytest.mark.parametrize("name,kernels,strides,padding,channels,mmacs", [
    ("conv_xiao_4gf_s1", [3, 3, 3, 2], [2, 2, 2, 2], [1, 1, 1, 0], [42, 104, 208, 416], 389),
    ("conv_xiao_4gf_s2", [3, 3, 3, 4], [2, 2, 1, 4], [1, 1, 1, 0], [32, 64, 128, 256], 422),
    ("conv_xiao_4gf_s3", [3, 3, 3, 8], [2, 1, 1, 8], [1, 1, 1, 0], [17, 34, 68, 136], 458),
    ("conv_xiao_4gf_s4", [3, 3, 3, 16], [1, 1, 1, 16], [1, 1, 1, 0], [8, 16, 32, 64], 407),
])
def test_xiao_table3_stems_have_the_papers_layers(name, kernels, strides, padding, channels, mmacs):
    stem = ConvStem(224, 16, 3, 384, **stem_config(name))
    *body, last = convs(stem)
    assert [c.kernel_size[0] for c in body] == kernels and [c.stride[0] for c in body] == strides
    assert [c.padding[0] for c in body] == padding and [c.out_channels for c in body] == channels
    assert all(c.bias is None for c in body) and (last.kernel_size, last.out_channels) == ((1, 1), 384)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in stem.proj) == sum(isinstance(m, nn.ReLU) for m in stem.proj) == 4
    assert stem(torch.randn(1, 3, 224, 224)).shape == (1, 196, 384)
    assert round(stem_cost(SimpleNamespace(patch_embed=stem), 224)[0] / 1e6) == mmacs


def test_scaled_relu_stem_and_its_ablations():
    full = ConvStem(224, 16, 3, 384, **stem_config("scaled_relu"))
    assert [(c.kernel_size[0], c.stride[0], c.out_channels) for c in convs(full)] == \
        [(7, 2, 64), (3, 1, 64), (3, 1, 64), (8, 8, 384)]
    count = lambda stem, kind: sum(isinstance(m, kind) for m in stem.proj.modules())
    assert (count(full, nn.BatchNorm2d), count(full, nn.ReLU)) == (3, 3)
    no_bn = ConvStem(224, 16, 3, 384, **stem_config("scaled_relu_no_bn"))
    no_relu = ConvStem(224, 16, 3, 384, **stem_config("scaled_relu_no_relu"))
    neither = ConvStem(224, 16, 3, 384, **stem_config("scaled_relu_no_bn_relu"))
    ln = ConvStem(224, 16, 3, 384, **stem_config("scaled_relu_layernorm"))
    assert (count(no_bn, nn.BatchNorm2d), count(no_bn, nn.ReLU)) == (0, 3)
    assert (count(no_relu, nn.BatchNorm2d), count(no_relu, nn.ReLU)) == (3, 0)
    assert (count(neither, nn.BatchNorm2d), count(neither, nn.ReLU)) == (0, 0)
    assert (count(ln, nn.LayerNorm), count(ln, nn.BatchNorm2d)) == (3, 0)


def test_patchify_stems():
    p = ConvStem(224, 16, 3, 384, **stem_config("patchify"))
    assert isinstance(p.proj, nn.Conv2d) and p.proj.kernel_size == p.proj.stride == (16, 16)
    assert p.proj.bias is not None
    pbr = ConvStem(224, 16, 3, 384, **stem_config("patchify_bn_relu"))
    assert [type(m) for m in pbr.proj] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    small = ConvStem(32, 4, 3, 128, **stem_config("conv_small"))
    assert [c.stride[0] for c in convs(small)] == [2, 2, 1]
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 64, 128)


@pytest.mark.parametrize("name", STEM_NAMES)
def test_every_stem_preset_builds(name):
    patch = 4 if name.startswith("conv_small") else 16  # the 32 px stems have total stride 4
    assert ConvStem(4 * patch, patch, 3, 96, **stem_config(name))(torch.randn(1, 3, 4 * patch, 4 * patch)).shape \
        == (1, 16, 96)


TORCH_DEFAULT = "torch default"  # kaiming-uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)), std 1/sqrt(3 fan_in)


def expected_std(conv, rule):
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return {TORCH_DEFAULT: 1 / math.sqrt(3 * fan_in), "sqrt(1/fan_in)": math.sqrt(1 / fan_in),
            "sqrt(2/out)": math.sqrt(2 / conv.out_channels), "sqrt(1/out)": math.sqrt(1 / conv.out_channels)}[rule]


# pycls init_weights_vit at d74b462 (2021) and 8709e4f (2022): the convs before the last, the last 1x1.
@pytest.mark.parametrize("init,body,last", [
    ("pycls_2021", TORCH_DEFAULT, "sqrt(2/out)"),
    ("pycls_2022", "sqrt(2/out)", "sqrt(1/out)"),
    ("torch", TORCH_DEFAULT, TORCH_DEFAULT),
])
def test_conv_stem_init_versions(init, body, last):
    """Each conv's std matches its formula within 5% (every conv has >= 1296 weights), the last bias is zero."""
    torch.manual_seed(0)
    stem = ConvStem(224, 16, 3, 384, **{**stem_config("conv_xiao_4gf"), "init": init})
    *rest, proj = convs(stem)
    for conv, rule in [*((c, body) for c in rest), (proj, last)]:
        assert conv.weight.std().item() == pytest.approx(expected_std(conv, rule), rel=0.05), (conv, rule)
    assert (proj.bias.abs().sum().item() == 0) == (init != "torch")


@pytest.mark.parametrize("init,rule", [("pycls_2021", "sqrt(1/fan_in)"), ("pycls_2022", "sqrt(1/fan_in)"),
                                       ("torch", TORCH_DEFAULT)])
def test_patchify_init_versions(init, rule):
    """pycls: truncated normal std sqrt(1/fan_in), zero bias, in both releases."""
    torch.manual_seed(0)
    p = ConvStem(224, 16, 3, 768, **{**stem_config("patchify"), "init": init})
    assert p.proj.weight.std().item() == pytest.approx(expected_std(p.proj, rule), rel=0.05)
    assert (p.proj.bias.abs().sum().item() == 0) == init.startswith("pycls")


def test_unknown_init_names_the_versions():
    with pytest.raises(ValueError, match=r"init='pycls' is not one of \('pycls_2021', 'pycls_2022', 'torch', 'timm'\)"):
        ConvStem(224, 16, 3, 384, **{**stem_config("conv_xiao_4gf"), "init": "pycls"})


def test_deit_and_big_vision_models_get_timms_init():
    """DeiT-shaped patchify models: DeiT's init (timm '' mode: the patch conv at PyTorch's default), not pycls's;
    the Wortsman (big_vision) models: timm's jax mode, lecun-normal = truncated at 2 std, std sqrt(1/fan_in)."""
    torch.manual_seed(0)
    deit = timm.create_model("deit_s_patchify", depth=1).patch_embed.proj
    assert deit.weight.std().item() == pytest.approx(expected_std(deit, TORCH_DEFAULT), rel=0.05)
    big_vision = timm.create_model("vit_s16", depth=1).patch_embed.proj
    std = expected_std(big_vision, "sqrt(1/fan_in)")
    assert big_vision.weight.std().item() == pytest.approx(std, rel=0.05)
    assert big_vision.weight.abs().max().item() <= 2 * std / 0.87962566 + 1e-6  # pycls's would reach ~4.5 std
    assert big_vision.bias.abs().sum().item() == 0


def test_which_models_use_which_stem_init():
    from vitstem.models import MODEL_NAMES, model_config

    inits = {name: model_config(name)["stem"]["init"] for name in MODEL_NAMES}
    assert {n for n, i in inits.items() if i == "timm"} == \
        {"deit_b_patchify", "deit_s_patchify", "deit_ti_patchify", "vit_b16", "vit_b32", "vit_l16", "vit_s16",
         "vit_s32", "vit_s8"}
    assert {n for n, i in inits.items() if i == "torch"} == {f"deit_{s}_scaled_relu" for s in ("b", "s", "ti")}
    assert all(inits[n] == "pycls_2021" for n in inits if n.startswith(("vit_p_", "vit_c_")))


def test_stem_invariants_are_checked():
    spec = stem_config("conv_xiao_4gf")
    with pytest.raises(ValueError, match="multiply to 16, not patch_size=8"):
        ConvStem(224, 8, 3, 384, **spec)
    with pytest.raises(ValueError, match="img_size=100 is not divisible by the stem's patch_size=16"):
        ConvStem(100, 16, 3, 384, **spec)
    with pytest.raises(ValueError, match=r"multiply to 32, which does not divide patch_size=16"):
        ConvStem(224, 16, 3, 384, **{**stem_config("scaled_relu"), "layers": [{"kernel": 3, "stride": 32, "channels": 8}]})
    with pytest.raises(ValueError, match="norm='groupnorm' is not one of"):
        ConvStem(224, 16, 3, 384, **{**spec, "norm": "groupnorm"})


def test_a_layers_padding_is_used_and_must_keep_the_token_grid():
    layers = [{"kernel": 2, "stride": 2, "channels": 8, "padding": 0}, {"kernel": 5, "stride": 2, "channels": 8}]
    stem = ConvStem(32, 4, 3, 16, layers=layers, proj_kernel=1, proj_stride=1)
    assert [c.padding[0] for c in convs(stem)] == [0, 2, 0]  # unset: (kernel - 1) // 2
    assert stem(torch.randn(1, 3, 32, 32)).shape == (1, 64, 16)
    with pytest.raises(ValueError, match=r"\(kernel, stride, padding\) \[\(3, 2, 0\), \(2, 2, 0\)\] map img_size=32 to 7 "
                                         r"tokens a side, not 8: change a layer's padding"):
        ConvStem(32, 4, 3, 16, layers=[{"kernel": 3, "stride": 2, "channels": 8, "padding": 0}])


def test_pycls_stem_init_survives_timm_vit_init():
    """timm's ViT init (jax mode for Xiao's models) runs first; the stem re-initialises itself after it."""
    torch.manual_seed(0)
    p, c = timm.create_model("vit_p_4gf"), timm.create_model("vit_c_4gf")
    assert p.patch_embed.proj.weight.std().item() == pytest.approx(math.sqrt(1 / 768), rel=0.02)
    assert c.patch_embed.proj[-1].weight.std().item() == pytest.approx(math.sqrt(2 / 384), rel=0.02)
    assert c.head.weight.abs().sum().item() == 0  # zero-initialised head, as pycls
