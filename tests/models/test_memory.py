"""vitstem.models.memory: the peak-memory estimate against formula numbers and against what a CPU step keeps."""
from __future__ import annotations

import pytest
import timm
import torch

import vitstem.models  # noqa: F401  (registers the zoo)
from vitstem.config import ConfigError
from vitstem.models import memory

DEPTH, WIDTH, HEADS, IMG, PATCH = 2, 32, 2, 32, 4
N = (IMG // PATCH) ** 2 + 1  # patches + class token: 65


def tiny(activation: str):
    return lambda: timm.create_model("vit_p_32", num_classes=10, img_size=IMG, patch_size=PATCH, depth=DEPTH,
                                     embed_dim=WIDTH, num_heads=HEADS, attention={"activation": activation})


def maps_kept(model, batch: int) -> int:
    """The B*H x N x N tensors autograd keeps from one real CPU forward (unique storages)."""
    seen = {}

    def pack(t):
        if t.shape[-2:] == (N, N):
            seen[t.untyped_storage()._cdata] = t.shape
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(batch, 3, IMG, IMG))
    return len(seen)


@pytest.mark.parametrize("activation,kept", [("relu", 1), ("identity", 1), ("gelu", 2), ("sigmoid", 2)])
def test_pointwise_attention_keeps_the_maps_the_formula_counts(activation, kept):
    """relu / identity fold the length factor into q: one N^2 map kept per block (it was two); others keep two."""
    model = tiny(activation)().train()
    assert maps_kept(model, batch=3) == DEPTH * kept
    assert memory.attention_maps(model) == DEPTH * kept * HEADS * N * N  # per image
    assert memory.attention_maps(tiny("softmax")()) == 0


def test_the_estimate_counts_what_a_cpu_step_keeps():
    """In fp32 the meta-device count is what a real CPU forward keeps for backward, byte for byte (point-wise attention
    runs the same ops on both), and it is linear in the batch; gelu keeps one map more per block than relu."""
    for activation in ("relu", "gelu"):
        est = memory.estimate(tiny(activation), batch=6, img_size=IMG, precision="32-true")
        measured, _ = memory.saved_bytes(tiny(activation)().train(), torch.randn(6, 3, IMG, IMG))
        assert est.activations == measured
    relu = memory.estimate(tiny("relu"), 6, IMG, "32-true")
    gelu = memory.estimate(tiny("gelu"), 6, IMG, "32-true")
    assert gelu.activations_per_image - relu.activations_per_image == DEPTH * HEADS * N * N * 4
    assert relu.attention_maps_per_image == DEPTH * HEADS * N * N * 4
    params = sum(p.numel() for p in tiny("relu")().parameters())
    assert relu.params == params and relu.states == params * 4 * 4  # weights, gradients, Adam's two moments
    with_all = memory.estimate(tiny("relu"), 6, IMG, "32-true", ema=True, ddp=True)
    assert with_all.states == params * 4 * 6


def test_mixed_precision_keeps_half_width_maps_and_fused_softmax_keeps_none():
    bf16 = memory.estimate(tiny("relu"), 8, IMG, "bf16-mixed")
    assert bf16.attention_maps_per_image == DEPTH * HEADS * N * N * 2
    fp32 = memory.estimate(tiny("relu"), 8, IMG, "32-true")
    assert bf16.activations < fp32.activations and bf16.states == fp32.states  # fp32 weights under autocast
    softmax = memory.estimate(tiny("softmax"), 8, IMG, "bf16-mixed")
    assert softmax.attention_maps_per_image == 0
    # fused attention keeps q, k, v, the output and one fp32 log-sum-exp per query, no N^2 tensor
    assert softmax.activations_per_image < bf16.activations_per_image + DEPTH * HEADS * N * N * 2


def test_fit_batch_keeps_the_images_per_step_with_the_fewest_accumulation_steps():
    est = memory.MemoryEstimate(batch=512, params=0, states=10, activations_fixed=0, activations_per_image=100,
                                attention_maps_per_image=0, transient=0)
    assert est.total == 51_210
    assert memory.fit_batch(est, 1, memory=100_000) == (512, 1)
    assert memory.fit_batch(est, 1, memory=40_000) == (256, 2)  # 25_610 <= 36_000 < 51_210
    assert memory.fit_batch(est, 2, memory=40_000) == (256, 4)
    assert memory.fit_batch(est, 1, memory=10_000) == (64, 8)   # 6_410 <= 9_000
    assert memory.fit_batch(est, 1, memory=50) is None
    assert memory.largest_batch(est, 40_000) == 359            # (36_000 - 10) // 100


def test_the_start_of_run_check_refuses_a_batch_that_cannot_fit(tmp_path):
    from omegaconf import open_dict

    from tests.helpers import TINY, compose_config
    from vitstem.train import build

    cfg = compose_config(TINY + ["model/attention=relu", "data.loader.batch_size=64"], tmp_path)
    with open_dict(cfg):
        del cfg.hydra
    datamodule, module, trainer = build(cfg)
    module.trainer, trainer.datamodule = trainer, datamodule  # what trainer.fit attaches
    est = module.memory_estimate()
    assert est.batch == 64 and est.attention_maps_per_image > 0
    assert module.check_memory(est.total * 2) == est  # fits: no error
    with pytest.raises(ConfigError) as e:
        module.check_memory(int(est.total * 0.6), "a small GPU")
    fit = memory.fit_batch(est, 1, int(est.total * 0.6))
    assert fit[0] * fit[1] == 64 and fit[1] > 1
    assert f"data.loader.batch_size={fit[0]} trainer.accumulate_grad_batches={fit[1]}" in str(e.value)
    assert str(e.value).startswith("data.loader.batch_size=64 needs about") and "\n" not in str(e.value)


@pytest.mark.parametrize("experiment", ["wortsman_s8_relu", "wortsman_l16_relu", "wortsman_i21k_l16_relu",
                                        "wortsman_b16_relu"])
def test_the_wortsman_experiments_fit_an_80_gb_gpu_at_the_recipe_batch(experiment):
    """Per-GPU batch x 8 GPUs x accumulation = big_vision's 4096, and the estimate fits 80 GB less the reserve
    (S/8 and L/16 at 512 per GPU needed about 135 GB: more than an H200)."""
    from omegaconf import OmegaConf

    from tests.helpers import compose_config
    from vitstem.models.classifier import create_model

    cfg = compose_config([f"experiment={experiment}", "trainer.precision=bf16-mixed"])
    batch, accumulate = cfg.data.loader.batch_size, cfg.trainer.accumulate_grad_batches
    assert batch * 8 * accumulate == 4096
    model = OmegaConf.to_container(cfg.model, resolve=True)
    est = memory.estimate(lambda: create_model(model, 1000, cfg.model.img_size), batch, cfg.model.img_size,
                          "bf16-mixed", ddp=True)
    assert est.total <= 80e9 * (1 - memory.RESERVE)
    assert memory.fit_batch(est, accumulate, int(80e9)) == (batch, accumulate)  # no fewer accumulation steps fit
