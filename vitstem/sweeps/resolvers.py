"""Config resolvers that studies use (registered on import; nothing here imports Hydra's plugins)."""
from __future__ import annotations

import math

from omegaconf import OmegaConf


def loguniform(u: float, bounds) -> float:
    """``u`` in [0, 1) mapped log-uniformly onto ``bounds = [low, high]``: the config resolver
    ``${vitstem_loguniform:u,[low,high]}``, for a study whose interval depends on another choice (Xiao's lr
    and wd intervals differ per optimizer: the sweeper samples ``u``, the config picks the interval)."""
    low, high = float(bounds[0]), float(bounds[1])
    if not 0 < low < high:
        raise ValueError(f"vitstem_loguniform: bounds {list(bounds)} must satisfy 0 < low < high")
    return math.exp(math.log(low) + float(u) * (math.log(high) - math.log(low)))


if not OmegaConf.has_resolver("vitstem_loguniform"):
    OmegaConf.register_new_resolver("vitstem_loguniform", loguniform)
