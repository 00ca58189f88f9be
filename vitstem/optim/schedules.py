"""Learning-rate schedules: linear warm-up, then cosine, step or constant decay.

The schedule is a multiplicative factor on every param group's peak lr (so per-group lr multipliers are
kept), applied by torch's ``LambdaLR``. With ``t`` the step (or epoch, when ``interval=epoch``), ``W``
the warm-up length and ``T`` the total length:

- warm-up, ``t < W``: ``start + (1 - start) * t / W`` (``start = warmup_start_factor``; pycls: 0.1);
- cosine (half period, Loshchilov & Hutter 2017): ``min + (1 - min) * (1 + cos(pi * (t - W) / (T - W))) / 2``;
- step: ``max(min, gamma ** k)`` where ``k`` counts the ``milestones`` (fractions of ``T``) passed;
- constant: ``1``.

``warmup_overlap`` chooses how warm-up and decay meet. ``false`` (timm ``warmup_prefix``, big_vision): the
decay starts when warm-up ends, as above. ``true`` (pycls, Xiao et al.; DeiT up to the warm-up itself): the
decay is measured from ``t = 0`` over all ``T`` (``progress = t / T``) and during warm-up the ramp multiplies
it: pycls's ``get_epoch_lr`` is ``lr_fun(t) * (start * (1 - t / W) + t / W)``.
"""
from __future__ import annotations

import math
from functools import partial

DECAYS = ("cosine", "step", "constant")


def lr_factor(t: int, total: int, warmup: int, decay: str = "cosine", warmup_start_factor: float = 0.0,
              min_factor: float = 0.0, milestones: tuple[float, ...] = (), gamma: float = 0.1,
              warmup_overlap: bool = False) -> float:
    ramp = warmup_start_factor + (1.0 - warmup_start_factor) * t / warmup if t < warmup else 1.0
    if t < warmup and not warmup_overlap:
        return ramp
    if decay == "constant":
        return ramp
    if decay == "step":
        passed = sum(t >= m * total for m in milestones)
        return ramp * max(min_factor, gamma**passed)
    start = 0 if warmup_overlap else warmup
    progress = min(1.0, (t - start) / max(1, total - start))
    return ramp * (min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def schedule(total: int, warmup: int, decay: str, **kwargs):
    """``lr_factor`` with its lengths bound: the ``lr_lambda`` for ``torch.optim.lr_scheduler.LambdaLR``."""
    if decay not in DECAYS:
        raise ValueError(f"scheduler.decay={decay!r} is not one of {DECAYS}")
    if warmup >= total:
        raise ValueError(f"warm-up ({warmup}) must be shorter than training ({total}): lower scheduler.warmup")
    return partial(lr_factor, total=total, warmup=warmup, decay=decay, **kwargs)
