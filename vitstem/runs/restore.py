"""Checkpoints read safely (the reading side of :mod:`vitstem.runs.checkpoint`): weights-only loading, the resume
check (``ckpt_path``: a vitstem checkpoint of this model) and weight init (``init_from``)."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from vitstem.config import ConfigError

log = logging.getLogger("vitstem")
# What a vitstem-train checkpoint holds besides the weights; resuming needs all of it.
RESUME_KEYS = ("pytorch-lightning_version", "state_dict", "optimizer_states", "lr_schedulers", "loops", "epoch",
               "global_step", "hyper_parameters")


def load_checkpoint(path: str | Path) -> dict:
    """``torch.load(path, weights_only=True)`` to the CPU: tensors and plain containers, never pickled code."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {path} does not exist: check the path") from None
    except Exception as e:  # torch.load raises many kinds on a file that is not a checkpoint
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if refused:
            raise ConfigError(f"checkpoint {path} needs the pickled object {refused[1]} besides tensors, so it was not "
                              "loaded: vitstem loads weights only (torch.load weights_only=True); if you trust the "
                              "file, re-save its tensors with torch.save(state_dict, path)") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e)) or re.search(r"(.*)", str(e))
        raise ConfigError(f"checkpoint {path} cannot be read by torch.load ({type(e).__name__}: {detail[1]}): is it "
                          "a complete torch checkpoint?") from None
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a dict of tensors "
                          "(a state_dict)")
    return checkpoint


def check_resumable(path: str | Path) -> int:
    """Refuse a ``ckpt_path`` that vitstem-train did not write (a timm state_dict, another project's checkpoint);
    return its ``global_step``."""
    checkpoint = load_checkpoint(path)
    missing = [k for k in RESUME_KEYS if k not in checkpoint]
    hparams = checkpoint.get("hyper_parameters")
    if not missing and not (isinstance(hparams, dict) and "model" in hparams):
        missing = ["hyper_parameters['model'] (it was not written by vitstem-train)"]
    if missing:
        raise ConfigError(f"ckpt_path={path} is not a vitstem checkpoint to resume: it lacks {', '.join(missing)}; to "
                          f"start a new run from its weights only, use init_from={path} instead of ckpt_path")
    return int(checkpoint["global_step"])


def shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """The shape of every model tensor (``model.*``) in a vitstem checkpoint (memory-mapped: no data is read)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    return {k: tuple(v.shape) for k, v in state.items()
            if k.startswith("model.") and isinstance(v, torch.Tensor)}


def check_same_model(path: str | Path, module: nn.Module) -> None:
    """Refuse to resume ``path`` into ``module`` when its model differs (tensor names or shapes), in one line,
    before any compute: Lightning's own key-mismatch error comes mid-start as a wall of names."""
    saved = shapes(path)
    own = {k: tuple(v.shape) for k, v in module.state_dict().items() if k.startswith("model.")}
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    other = [f"{k} {list(saved[k])} vs {list(own[k])}" for k in sorted(set(own) & set(saved)) if own[k] != saved[k]]
    if missing or unexpected or other:
        first = (other or [f"missing {k}" for k in missing] or [f"unexpected {k}" for k in unexpected])[0]
        raise ConfigError(f"ckpt_path={path} holds a checkpoint of another model ({len(missing)} tensors missing, "
                          f"{len(unexpected)} unexpected, {len(other)} of other shapes, e.g. {first}): resume it with "
                          "the settings it was trained with, or use init_from= to start from the weights that fit")


def model_weights(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The model's tensors in a checkpoint: a Lightning ``state_dict`` (its ``model.`` prefix stripped, so the
    EMA copy is left out), a ``model`` or ``state_dict`` entry (timm, DeiT), or the dict itself (a state_dict)."""
    weights = checkpoint.get("state_dict", checkpoint.get("model", checkpoint))
    weights = weights if isinstance(weights, dict) else {}
    if any(k.startswith("model.") for k in weights):
        weights = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
    return {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}


def init_weights(model: nn.Module, path: str | Path) -> dict:
    """Load the tensors of ``path`` that fit ``model`` (same name and shape) and return what matched and what not.

    The report lists ``matched``, ``missing`` (in the model, not in the checkpoint), ``unexpected`` (the other way)
    and ``shape_mismatch`` (name: checkpoint and model shapes; such tensors are skipped, e.g. a head for another
    number of classes). A checkpoint that shares no tensor with the model is refused.
    """
    weights, own = model_weights(load_checkpoint(path)), model.state_dict()
    shared = [k for k in own if k in weights]
    matched = [k for k in shared if weights[k].shape == own[k].shape]
    report = {"path": str(path), "matched": matched, "missing": [k for k in own if k not in weights],
              "unexpected": [k for k in weights if k not in own],
              "shape_mismatch": {k: {"checkpoint": list(weights[k].shape), "model": list(own[k].shape)}
                                 for k in shared if k not in matched}}
    if not matched:
        raise ConfigError(f"init_from={path}: none of its {len(weights)} tensors fits the model (names or shapes "
                          f"differ, e.g. {report['unexpected'][:2] or list(report['shape_mismatch'])[:2]}): is it a "
                          "checkpoint of this model?")
    model.load_state_dict({k: weights[k] for k in matched}, strict=False)
    log.info("init_from %s: %d of the model's %d tensors loaded, %d unexpected in the checkpoint", path, len(matched),
             len(own), len(report["unexpected"]))
    if report["missing"] or report["shape_mismatch"]:
        log.warning("init_from: these keep their fresh init: missing %s, shape mismatch %s", report["missing"],
                    report["shape_mismatch"])
    return report
