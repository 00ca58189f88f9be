"""The ViT's tanh pre-logits layer (big_vision ``rep_size``) and global-average-pooled models without a class
token (big_vision ``vit_i21k.py``); parameter names stay timm's."""
import math

import pytest
import timm
import torch
from timm.models import VisionTransformer

import vitstem  # noqa: F401

TINY = dict(depth=1, embed_dim=32, num_heads=2)


def test_no_rep_layer_by_default_and_timm_names():
    model = timm.create_model("vit_p_32", **TINY)
    assert model.rep_size is None and isinstance(model.rep, torch.nn.Identity)
    theirs = VisionTransformer(img_size=32, patch_size=4, **TINY)
    assert list(model.state_dict()) == list(theirs.state_dict())  # checkpoints and init_from keep working


@pytest.mark.parametrize("rep_size", [32, 12])
def test_rep_layer_is_linear_then_tanh_before_the_head(rep_size):
    torch.manual_seed(0)
    model = timm.create_model("vit_p_32", **TINY, rep_size=rep_size, num_classes=5).eval()
    assert [type(m) for m in model.rep] == [torch.nn.Linear, torch.nn.Tanh]
    assert (model.rep.fc.in_features, model.rep.fc.out_features, model.head.in_features) == (32, rep_size, rep_size)
    assert (model.num_features, model.head_hidden_size) == (32, rep_size)
    x = torch.randn(3, 3, 32, 32)
    tokens = model.forward_features(x)
    pre = torch.tanh(model.rep.fc(tokens[:, 0]))  # class token, then Dense -> tanh (big_vision pre_logits)
    torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), pre)
    torch.testing.assert_close(model(x), model.head(pre))
    assert model(x).shape == (3, 5) and pre.abs().max() < 1
    model.reset_classifier(7)  # keeps the layer; the new head reads it
    assert model(x).shape == (3, 7) and model.head.in_features == rep_size
    assert {"rep.fc.weight", "rep.fc.bias"} <= set(model.state_dict())


def test_rep_layer_init_follows_the_init_mode():
    """jax (big_vision): lecun-normal kernel (std sqrt(1/d)), zero bias, zero head; timm ('' mode): std 0.02."""
    torch.manual_seed(0)
    jax = timm.create_model("vit_s16", depth=1, img_size=32, rep_size=384)
    assert jax.rep.fc.weight.std().item() == pytest.approx(math.sqrt(1 / 384), rel=0.05)
    assert jax.rep.fc.bias.abs().sum() == 0 and jax.head.weight.abs().sum() == 0
    deit = timm.create_model("deit_s_patchify", depth=1, img_size=32, rep_size=384)
    assert deit.rep.fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert deit.head.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_bad_rep_size_is_a_clear_error():
    with pytest.raises(ValueError, match=r"rep_size=0 must be a positive int"):
        timm.create_model("vit_p_32", **TINY, rep_size=0)


@pytest.mark.parametrize("class_token,global_pool,tokens", [(True, "token", 65), (False, "avg", 64)])
def test_attention_length_counts_the_tokens_there_are(class_token, global_pool, tokens):
    """vit_i21k.py: GAP and no class token, so ReLU attention's L = 64 patches (8 x 8); with the class token 65."""
    torch.manual_seed(0)
    model = timm.create_model("vit_p_32", **TINY, class_token=class_token, global_pool=global_pool, fc_norm=False,
                              attention={"activation": "relu", "alpha": 1.0, "qk_norm": False}).eval()
    attn, seen = model.blocks[0].attn, {}
    attn.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    logits = model(torch.randn(2, 3, 32, 32))
    x = seen["x"]
    assert x.shape[1] == tokens
    q, k, v = attn.qkv(x).reshape(2, tokens, 3, 2, 16).permute(2, 0, 3, 1, 4)
    weights = torch.relu(q @ k.transpose(-2, -1) / 4) / tokens
    torch.testing.assert_close(seen["out"], attn.proj((weights @ v).transpose(1, 2).reshape(2, tokens, 32)))
    if not class_token:  # big_vision's GAP: mean of the patch tokens after the final LayerNorm
        feats = model.forward_features(torch.randn(2, 3, 32, 32))
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats.mean(1))
    assert logits.shape == (2, 1000)
