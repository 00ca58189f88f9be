"""Weight-decay and learning-rate groups: which parameter gets which weight decay and lr.

A policy (``conf/weight_decay/*.yaml``) is data:

- ``decay``: ``all`` (every parameter may be decayed) or ``kernels`` (only the weight matrices of
  ``nn.Linear`` and conv layers: big_vision's ``wd_mults=[('.*/kernel$', 1.0)]``);
- ``skip_1d``: no decay on 1-D parameters (norm gains and biases);
- ``skip``: regular expressions; a parameter whose name matches one gets no decay (e.g. ``pos_embed``);
- ``multipliers``: a list of ``{pattern, lr, wd}``; a parameter whose name matches ``pattern`` has its lr
  and weight decay multiplied by ``lr`` and ``wd`` (the first matching entry applies).

Named policies: ``timm`` (timm/DeiT: skip 1-D, position embedding, class token), ``pycls`` (Xiao's code:
skip norm gains and biases only; position embedding and class token are decayed), ``kernels``
(big_vision, Wortsman et al.) and ``all``. For a ViT, ``timm`` and ``kernels`` pick the same parameters.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

KERNEL_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class ParamRow:
    name: str
    shape: tuple[int, ...]
    group: str
    lr: float
    weight_decay: float


def assign(model: nn.Module, lr: float, weight_decay: float, decay: str = "all", skip_1d: bool = True,
           skip: list[str] = (), multipliers: list[dict] = ()) -> list[ParamRow]:
    """One row per trainable parameter: its group name, lr and weight decay under the policy."""
    if decay not in ("all", "kernels"):
        raise ValueError(f"weight_decay.decay={decay!r} must be 'all' or 'kernels'")
    kernels = {id(m.weight) for m in model.modules() if isinstance(m, KERNEL_MODULES)}
    rows = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decayed = (decay == "all" or id(p) in kernels) and not (skip_1d and p.ndim <= 1) \
            and not any(re.search(s, name) for s in skip)
        lr_mult, wd_mult, tag = 1.0, 1.0, ""
        for m in multipliers:
            if re.search(m["pattern"], name):
                lr_mult, wd_mult, tag = m.get("lr", 1.0), m.get("wd", 1.0), f"[{m['pattern']}]"
                break
        group = ("decay" if decayed else "no_decay") + tag
        rows.append(ParamRow(name, tuple(p.shape), group, lr * lr_mult, weight_decay * wd_mult if decayed else 0.0))
    return rows


def to_optimizer_groups(model: nn.Module, rows: list[ParamRow]) -> list[dict]:
    """torch optimizer param groups from the rows (one group per distinct group name)."""
    params = dict(model.named_parameters())
    groups: dict[str, dict] = {}
    for row in rows:
        g = groups.setdefault(row.group, {"name": row.group, "params": [], "lr": row.lr, "weight_decay": row.weight_decay})
        g["params"].append(params[row.name])
    return list(groups.values())


def format_table(rows: list[ParamRow]) -> str:
    """A tab-separated table: name, shape, group, lr, weight_decay."""
    lines = ["name\tshape\tgroup\tlr\tweight_decay"]
    lines += [f"{r.name}\t{list(r.shape)}\t{r.group}\t{r.lr:.6g}\t{r.weight_decay:.6g}" for r in rows]
    return "\n".join(lines) + "\n"


def summarize(rows: list[ParamRow]) -> dict[str, dict]:
    """Per group: number of tensors and parameters, lr and weight decay."""
    out: dict[str, dict] = {}
    for r in rows:
        s = out.setdefault(r.group, {"tensors": 0, "params": 0, "lr": r.lr, "weight_decay": r.weight_decay})
        s["tensors"] += 1
        n = 1
        for d in r.shape:
            n *= d
        s["params"] += n
    return out


def format_summary(summary: dict[str, dict]) -> str:
    """``summarize``'s output as a small fixed-width table (printed at the start of a run)."""
    lines = [f"{'group':<28} {'tensors':>7} {'params':>12} {'lr':>10} {'weight_decay':>12}"]
    lines += [f"{g:<28} {s['tensors']:>7} {s['params']:>12,} {s['lr']:>10.4g} {s['weight_decay']:>12.4g}"
              for g, s in summary.items()]
    return "\n".join(lines)
