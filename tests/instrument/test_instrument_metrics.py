"""vitstem.instrument.metrics: each metric against a direct computation, with real numbers (no training)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch

import vitstem.models  # noqa: F401  (registers the zoo)
from vitstem.instrument import metrics as m


def small_vit(**kw):
    torch.manual_seed(0)
    return timm.create_model("vit_p_32", depth=2, embed_dim=32, num_heads=2, img_size=16, num_classes=5, **kw)


def test_blocks_in_network_order():
    names = [n for n, _ in small_vit().named_parameters()]
    blocks, index = m.block_layout(names)
    assert blocks == ["stem", "block_00", "block_01", "head"]
    of = dict(zip(names, (blocks[i] for i in index)))
    assert of["cls_token"] == of["pos_embed"] == of["patch_embed.proj.weight"] == "stem"
    assert of["blocks.1.mlp.fc2.bias"] == "block_01" and of["norm.weight"] == of["head.bias"] == "head"
    assert m.block_of("blocks.12.attn.qkv.weight") == "block_12" and m.block_of("fc_norm.weight") == "head"
    assert m.block_of("layer1.conv.weight") == "other"


def test_block_norms_equal_a_direct_computation():
    model = small_vit()
    model(torch.randn(4, 3, 16, 16)).square().mean().backward()
    named = list(model.named_parameters())
    blocks, index = m.block_layout(n for n, _ in named)
    got = m.block_norms([p.grad for _, p in named], torch.tensor(index), len(blocks))
    for b, name in enumerate(blocks):
        direct = torch.cat([p.grad.flatten() for n, p in named if m.block_of(n) == name]).double().norm()
        assert got[b].item() == pytest.approx(direct.item(), rel=1e-6)
    total = torch.cat([p.grad.flatten() for _, p in named]).double().norm().item()
    assert m.total_norm(got).item() == pytest.approx(total, rel=1e-6)


def test_block_norms_mark_non_finite_and_overflowing_values():
    tensors = [torch.full((4,), 1e18), torch.full((4,), 1e18), torch.tensor([1.0, float("nan")]),
               torch.tensor([float("inf")]), torch.ones(9), torch.full((1,), 2.0 ** 64)]
    got = m.block_norms(tensors, torch.tensor([0, 0, 1, 2, 3, 4]), 5)
    assert got[0].item() == pytest.approx(math.sqrt(8) * 1e18)  # block sums in float64: no overflow there
    assert math.isnan(got[1].item()) and math.isinf(got[2].item()) and got[3].item() == 3.0
    assert not got[4].item() < m.OVERFLOW  # a tensor norm at OVERFLOW: as good as non-finite


def test_diversity_of_identical_tokens_is_1_and_of_orthogonal_tokens_0():
    same = torch.randn(1, 1, 16).expand(3, 10, 16)
    assert m.token_diversity(same).item() == pytest.approx(1.0, abs=1e-6)
    assert m.token_diversity(-same * torch.tensor([1.0, -1.0] * 5).view(1, 10, 1)).item() == pytest.approx(1.0, abs=1e-6)
    orthogonal = torch.eye(16)[:10].expand(2, 10, 16) * 3.0
    assert m.token_diversity(orthogonal).item() == pytest.approx(0.0, abs=1e-7)


def test_diversity_is_the_formula_of_papers_md():
    h = torch.randn(2, 5, 8)
    direct = np.mean([np.mean([abs(float(h[b, i] @ h[b, j]) / float(h[b, i].norm() * h[b, j].norm()))
                               for i in range(5) for j in range(5) if i != j]) for b in range(2)])
    assert m.token_diversity(h).item() == pytest.approx(direct, rel=1e-5)


def test_recomputed_softmax_weights_reproduce_the_layer_output():
    attn = small_vit(attention={"qk_norm": True}).blocks[0].attn.eval()
    x = torch.randn(3, 17, 32)
    weights, softmax = m.attention_weights(attn, x)
    _, _, v = attn.qkv(x).reshape(3, 17, 3, 2, 16).permute(2, 0, 3, 1, 4).unbind(0)
    out = attn.proj((weights @ v).transpose(1, 2).reshape(3, 17, 32))
    assert softmax and torch.allclose(out, attn(x), atol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 2, 17))
    entropy = m.softmax_entropy(weights).item()
    assert 0 < entropy < math.log(17)
    assert m.softmax_entropy(torch.full((1, 1, 4, 4), 0.25)).item() == pytest.approx(math.log(4))


def test_relu_attention_zero_fraction_and_row_sums_match_a_direct_count():
    attn = small_vit(attention={"activation": "relu", "alpha": 1.0}).blocks[1].attn.eval()
    x = torch.randn(3, 17, 32)
    weights, softmax = m.attention_weights(attn, x)
    assert not softmax
    q, k, v = attn.qkv(x).reshape(3, 17, 3, 2, 16).permute(2, 0, 3, 1, 4).unbind(0)
    direct = torch.relu(q @ k.transpose(-2, -1) / 4.0) / 17  # head_dim 16: scale 1/4; L = 17 tokens
    assert torch.allclose(weights, direct, atol=1e-6)
    assert torch.allclose(attn.proj((weights @ v).transpose(1, 2).reshape(3, 17, 32)), attn(x), atol=1e-5)
    zeros = sum(float(direct[b, h, i, j]) == 0.0 for b in range(3) for h in range(2) for i in range(17) for j in range(17))
    assert 0 < zeros < direct.numel()
    assert m.zero_fraction(weights).item() == pytest.approx(zeros / direct.numel())
    mean, std = m.row_sums(weights)
    assert mean.item() == pytest.approx(direct.sum(-1).mean().item(), rel=1e-5)
    assert std.item() == pytest.approx(direct.sum(-1).std().item(), rel=1e-4)


def test_block_statistics_of_a_model():
    model = small_vit(attention={"activation": "relu"}).train()
    stats = m.block_statistics(model, torch.randn(4, 3, 16, 16))
    assert set(stats) == {"diversity/stem", "diversity/block_00", "diversity/block_01",
                          *(f"attention/{k}/block_0{i}" for k in ("zero_fraction", "row_sum_mean", "row_sum_std")
                            for i in (0, 1))}
    assert all(0 <= stats[f"diversity/{b}"] <= 1 for b in ("stem", "block_00", "block_01"))
    assert model.training and not model.blocks[0]._forward_hooks  # mode restored, hooks removed
    assert set(m.block_statistics(small_vit(), torch.randn(2, 3, 16, 16), attention=False)) == {
        "diversity/stem", "diversity/block_00", "diversity/block_01"}


def test_spikes_above_factor_times_the_running_median():
    d = m.SpikeDetector(factor=3.0, window=4, warmup=2)
    flags = [bool(d.update([v])[0][0]) for v in (1.0, 10.0, 1.0, 1.0, 3.5, float("nan"), 1.0, 2.0, 10.0)]
    # 10 at the 2nd step: only one value seen (warm-up); 3.5 > 3 x median(1, 10, 1, 1); NaN is never a spike
    assert flags == [False, False, False, False, True, False, False, False, True]
    spike, median = d.update([0.5])
    assert median[0] == np.median([1.0, 2.0, 10.0])  # the last 4 steps; the NaN among them left out
    restored = m.SpikeDetector(3.0, 4, 2)
    restored.load_state_dict(d.state_dict())
    assert np.array_equal(restored.update([50.0])[1], d.update([50.0])[1])


def test_spike_events_name_the_first_block_above_threshold():
    blocks = ["stem", "block_00", "block_01", "head"]
    grad = np.array([1.0, 9.0, 8.0, 1.0, 12.0])
    events = m.spike_events(7, blocks, grad, np.array([False, True, True, False, True]), np.ones(5), 2.0, True, 1.0)
    assert events == [{"step": 7, "kind": "grad", "block": "block_00", "blocks": ["block_00", "block_01"], "ratio": 9.0},
                      {"step": 7, "kind": "loss", "block": "block_00", "blocks": ["block_00", "block_01"], "ratio": 2.0}]
    total_only = m.spike_events(3, blocks, grad, np.array([False] * 4 + [True]), np.full(5, 2.0), 1.0, False, 1.0)
    assert total_only == [{"step": 3, "kind": "grad", "block": None, "blocks": [], "ratio": 6.0}]


def test_first_nonfinite_follows_the_order_of_computation():
    ok, nan, inf = np.ones(4), np.array([1.0, np.nan, np.nan, 1.0]), np.inf
    assert m.first_nonfinite(1.0, ok, ok, ok, head=3) is None
    assert m.first_nonfinite(np.nan, np.array([1.0, 2.0, np.nan, np.nan]), nan, ok, head=3) == ("forward", 2)
    assert m.first_nonfinite(inf, np.array([2.0 ** 70, 1.0, np.nan, np.nan]), nan, ok, head=3) == ("forward", 0)
    assert m.first_nonfinite(np.nan, ok, nan, ok, head=3) == ("forward", 3)  # only the loss itself
    assert m.first_nonfinite(1.0, ok, nan, nan, head=3) == ("backward", 2)  # nearest the loss
    assert m.first_nonfinite(1.0, ok, nan, ok, head=3, grads_decide=False) is None  # a float16 scaler skips it
    assert m.first_nonfinite(1.0, ok, ok, np.array([1.0, 1.0, inf, np.nan]), head=3) == ("update", 2)


def test_peak_flops_of_a_h200_and_of_a_cpu(monkeypatch):
    assert m.peak_flops(torch.device("cpu"), torch.bfloat16) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    cuda = torch.device("cuda", 0)
    assert m.peak_flops(cuda, torch.bfloat16) == 989.4e12
    assert m.peak_flops(cuda, torch.float32) == 66.9e12  # matmul precision "highest" (the default)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert m.peak_flops(cuda, torch.bfloat16) == 989.4e12  # Lightning's table
    assert [m.compute_dtype(p) for p in ("32-true", "bf16-mixed", "16-mixed", "64-true")] == [
        torch.float32, torch.bfloat16, torch.float16, torch.float64]


def test_training_flops_are_forward_plus_backward():
    from vitstem.models.complexity import count_macs, stem_cost

    def build():
        return timm.create_model("vit_p_32", num_classes=10)

    flops = m.train_flops_per_image(build, 32)
    with torch.device("meta"):
        model = build()
    forward, stem = 2 * count_macs(model, 32), 2 * stem_cost(model, 32)[0]
    assert flops == 3 * forward - stem  # backward: 2 x forward, less the stem's input gradient (the image needs none)
