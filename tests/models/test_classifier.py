"""Regularisation recipes of vitstem.models.classifier.Classifier: weight EMA, mixup / CutMix, compile, composition."""
from __future__ import annotations

import csv
import json

import hydra
import lightning as L
import pytest
import torch
from omegaconf import open_dict

from tests.helpers import TINY, compose_config, train
from vitstem.models.classifier import ema_decay
from vitstem.models.loss import SoftmaxCrossEntropy
from vitstem.train import build


def build_tiny(overrides, tmp_path):
    cfg = compose_config(TINY + overrides, tmp_path)
    with open_dict(cfg):
        del cfg.hydra
    return build(cfg)


class Snapshots(L.Callback):
    """The raw model's state_dict after every optimizer step."""

    def __init__(self):
        self.states = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.states.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})


@pytest.mark.e2e
@pytest.mark.parametrize("exclude_buffers", [False, True])
def test_ema_weights_and_bn_statistics(tmp_path, exclude_buffers):
    """horizon 1 over 2 steps: decay 1 - 1/2. Update 1 copies (ModelEmaV3 step 1), update 2 lerps by 0.5."""
    datamodule, module, trainer = build_tiny(["model=vit_c_32", "ema=pycls", "ema.horizon=1.0",
                                              f"ema.exclude_buffers={str(exclude_buffers).lower()}"], tmp_path)
    snaps = Snapshots()
    trainer.callbacks.append(snaps)
    trainer.fit(module, datamodule=datamodule)
    assert module.ema.decay == 0.5 and module.ema.update_after_step == 0
    (w1, w2), ema = snaps.states, module.ema.module.state_dict()
    for k in ("blocks.0.attn.qkv.weight", "patch_embed.proj.0.weight", "cls_token"):
        assert not torch.equal(w1[k], w2[k])
        torch.testing.assert_close(ema[k], 0.5 * w1[k] + 0.5 * w2[k])
    bn = "patch_embed.proj.1.running_mean"  # the conv stem's BatchNorm statistics
    expected = w2[bn] if exclude_buffers else 0.5 * w1[bn] + 0.5 * w2[bn]
    torch.testing.assert_close(ema[bn], expected)
    assert not any(p.requires_grad for p in module.ema.parameters())


def test_ema_decay_from_horizon_matches_pycls():
    """pycls mixes in EMA_ALPHA x batch / epochs per step: 1e-5 x 2048 / 400 = 5.12e-5 on ImageNet-1k."""
    steps = 400 * 1_281_167 // 2048
    assert 1 - ema_decay({"decay": None, "horizon": 0.078}, steps) == pytest.approx(5.12e-5, rel=0.01)
    assert ema_decay({"decay": 0.99996, "horizon": None}, steps) == 0.99996
    assert ema_decay({"decay": None, "horizon": 0.078}, 2) == 0.0  # shorter than one step: a copy


def test_mixup_targets(tmp_path):
    """xiao.yaml: mixup 0.8 / CutMix 1.0, one per batch, smoothing 0.1 -> off value 0.01, on 0.91 (10 classes)."""
    cfg = compose_config(TINY + ["mixup=xiao"], tmp_path)
    mixup = hydra.utils.instantiate(cfg.mixup, num_classes=10)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.mix_prob, mixup.switch_prob, mixup.label_smoothing) == \
        (0.8, 1.0, 1.0, 0.5, 0.1)
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8)
    x0 = x.clone()
    xm, t = mixup(x, y)
    assert not torch.equal(xm, x0)
    torch.testing.assert_close(t.sum(1), torch.ones(8))
    for i in range(8):
        others = [c for c in range(10) if c not in (i, 7 - i)]  # batch mode pairs row i with row 7 - i
        torch.testing.assert_close(t[i, others], torch.full((len(others),), 0.01))


@pytest.mark.e2e
def test_recipe_run_composes(tmp_path):
    """mixup + EMA + stochastic depth + gradient clipping + bf16-mixed in one tiny run."""
    r = train(TINY + ["model=vit_c_32", "mixup=xiao", "ema=pycls", "+model.drop_path_rate=0.1",
                      "trainer.gradient_clip_val=1.0", "trainer.precision=bf16-mixed"], tmp_path)
    assert r["status"] == "finished" and r["steps"] == 2
    assert r["final_val_ema_acc1"] is not None and r["best_val_ema_acc1"] == r["final_val_ema_acc1"]
    assert r["final_val_acc1"] is not None and r["best_val_acc1"] is not None  # existing keys unchanged
    header = next(csv.reader(open(tmp_path / "metrics.csv")))
    assert {"val/acc1", "val_ema/acc1", "val_ema/acc5", "val_ema/loss"} <= set(header)
    groups = json.loads((tmp_path / "param_groups.json").read_text())
    assert set(groups) == {"decay", "no_decay"}
    assert sum(g["params"] for g in groups.values()) == round(r["params_m"] * 1e6)
    assert "param_groups:" in (tmp_path / "hparams.yaml").read_text()


def test_no_ema_no_mixup(tmp_path):
    _, module, _ = build_tiny([], tmp_path)
    assert module.ema is None and module.mixup is None and list(module.acc1) == ["val"]
    _, module, _ = build_tiny(["mixup=deit"], tmp_path)
    assert module.mixup is not None and isinstance(module.criterion, SoftmaxCrossEntropy)  # takes the soft targets


def test_compile_switch_keeps_parameter_names(tmp_path):
    _, module, _ = build_tiny(["model=vit_c_32", "ema=deit", "compile=true"], tmp_path)
    names = [n for n, _ in module.model.named_parameters()]
    module.configure_model()
    assert module.model._compiled_call_impl is not None and module.ema.module._compiled_call_impl is not None
    assert [n for n, _ in module.model.named_parameters()] == names


def test_channels_last_conv_stem_gives_the_same_outputs(tmp_path):
    """The GPU layout for conv stems (on CPU here, forced): same numbers, channels-last weights and inputs."""
    _, module, _ = build_tiny(["model=vit_c_32", "ema=deit"], tmp_path)
    x = torch.randn(2, 3, 16, 16)
    module.eval()
    before = module(x)
    module.channels_last = True
    for net in (module.model, module.ema.module):
        net.patch_embed.to(memory_format=torch.channels_last)
    xb = module._layout(x)
    assert xb.is_contiguous(memory_format=torch.channels_last)
    assert module.model.patch_embed.proj[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(module(xb), before, atol=1e-5)


class ForeignGenerator:
    """Stands for the generator timm's ModelEmaV3 made on the device the model had when the EMA was built (the CPU)
    once the weights live elsewhere (a GPU): seen from the weights, a generator of another device."""
    device = torch.device("cuda", 0)


def test_ema_in_bf16_true_built_before_the_model_moves(tmp_path):
    """trainer.precision=bf16-true with an EMA: the bf16 EMA rounds stochastically with its own generator, which must
    live where the weights do after Lightning moved and cast the module (it crashed on the first update on a GPU)."""
    datamodule, module, trainer = build_tiny(["ema=deit", "trainer.precision=bf16-true", "trainer.limit_train_batches=3"],
                                             tmp_path)
    module.ema._sr_generator = ForeignGenerator()  # the EMA was built before the weights moved
    first = Snapshots()
    trainer.callbacks.append(first)
    trainer.fit(module, datamodule=datamodule)
    weights = list(module.ema.module.parameters())
    assert weights[0].dtype == torch.bfloat16
    generator = module.ema._sr_generator
    assert isinstance(generator, torch.Generator) and generator.device == weights[0].device
    # the updates after the first (a copy) lerped with decay 0.99996: the EMA moved off the first step's weights
    ema, (w1, _, w3) = module.ema.module.state_dict(), first.states
    key = "blocks.0.attn.qkv.weight"
    assert ema[key].dtype == torch.bfloat16 and not torch.equal(w1[key], w3[key])
    assert not torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())  # it drew


def test_channels_last_is_set_before_the_strategy_wraps_the_model(tmp_path, monkeypatch):
    """DDP builds its gradient buckets from the strides the parameters have when the strategy wraps the model: the
    conv stem must be channels-last by then (else a stride-mismatch warning and a copy per bucket every step)."""
    datamodule, module, trainer = build_tiny(["model=vit_c_32", "ema=deit"], tmp_path)
    monkeypatch.setattr(type(module), "wants_channels_last", lambda self, device: True, raising=False)  # a GPU
    seen = []
    setup = type(trainer.strategy).setup

    def record(strategy, trainer_):
        seen.append(module.model.patch_embed.proj[0].weight.is_contiguous(memory_format=torch.channels_last))
        setup(strategy, trainer_)

    monkeypatch.setattr(type(trainer.strategy), "setup", record)
    trainer.fit(module, datamodule=datamodule)
    assert seen == [True] and module.channels_last
    assert module.ema.module.patch_embed.proj[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_full_fp32_on_a_gpu_is_said_once(caplog, monkeypatch):
    """The precision default falls back to 32-true without an NVIDIA device file; on a GPU that is said, once."""
    from vitstem.models import classifier as vm

    monkeypatch.setattr(vm, "_WARNED", set())
    with caplog.at_level("WARNING", logger="vitstem"):
        assert vm.warn_full_fp32("32-true", "highest", "NVIDIA H100")
        assert not vm.warn_full_fp32("32-true", "highest", "NVIDIA H100")  # once
    assert sum("full fp32 on NVIDIA H100" in r.message for r in caplog.records) == 1
    monkeypatch.setattr(vm, "_WARNED", set())
    assert not vm.warn_full_fp32("bf16-mixed", "highest", "NVIDIA H100")
    assert not vm.warn_full_fp32("32-true", "high", "NVIDIA H100")  # TF32 asked for
