"""The ``loss`` config group: classification losses that take hard labels or mixup's soft targets.

- :class:`SoftmaxCrossEntropy` (``loss=softmax_ce``): softmax cross-entropy (pycls, DeiT).
- :class:`SigmoidCrossEntropy` (``loss=sigmoid_bce``): one binary cross-entropy per class, summed over the
  classes and averaged over the batch, as big_vision's ``sigmoid_xent`` (Wortsman et al. 2023's recipes).
  The sum matters: a mean over classes would make the gradient ``num_classes`` times smaller, and the
  recipe's gradient clipping at norm 1.0 would never act.

Targets are either class indices, smoothed here with ``label_smoothing``, or a dense ``(B, classes)`` matrix
(timm's ``Mixup`` output, already smoothed), used as given. ``head_bias_init`` (both options) sets the
classifier's bias at initialisation (:func:`init_head_bias`): big_vision starts a sigmoid head at -6.9
(i1k) or -10 (i21k), so that every class starts near probability 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data.mixup import one_hot
from torch import nn


def dense_targets(target: torch.Tensor, num_classes: int, label_smoothing: float) -> torch.Tensor:
    """``target`` as a ``(B, num_classes)`` float matrix: labels one-hot and smoothed (timm's ``one_hot``, as its
    ``Mixup`` smooths), dense targets unchanged."""
    if target.ndim == 2:
        return target
    off = label_smoothing / num_classes
    return one_hot(target, num_classes, on_value=1.0 - label_smoothing + off, off_value=off)


class SoftmaxCrossEntropy(nn.Module):
    def __init__(self, label_smoothing: float):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # torch's cross-entropy takes class probabilities too: mixup's targets, smoothed already
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing if target.ndim == 1 else 0.0)


class SigmoidCrossEntropy(nn.Module):
    def __init__(self, label_smoothing: float):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = dense_targets(target, logits.shape[-1], self.label_smoothing).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1).mean()


@torch.no_grad()
def init_head_bias(model: nn.Module, value: float | None) -> None:
    """Set the bias of ``model``'s classifier (timm's ``get_classifier()``) to ``value``; None leaves it."""
    if value is None:
        return
    head = model.get_classifier()
    if getattr(head, "bias", None) is None:
        raise ValueError(f"loss.head_bias_init={value}: the model's classifier {type(head).__name__} has no bias; "
                         "set loss.head_bias_init=null")
    head.bias.fill_(value)
