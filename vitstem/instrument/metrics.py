"""The metrics of :mod:`vitstem.instrument` as plain functions of tensors and models (no Lightning).

Blocks: a ViT's parameters are grouped in network order into ``stem`` (everything before the first
transformer block: ``patch_embed``, ``cls_token``, ``pos_embed``, ``reg_token``, ``norm_pre``),
``block_00``, ``block_01``, ... (``blocks.<i>``) and ``head`` (``norm``, ``fc_norm``, ``attn_pool``,
``head``). A parameter that fits none (a model that is not a timm ViT) falls into ``other``, last.

- Norms: :func:`block_norms`, the L2 norm of a list of tensors aggregated per block: one ``_foreach_norm`` (fused
  on a GPU, and on a CPU many times faster than a float64 reduction) and no host sync.
- Spikes: :class:`SpikeDetector`, a value above ``factor`` x the median of the last ``window`` values.
- Divergence: :func:`first_nonfinite`, where a step first went non-finite.
- Tokens: :func:`token_diversity` (Gong et al. 2021, as papers.md section 2 reads Wang et al.) and the
  attention statistics :func:`attention_weights`, :func:`softmax_entropy`, :func:`zero_fraction`,
  :func:`row_sums`; :func:`block_statistics` computes all of them for a model on one batch with hooks.
- Cost: :func:`train_flops_per_image`, :func:`peak_flops`, :func:`compute_dtype`.
"""
from __future__ import annotations

import re
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

STEM, HEAD, OTHER = "stem", "head", "other"
# A value this large is as good as non-finite: its square (what a LayerNorm's variance or an L2 norm computes)
# overflows float32 and bfloat16 (largest value ~2**128).
OVERFLOW = 2.0 ** 64
_STEM = re.compile(r"^(patch_embed|cls_token|pos_embed|reg_token|norm_pre)(\.|$)")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_HEAD = re.compile(r"^(norm|fc_norm|attn_pool|head)(\.|$)")


def block_name(i: int) -> str:
    return f"block_{i:02d}"


def block_of(name: str) -> str:
    """The block of parameter ``name`` (a name inside the timm model): ``stem``, ``block_<i>``, ``head`` or ``other``."""
    if _STEM.match(name):
        return STEM
    if m := _BLOCK.match(name):
        return block_name(int(m.group(1)))
    return HEAD if _HEAD.match(name) else OTHER


def _order(block: str) -> tuple:
    return {STEM: (0, 0), HEAD: (2, 0), OTHER: (3, 0)}.get(block) or (1, int(block.split("_")[1]))


def block_layout(names: Iterable[str]) -> tuple[list[str], list[int]]:
    """The blocks present, in network order, and the index into that list of each of ``names``."""
    of = [block_of(n) for n in names]
    blocks = sorted(set(of), key=_order)
    return blocks, [blocks.index(b) for b in of]


def block_norms(tensors: Sequence[torch.Tensor], index: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """The L2 norm of the ``tensors`` of each block, shape ``(n_blocks,)``, float64, on their device.

    ``index[j]`` is the block of ``tensors[j]``. A non-finite element makes its block's norm non-finite (NaN
    or inf), and so does a tensor whose norm is :data:`OVERFLOW` or more (each tensor's norm is reduced in its own
    dtype; blocks and the total are summed in float64); an empty block has norm 0. No host-device sync.
    """
    norms = torch.stack(torch._foreach_norm(list(tensors))).double()
    return torch.zeros(n_blocks, dtype=torch.float64, device=norms.device).index_add_(0, index, norms.square()).sqrt_()


def total_norm(block: np.ndarray | torch.Tensor):
    """The norm of all blocks together from their norms."""
    return (block ** 2).sum() ** 0.5


# -- spikes -----------------------------------------------------------------------------------------------------
class SpikeDetector:
    """Flags values above ``factor`` x the median of their own series over the last ``window`` steps.

    Works on ``n`` series at once (a vector per step, e.g. one gradient norm per block). Nothing is flagged
    before a series holds ``warmup`` finite values; non-finite values are never flagged (divergence handles them)
    and are left out of the median. A flagged value does count in later medians (the median is robust to it).
    """

    def __init__(self, factor: float, window: int, warmup: int):
        self.factor, self.window, self.warmup = float(factor), int(window), int(warmup)
        self.history: deque = deque(maxlen=self.window)

    def update(self, values) -> tuple[np.ndarray, np.ndarray]:
        """``(spike, median)`` per series for this step's ``values`` (median NaN before there is history)."""
        values = np.asarray(values, dtype=float).reshape(-1)
        if self.history:
            past = np.stack(self.history)
            count = np.isfinite(past).sum(0)
            with warnings.catch_warnings():  # a series with no finite value yet: "All-NaN slice"
                warnings.simplefilter("ignore", RuntimeWarning)
                median = np.nanmedian(past, axis=0)
        else:
            count, median = np.zeros(values.shape, int), np.full(values.shape, np.nan)
        with np.errstate(invalid="ignore"):
            spike = (count >= self.warmup) & np.isfinite(values) & (values > self.factor * median)
        self.history.append(np.where(np.isfinite(values), values, np.nan))
        return spike, median

    def state_dict(self) -> dict:
        return {"history": [row.tolist() for row in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque((np.asarray(r, dtype=float) for r in state["history"]), maxlen=self.window)


def spike_events(step: int, blocks: Sequence[str], grad: np.ndarray, grad_spike: np.ndarray, grad_median: np.ndarray,
                 loss: float, loss_spike: bool, loss_median: float) -> list[dict]:
    """This step's spike records: one ``kind: grad`` if some block's gradient norm (``grad[:-1]``) or the total
    (``grad[-1]``) spiked, one ``kind: loss`` if the loss did. ``block`` is the first block, in network order,
    whose gradient norm is above threshold at this step (null if none), ``blocks`` all of them; ``ratio`` is
    the value over its running median (the first block's, else the total's, for ``grad``)."""
    above = [blocks[i] for i in np.flatnonzero(grad_spike[:-1])]
    first = int(np.flatnonzero(grad_spike[:-1])[0]) if above else len(blocks)  # the total is grad[-1]
    events = []
    if grad_spike.any():
        events.append({"step": step, "kind": "grad", "block": above[0] if above else None, "blocks": above,
                       "ratio": float(grad[first] / grad_median[first])})
    if loss_spike:
        events.append({"step": step, "kind": "loss", "block": above[0] if above else None, "blocks": above,
                       "ratio": float(loss / loss_median)})
    return events


# -- divergence -------------------------------------------------------------------------------------------------
def first_nonfinite(loss: float, act: np.ndarray, grad: np.ndarray, param: np.ndarray, head: int,
                    grads_decide: bool = True) -> tuple[str, int] | None:
    """Where one training step first went non-finite, in the order it computes: ``(phase, block index)`` or None.

    - ``forward``: the loss is non-finite; the block is the first, in network order, whose output (``act``, the
      largest absolute output value of each block) is non-finite or at least :data:`OVERFLOW` (a stem whose weights
      blew up gives a finite but huge output, and the LayerNorm of the next block turns it into NaN: that is the
      stem's doing), else ``head`` (the loss itself overflowed);
    - ``backward``: a gradient is non-finite (the loss is not); backpropagation runs from the loss towards the
      input, so the block is the one *nearest the loss* among those with a non-finite gradient;
    - ``update``: the parameters after the optimizer step are non-finite (loss and gradients were not); the
      first such block.

    With a gradient scaler (float16) non-finite gradients are expected and the step is skipped: pass
    ``grads_decide=False``.
    """
    if not np.isfinite(loss):
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~(np.abs(act) < OVERFLOW))  # NaN compares False
        return "forward", int(bad[0]) if bad.size else head
    bad = np.flatnonzero(~np.isfinite(grad))
    if grads_decide and bad.size:
        return "backward", int(bad[-1])
    bad = np.flatnonzero(~np.isfinite(param))
    return ("update", int(bad[0])) if bad.size else None


# -- tokens and attention ---------------------------------------------------------------------------------------
def token_diversity(tokens: torch.Tensor) -> torch.Tensor:
    """Mean absolute cosine similarity between distinct tokens, averaged over the images of the batch:

        P(h) = 1 / (n (n - 1)) * sum_{i != j} |h_i . h_j| / (|h_i| |h_j|)

    ``tokens`` is ``(B, n, C)``: patch tokens only (leave the class token out). 1 when all tokens are parallel,
    0 when they are orthogonal; lower is more diverse. A zero token counts as orthogonal to every other.
    """
    n = tokens.shape[1]
    if n < 2:
        return torch.tensor(float("nan"))
    h = F.normalize(tokens.detach().float(), dim=-1)
    sim = (h @ h.transpose(1, 2)).abs()
    off = sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(-1)
    return (off / (n * (n - 1))).mean()


def attention_weights(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The attention weights ``(B, heads, N, N)`` of a timm ``Attention`` (or vitstem ``ViTAttention``) for its
    input ``x`` ``(B, N, C)``, and whether they are softmax weights.

    Recomputed from q and k as the layer computes them (qk-norm included; fused SDPA never exposes them):
    ``softmax(q.k / sqrt(d))``, or ``L**-alpha * h(q.k / sqrt(d))`` for point-wise attention, L = N.
    """
    from vitstem.models.attention import ACTIVATIONS

    B, N, _ = x.shape
    q, k, _ = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    activation = getattr(attn, "activation", "softmax")
    if activation == "softmax":
        return scores.softmax(-1), True
    h = getattr(attn, "act", None) or ACTIVATIONS[activation]  # the layer's own h, else the registry's (a module class)
    return (h() if isinstance(h, type) else h)(scores) * float(N) ** -attn.alpha, False


def softmax_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Mean over queries (and images, heads) of each query's entropy ``-sum_j a_ij log a_ij``, in nats."""
    return -torch.xlogy(weights, weights).sum(-1).mean()


def zero_fraction(weights: torch.Tensor) -> torch.Tensor:
    """The fraction of attention weights that are exactly zero."""
    return (weights == 0).float().mean()


def row_sums(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation, over queries (images, heads), of each query's sum of weights ``sum_j a_ij``."""
    sums = weights.sum(-1)
    return sums.mean(), sums.std() if sums.numel() > 1 else torch.zeros(())


@torch.no_grad()
def block_statistics(model: nn.Module, x: torch.Tensor, attention: bool = True) -> dict[str, float]:
    """Token diversity of the stem's output and of every block's output, and (``attention``) each block's attention
    statistics, for a timm ``VisionTransformer`` on the batch ``x``; eval mode, no gradients, hooks removed after.

    Keys: ``diversity/stem``, ``diversity/block_<i>``; softmax attention ``attention/entropy/block_<i>``;
    point-wise attention ``attention/zero_fraction/block_<i>``, ``attention/row_sum_mean/block_<i>`` and
    ``attention/row_sum_std/block_<i>``. The class (and register) tokens are left out of the diversity; the
    attention statistics cover every query and key. Empty for a model without ``patch_embed`` and ``blocks``.
    """
    if not (hasattr(model, "patch_embed") and hasattr(model, "blocks")):
        return {}
    prefix = getattr(model, "num_prefix_tokens", 0)
    out: dict[str, torch.Tensor] = {}

    def tokens(name, drop):
        def hook(module, args, output):
            out[f"diversity/{name}"] = token_diversity((output[0] if isinstance(output, tuple) else output)[:, drop:])
        return hook

    def attn_stats(name):
        def hook(module, args, kwargs):
            weights, softmax = attention_weights(module, args[0] if args else kwargs["x"])
            if softmax:
                out[f"attention/entropy/{name}"] = softmax_entropy(weights)
            else:
                out[f"attention/zero_fraction/{name}"] = zero_fraction(weights)
                out[f"attention/row_sum_mean/{name}"], out[f"attention/row_sum_std/{name}"] = row_sums(weights)
        return hook

    handles = [model.patch_embed.register_forward_hook(tokens(STEM, 0))]
    for i, blk in enumerate(model.blocks):
        handles.append(blk.register_forward_hook(tokens(block_name(i), prefix)))
        if attention and hasattr(getattr(blk, "attn", None), "qkv"):
            handles.append(blk.attn.register_forward_pre_hook(attn_stats(block_name(i)), with_kwargs=True))
    was_training = model.training
    try:
        model.eval()
        model.forward(x)  # not model(x): an in-place torch.compile'd model runs eagerly here, hooks and all
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return dict(zip(out, torch.stack([v.float() for v in out.values()]).tolist())) if out else {}  # one sync


# -- cost -------------------------------------------------------------------------------------------------------
def train_flops_per_image(build: Callable[[], nn.Module], img_size: int, in_chans: int = 3) -> int:
    """FLOPs of one training step (forward and backward) per image, counted by Lightning's ``measure_flops`` (torch's
    FLOP counter: matmuls and convs, 2 per multiply-add) on a meta-device copy built by ``build``: no memory, no time."""
    from lightning.fabric.utilities.throughput import measure_flops

    with torch.device("meta"):
        model = build()
        x = torch.empty(1, in_chans, img_size, img_size)
    model.train()
    return int(measure_flops(model, lambda: model(x), lambda y: y.sum()))


# Dense peak FLOP/s per device for GPUs that Lightning's table (``get_available_flops``) lacks: every H200 gets the
# H100 SXM's figures (same GH100 compute; Lightning knows only the "H200 SXM1"/"NVL1" names, with the datasheet's
# with-sparsity figures). Keys are lower-case substrings of ``torch.cuda.get_device_name``.
PEAK_FLOPS: dict[str, dict] = {
    "h200": {torch.float64: 33.5e12, torch.float32: 66.9e12, "tfloat32": 494.7e12, torch.bfloat16: 989.4e12,
             torch.float16: 989.4e12},
}


def loss_scale(trainer, optimizer) -> torch.Tensor | None:
    """The gradient scaler's scale (a device tensor: no sync) when the gradients seen before ``optimizer`` steps are
    still multiplied by it: ``16-mixed`` with an optimizer that unscales inside its step (a fused one), which Lightning
    leaves scaled; None when they are the true gradients."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not getattr(optimizer, "_step_supports_amp_scaling", False):
        return None
    return scaler._get_scale_async()


def compute_dtype(precision: str) -> torch.dtype:
    """The matmul dtype of a Lightning precision setting (``32-true``, ``bf16-mixed``, ``16-mixed``, ``64-true``)."""
    p = str(precision)
    if p.startswith("bf16"):
        return torch.bfloat16
    if p.startswith("16"):
        return torch.float16
    return torch.float64 if p.startswith("64") else torch.float32


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's dense peak FLOP/s for ``dtype`` (float32 as TF32 when ``torch.get_float32_matmul_precision()`` is
    not ``highest``): :data:`PEAK_FLOPS`, else Lightning's table; None on CPU and for a GPU neither knows."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    for key, table in PEAK_FLOPS.items():
        if key in name:
            tf32 = dtype is torch.float32 and torch.get_float32_matmul_precision() != "highest"
            return table.get("tfloat32" if tf32 else dtype)
    from lightning.fabric.utilities.throughput import get_available_flops

    return get_available_flops(device, dtype)
