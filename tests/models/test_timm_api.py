"""vitstem's models as first-class timm models: the checks of timm's own ``tests/test_models.py`` (pretrained
config, forward_features / pre-logits / reset_classifier, features_only, forward_intermediates, torchscript),
data configs, and weights from a local file. Tiny models (32 px, few blocks) keep each test cheap."""
import pytest
import timm
import torch
from timm.data import resolve_data_config
from timm.models import get_pretrained_cfg

import vitstem  # noqa: F401
from vitstem.models import MODEL_NAMES, model_config

TINY = dict(depth=2, embed_dim=32, num_heads=2)
VARIANTS = {  # name, overrides: patchify and conv stem, softmax and point-wise attention, pre-logits layer
    "patchify": ("vit_p_32", {}),
    "conv_relu": ("vit_c_32", {"attention": {"activation": "relu", "qk_norm": True, "gate": True}}),
    "rep_gap": ("vit_p_32", {"rep_size": 16, "class_token": False, "global_pool": "avg", "fc_norm": False}),
}


def tiny(variant: str, **kwargs):
    name, overrides = VARIANTS[variant]
    torch.manual_seed(0)
    return timm.create_model(name, **{**TINY, **overrides, **kwargs}).eval()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_default_cfg_heads_and_pooling(variant):
    """timm's test_model_default_cfgs_non_std: feature widths, pre-logits, classifier removal, cfg names."""
    model, x = tiny(variant), torch.randn(2, 3, 32, 32)
    cfg, state = model.pretrained_cfg, model.state_dict()
    assert model.default_cfg is cfg and cfg["architecture"] == VARIANTS[variant][0]
    assert f"{cfg['classifier']}.weight" in state and f"{cfg['first_conv']}.weight" in state
    tokens = model.forward_features(x)
    prefix = 1 if model.has_class_token else 0
    assert tokens.shape == (2, 64 + prefix, model.num_features)
    pre = model.forward_head(tokens, pre_logits=True)
    assert pre.shape == (2, model.head_hidden_size)
    logits = model(x)
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), pre)  # no head: the pre-logits
    assert model.num_classes == 0
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and logits.shape == (2, 1000)
    model.reset_classifier(0, "")  # no pooling either: the tokens (through the pre-logits layer, as big_vision's
    assert model(x).shape == (*tokens.shape[:2], model.head_hidden_size)  # pre_logits_2d)
    assert tiny(variant, num_classes=0)(x).shape == pre.shape


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_features_only_and_forward_intermediates(variant):
    """timm's test_model_forward_features / _intermediates(_features): NCHW maps of the last 3 blocks."""
    model, x = tiny(variant, depth=3), torch.randn(2, 3, 32, 32)
    final, maps = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x))
    assert [m.shape for m in maps] == [(2, 32, 8, 8)] * 3
    model.set_grad_checkpointing()
    torch.testing.assert_close(model.forward_intermediates(x)[0], final)

    torch.manual_seed(0)
    features = tiny(variant, depth=3, features_only=True, out_indices=(1, 2))
    assert features.feature_info.channels() == [32, 32] and features.feature_info.reduction() == [4, 4]
    assert "head" not in features.pretrained_cfg.get("classifier", "")
    outs = features(x)
    torch.testing.assert_close(outs, maps[1:])  # same init: the same maps as the classifier's
    assert not any(n.startswith(("model.head.", "model.rep.")) for n, _ in features.named_parameters())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript(variant):
    model, x = tiny(variant), torch.randn(2, 3, 32, 32)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), model(x))


def test_every_model_has_its_data_config():
    """ImageNet models: 224 px, mean / std and crop of conf/data/imagenet.yaml (timm's ImageNet statistics);
    the 32 px models: CIFAR-10's, uncropped. first_conv names the stem's first conv."""
    for name in MODEL_NAMES:
        cfg, spec = get_pretrained_cfg(name).to_dict(), model_config(name)
        size = spec["img_size"]
        assert cfg["input_size"] == (3, size, size) and cfg["fixed_input_size"] and cfg["num_classes"] == 1000
        if size == 32:
            assert (cfg["mean"], cfg["std"], cfg["crop_pct"]) == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 1.0)
        else:
            assert (cfg["mean"], cfg["std"], cfg["crop_pct"]) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.875)
        assert cfg["interpolation"] == "bicubic" and cfg["classifier"] == "head"
        assert cfg["first_conv"] == ("patch_embed.proj" if not spec["stem"]["layers"] and spec["stem"]["proj_act"] == "none"
                                     else "patch_embed.proj.0")
    model = timm.create_model("vit_c_4gf", img_size=64, device="meta")  # a resized model resolves its own size
    assert resolve_data_config({}, model=model)["input_size"] == (3, 64, 64)
    assert resolve_data_config({}, model=timm.create_model("vit_p_32", **TINY))["input_size"] == (3, 32, 32)
    swapped = timm.create_model("vit_p_32", **TINY, stem=model_config("vit_c_32")["stem"])  # first_conv follows
    assert swapped.pretrained_cfg["first_conv"] == "patch_embed.proj.0"


def test_weights_from_a_local_timm_checkpoint(tmp_path):
    """pretrained_cfg_overlay=dict(file=...): a timm ViT-B/16-shaped state_dict (here shrunk) loads into
    vit_p_18gf through timm's ViT checkpoint_filter_fn; position embeddings are resampled to a new grid and
    a head for other classes is left out."""
    shape = dict(depth=1, embed_dim=64, num_heads=2, img_size=32)
    torch.manual_seed(0)
    theirs = timm.create_model("vit_base_patch16_224", **shape).eval()
    torch.save(theirs.state_dict(), tmp_path / "vit.pth")
    ours = timm.create_model("vit_p_18gf", **shape, pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(tmp_path / "vit.pth"))).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), theirs(x))
    bigger = timm.create_model("vit_p_18gf", **{**shape, "img_size": 64}, num_classes=7, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / "vit.pth")))
    assert bigger.pos_embed.shape == (1, 17, 64) and bigger.head.weight.shape == (7, 64)
    assert torch.equal(bigger.blocks[0].mlp.fc1.weight, theirs.blocks[0].mlp.fc1.weight)
    # a vitstem-train checkpoint: the LightningModule's "model." weights (the EMA copy is left out)
    lightning = {"state_dict": {**{f"model.{k}": v for k, v in theirs.state_dict().items()},
                                **{f"ema.module.{k}": torch.zeros_like(v) for k, v in theirs.state_dict().items()}}}
    torch.save(lightning, tmp_path / "last.ckpt")
    again = timm.create_model("vit_p_18gf", **shape, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "last.ckpt"))).eval()
    torch.testing.assert_close(again(x), theirs(x))


def test_pretrained_without_a_file_is_a_clear_error(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", no_network)
    with pytest.raises(ValueError, match=r"vit_c_4gf: vitstem models have no published weights, so pretrained=True "
                                         r"needs a local file: .*pretrained_cfg_overlay=dict\(file="):
        timm.create_model("vit_c_4gf", pretrained=True)
