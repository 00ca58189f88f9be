"""The resolvers vitstem's configs use, registered with OmegaConf on import (``import vitstem`` does it)."""
from __future__ import annotations

import glob
import hashlib
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

MAX_DIRNAME = 120


def dirname(overrides) -> str:
    """A run folder's name from the command's overrides (``${hydra.overrides.task}``, as Hydra's
    ``override_dirname`` sorts and joins them, without the keys that do not define a run:
    :data:`vitstem.runs.identity.NOT_DEFINING`), or from such a string: ``base`` when empty, ``/`` made ``.``,
    long ones hashed."""
    if not isinstance(overrides, str):
        from vitstem.runs.identity import defines_run

        overrides = ",".join(sorted(o for o in map(str, overrides) if defines_run(o.split("=", 1)[0])))
    name = overrides.replace("/", ".") or "base"
    if len(name) > MAX_DIRNAME:
        name = name[:MAX_DIRNAME - 9] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def basename(path) -> str:
    """The last part of a path: a run's wandb name is ``<name>-<run folder>``."""
    return Path(str(path)).name


def loguniform(u: float, bounds) -> float:
    """``u`` in [0, 1) mapped log-uniformly onto ``bounds = [low, high]``: the config resolver
    ``${vitstem_loguniform:u,[low,high]}``, for a study whose interval depends on another choice (Xiao's lr
    and wd intervals differ per optimizer: the sweeper samples ``u``, the config picks the interval)."""
    from vitstem.sweeps.random import Interval  # the sweeper's own log-uniform map (one formula)

    low, high = float(bounds[0]), float(bounds[1])
    if not 0 < low < high:
        raise ValueError(f"vitstem_loguniform: bounds {list(bounds)} must satisfy 0 < low < high")
    return Interval("u", low, high, log=True).value(float(u))

def precision(accelerator: str) -> str:
    """``${vitstem_precision:${trainer.accelerator}}``: ``bf16-mixed`` where the run will use a GPU that has
    bf16 (Ampere and later), else ``32-true``. Without an NVIDIA device file torch is not imported to ask (it
    takes seconds, and a configuration error should answer at once)."""
    if str(accelerator) not in ("auto", "gpu", "cuda") or os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return "32-true"
    if "torch" not in sys.modules and not glob.glob("/dev/nvidia[0-9]*"):
        return "32-true"
    import torch
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


for _name, _fn in (("vitstem_dirname", dirname), ("vitstem_basename", basename), ("vitstem_loguniform", loguniform),
                   ("vitstem_precision", precision)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)
