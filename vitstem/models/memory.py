"""Peak GPU memory of a training step, known before it runs (and before it runs out).

    estimate = states + activations(batch) + backward transient

- **states**: per parameter, the weights and their gradients (4 bytes each; 2 for ``*-true`` half precision),
  the optimizer's state (:func:`optimizer_states` x 4 bytes: Adam's two moments, SGD's momentum), the EMA copy,
  and DDP's gradient buckets (one more gradient) when several processes train.
- **activations**: the tensors autograd keeps for the backward pass, counted exactly, per unique storage, by
  running the model's forward on the meta device (no memory, no time) under a stand-in for the GPU's precision:
  matmuls and convolutions in bf16/fp16 and norms in fp32 as autocast does (``*-mixed``), and torch's fused
  ``scaled_dot_product_attention`` keeping q, k, v, its output and the log-sum-exp as the GPU kernels do. The
  count is linear in the batch (``fixed + per_image x batch``). Point-wise attention keeps B x H x N^2 values per
  kept map and block (:data:`vitstem.models.attention.KEPT_MAPS`), which dominate at large N: ``attention_maps``.
- **transient**: the backward pass of the largest kept tensor holds two gradients of its size at once.

The estimate is for the eager model (``compile=false``; inductor keeps less). The start-of-run check
(:meth:`vitstem.models.classifier.Classifier.setup`) and ``vitstem-bench --memory`` use it; :func:`fit_batch`
suggests the per-device batch and ``trainer.accumulate_grad_batches`` that keep the global batch and fit.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from vitstem.models.attention import KEPT_MAPS

GB = 1e9
RESERVE = 0.1  # of the device's memory kept free: CUDA context, cuBLAS workspaces, allocator fragmentation


class _FusedAttention(torch.autograd.Function):
    """What a fused attention kernel (flash / memory-efficient) keeps for backward: q, k, v, out, log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # never called: the count runs the forward only
        raise NotImplementedError


_LOW = {F.linear, F.conv2d, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.addmm,
        torch.baddbmm}
_FP32 = {F.layer_norm, F.softmax, F.log_softmax, torch.Tensor.softmax}


class _GPUPrecision(TorchFunctionMode):
    """The GPU's forward as memory sees it: fused attention; with ``low`` (bf16/fp16) autocast's casts."""

    def __init__(self, low: torch.dtype | None):
        super().__init__()
        self.low = low

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = (self._cast(t, self.low) for t in args[:3]) if self.low else args[:3]
            return _FusedAttention.apply(q, k, v)
        if self.low is not None and func in _LOW:
            args, kwargs = self._cast(args, self.low), self._cast(kwargs, self.low)
        elif self.low is not None and func in _FP32:
            args, kwargs = self._cast(args, torch.float32), self._cast(kwargs, torch.float32)
        return func(*args, **kwargs)

    def _cast(self, value, dtype):
        if isinstance(value, torch.Tensor):
            return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
        if isinstance(value, (list, tuple)):
            return type(value)(self._cast(v, dtype) for v in value)
        if isinstance(value, dict):
            return {k: self._cast(v, dtype) for k, v in value.items()}
        return value


def precision_dtypes(precision: str) -> tuple[torch.dtype, torch.dtype | None]:
    """``(weight dtype, autocast dtype or None)`` of a Lightning precision setting."""
    p = str(precision)
    low = torch.bfloat16 if p.startswith("bf16") else torch.float16 if p.startswith("16") else None
    if low is not None and p.endswith("true"):
        return low, None
    return (torch.float64 if p.startswith("64") else torch.float32), low


def saved_bytes(model: nn.Module, x: torch.Tensor, low: torch.dtype | None = None) -> tuple[int, int]:
    """``(total, largest)`` bytes of the unique storages autograd keeps from ``model(x)`` (train mode)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _GPUPrecision(low):
        model(x)
    return sum(seen.values()), max(seen.values(), default=0)


def optimizer_states(optimizer: dict) -> int:
    """Tensors of parameter size an optimizer keeps: SGD one momentum buffer (none without momentum), others two."""
    name = str(optimizer.get("_target_", "")).rsplit(".", 1)[-1].lower()
    if name == "sgd":
        return 1 if optimizer.get("momentum") else 0
    return 2


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one device's peak in a training step at ``batch`` images (module docstring)."""
    batch: int
    params: int
    states: int
    activations_fixed: int
    activations_per_image: int
    attention_maps_per_image: int  # of activations_per_image: point-wise attention's kept N^2 tensors
    transient: int

    @property
    def activations(self) -> int:
        return self.activations_fixed + self.activations_per_image * self.batch

    @property
    def total(self) -> int:
        return self.states + self.activations + self.transient

    def at(self, batch: int) -> MemoryEstimate:
        """The same model at another batch (the transient, of the largest kept tensor, scales with it)."""
        return MemoryEstimate(**{**asdict(self), "batch": batch, "transient": self.transient * batch // self.batch})

    def summary(self) -> dict:
        return {"batch": self.batch, "estimate_gb": round(self.total / GB, 2), "states_gb": round(self.states / GB, 2),
                "activations_gb": round(self.activations / GB, 2),
                "attention_maps_gb": round(self.attention_maps_per_image * self.batch / GB, 2),
                "transient_gb": round(self.transient / GB, 2)}


def attention_maps(model: nn.Module, img_tokens: int | None = None) -> int:
    """Values of the N^2 tensors point-wise attention keeps per image: sum over blocks of kept x H x N^2."""
    total = 0
    for block in getattr(model, "blocks", []):
        attn = getattr(block, "attn", None)
        kept = KEPT_MAPS.get(getattr(attn, "activation", "softmax"), 0)
        if kept:
            n = img_tokens if img_tokens is not None else _tokens(model)
            total += kept * attn.num_heads * n * n
    return total


def _tokens(model: nn.Module) -> int:
    return model.patch_embed.num_patches + getattr(model, "num_prefix_tokens", 0)


def estimate(build: Callable[[], nn.Module], batch: int, img_size: int, precision: str, optimizer_states: int = 2,
             ema: bool = False, ddp: bool = False, in_chans: int = 3) -> MemoryEstimate:
    """The peak bytes of one training step at ``batch`` images per device (module docstring); ``build`` makes the
    model (it is called on the meta device)."""
    weight, low = precision_dtypes(precision)
    with torch.device("meta"):  # batches 2 and 4: from 2 images on the count is linear (at 1 a reshape is a view)
        model = build().to(weight).train()
        counts = [saved_bytes(model, torch.empty(b, in_chans, img_size, img_size, dtype=weight), low) for b in (2, 4)]
    (two, _), (four, largest) = counts
    per_image = (four - two) // 2
    params = sum(p.numel() for p in model.parameters())
    width = torch.empty((), dtype=weight).element_size()
    copies = 2 + optimizer_states + int(ema) + int(ddp)  # weights, gradients, optimizer, EMA, DDP buckets
    maps_dtype = low or weight
    maps = attention_maps(model) * torch.empty((), dtype=maps_dtype).element_size()
    return MemoryEstimate(batch=batch, params=params, states=params * width * copies,
                          activations_fixed=two - 2 * per_image, activations_per_image=per_image,
                          attention_maps_per_image=maps, transient=largest * batch // 2)  # 2 gradients of the largest (at b=4)


def fit_batch(est: MemoryEstimate, accumulate: int, memory: int, reserve: float = RESERVE) -> tuple[int, int] | None:
    """``(per-device batch, accumulate_grad_batches)`` with the same images per device and optimizer step
    (``est.batch x accumulate``) whose estimate fits ``memory`` bytes less the ``reserve`` share: the fewest
    accumulation steps that fit. None if not even one image fits."""
    step_images = est.batch * accumulate
    budget = memory * (1 - reserve)
    for k in range(1, step_images + 1):
        if step_images % k == 0 and est.at(step_images // k).total <= budget:
            return step_images // k, k
    return None


def largest_batch(est: MemoryEstimate, memory: int, reserve: float = RESERVE) -> int:
    """The largest per-device batch whose estimate fits ``memory`` bytes less the ``reserve`` share (0: none)."""
    budget = memory * (1 - reserve)
    per_image = est.activations_per_image + est.transient / est.batch
    return max(0, int((budget - est.states - est.activations_fixed) // per_image))

