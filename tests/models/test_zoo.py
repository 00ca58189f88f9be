"""The registered models: Xiao et al. Table 1 golden numbers, FLOP matching, forward/backward."""
import json

import pytest
import timm
import torch

import vitstem  # noqa: F401
from vitstem.models import MODEL_NAMES, model_config
from vitstem.models.cli import PAPER_TABLE1, main as models_main, measure
from vitstem.models.complexity import count_macs, count_params

SMALL = [n for n in MODEL_NAMES if count_params(timm.create_model(n, device="meta")) < 30e6]


@pytest.mark.parametrize("name", sorted(PAPER_TABLE1))
def test_paper_models_match_table1_within_2_percent(name):
    """Within 2%, or within the table's rounding (GF is printed to 0.1: 1.076 GF is "1.1")."""
    params_m, gf = PAPER_TABLE1[name]
    row = measure(name)
    assert row["params_m"] == pytest.approx(params_m, rel=0.02)
    assert abs(row["gmacs"] - gf) <= max(0.02 * gf, 0.05)


@pytest.mark.parametrize("size", ["1gf", "4gf", "18gf", "36gf"])
def test_vit_c_is_flop_matched_to_vit_p_and_has_one_block_fewer(size):
    p, c = measure(f"vit_p_{size}"), measure(f"vit_c_{size}")
    assert c["gmacs"] == pytest.approx(p["gmacs"], rel=0.03)
    assert c["depth"] == p["depth"] - 1


def test_stem_costs_of_4gf_match_xiao():
    """Xiao et al. section 3: patchify 58 M MACs / 0.30 M params; conv stem 435 M MACs / 1.02 M params."""
    p, c = measure("vit_p_4gf"), measure("vit_c_4gf")
    assert p["stem_mmacs"] == pytest.approx(58, rel=0.02) and p["stem_params_m"] == pytest.approx(0.30, rel=0.02)
    assert c["stem_mmacs"] == pytest.approx(435, rel=0.02) and c["stem_params_m"] == pytest.approx(1.02, rel=0.02)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_runs_forward_and_backward(name):
    cfg = model_config(name)
    if name in SMALL:  # real forward and backward at a small input: 2x2 tokens of the model's patch size
        img = 2 * cfg["patch_size"]
        model = timm.create_model(name, img_size=img, num_classes=7)
        out = model(torch.randn(2, 3, img, img))
        out.sum().backward()
        assert out.shape == (2, 7)
        assert all(p.grad is not None for p in model.parameters())
    else:  # the largest: built on the meta device, shapes checked at native resolution
        model = timm.create_model(name, device="meta")
        tokens = model.forward_features(torch.empty(1, 3, cfg["img_size"], cfg["img_size"], device="meta"))
        assert tokens.shape == (1, (cfg["img_size"] // cfg["patch_size"]) ** 2 + 1, cfg["embed_dim"])
        assert model.forward_head(tokens).shape == (1, 1000)


def test_any_stem_and_attention_combine_with_a_model():
    model = timm.create_model("deit_ti_patchify", img_size=64,
                              stem=model_config("deit_ti_scaled_relu")["stem"],
                              attention={"activation": "relu", "alpha": 0.5})
    assert model.blocks[0].attn.activation == "relu" and model.blocks[0].attn.alpha == 0.5
    assert [m.kernel_size for m in model.patch_embed.proj if isinstance(m, torch.nn.Conv2d)] == \
        [(7, 7), (3, 3), (3, 3), (8, 8)]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_vitstem_models_cli_prints_every_model(capsys):
    models_main(["--json", "vit_c_32", "vit_p_32"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["vit_c_32", "vit_p_32"]
    assert rows[1]["params_m"] == pytest.approx(count_params(timm.create_model("vit_p_32")) / 1e6)
    models_main(["--stem", "conv_small", "--attention", "relu", "vit_p_32"])
    assert "vit_p_32" in capsys.readouterr().out


def test_macs_count_attention_matmuls():
    """ViT_P-4GF at 224 px: the MAC count includes q.k and attn.v (2 x 197^2 x 384 per block)."""
    model = timm.create_model("vit_p_4gf", device="meta")
    macs = count_macs(model, 224)
    linear = 12 * 197 * (4 * 384 * 384 + 2 * 3 * 384 * 384) + 58e6 + 384 * 1000
    attn = 12 * 2 * 197 * 197 * 384
    assert macs == pytest.approx(linear + attn, rel=0.001)
