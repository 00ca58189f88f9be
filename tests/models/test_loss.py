"""The loss group: softmax / sigmoid cross-entropy on hard labels and mixup targets, head bias init."""
from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import vitstem  # noqa: F401
from tests.helpers import TINY, compose_config, train
from vitstem.models.loss import SigmoidCrossEntropy, SoftmaxCrossEntropy, dense_targets, init_head_bias


def test_softmax_ce_matches_torch_with_smoothing_and_takes_soft_targets():
    logits, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    loss = SoftmaxCrossEntropy(label_smoothing=0.1)
    assert loss(logits, y) == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.1).item())
    soft = dense_targets(y, 5, 0.1)  # as mixup hands them over: smoothed already, not smoothed again
    assert loss(logits, soft) == pytest.approx(loss(logits, y).item(), rel=1e-6)


def test_sigmoid_ce_sums_over_classes_as_big_vision():
    """big_vision sigmoid_xent: -sum_c [t log s(z) + (1 - t) log s(-z)], averaged over the batch."""
    logits, y = torch.randn(4, 1000), torch.tensor([3, 999, 0, 3])
    t = F.one_hot(y, 1000).float()
    direct = -(t * F.logsigmoid(logits) + (1 - t) * F.logsigmoid(-logits)).sum(-1).mean()
    assert SigmoidCrossEntropy(label_smoothing=0.0)(logits, y) == pytest.approx(direct.item(), rel=1e-6)
    # with logits at the head bias -6.9 every class starts at p ~ 1e-3: 999 negatives cost -log(1 - p) each and
    # the positive -log p = log(1 + e^6.9)
    zero = torch.full((2, 1000), -6.9)
    expected = 999 * -math.log(1 - torch.sigmoid(torch.tensor(-6.9)).item()) + math.log(1 + math.exp(6.9))
    assert SigmoidCrossEntropy(0.0)(zero, torch.tensor([1, 2])) == pytest.approx(expected, rel=1e-4)


def test_head_bias_init_and_config_errors():
    model = timm.create_model("vit_p_32", img_size=16, depth=1, embed_dim=32, num_heads=2, num_classes=7)
    init_head_bias(model, -6.9)
    assert torch.all(model.get_classifier().bias == -6.9)
    init_head_bias(model, None)
    assert torch.all(model.get_classifier().bias == -6.9)
    cfg = compose_config(["loss=sigmoid_bce"])
    assert (cfg.loss.head_bias_init, cfg.loss.label_smoothing) == (-6.9, 0.0)


@pytest.mark.e2e
def test_sigmoid_loss_trains_with_mixup_and_reports_its_val_loss(tmp_path):
    r = train(TINY + ["loss=sigmoid_bce", "mixup=big_vision", "loss.head_bias_init=-2.3"], tmp_path)
    assert r["status"] == "finished", r["error"]
    # 10 classes, bias -2.3 (p ~ 0.09): the first losses are near 10 x H(0.09) ~ 3.0, far from softmax's log(10)
    assert 1.5 < r["final_train_loss"] < 5.0
