"""The optimizer group: every conf/optimizer/*.yaml builds, at the linearly scaled lr (Goyal et al. 2017)."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from vitstem.optim import build_optimizer, scaled_lr
from vitstem.paths import CONF_DIR

NAMES = sorted(p.stem for p in (CONF_DIR / "optimizer").glob("*.yaml"))


def test_linear_scaling_rule():
    assert scaled_lr(1e-3, 2048, 256) == pytest.approx(1.25e-4)   # Xiao: base lr at batch 2048
    assert scaled_lr(5e-4, 512, 1024) == pytest.approx(1e-3)      # DeiT: 5e-4 x batch / 512
    assert scaled_lr(1e-3, 4096, 4096) == pytest.approx(1e-3)     # Wortsman: batch 4096


@pytest.mark.parametrize("name", NAMES)
def test_optimizer_builds_and_steps(name):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "optimizer" / f"{name}.yaml"))
    model = nn.Linear(4, 3)
    policy = {"decay": "all", "skip_1d": True, "skip": [], "multipliers": []}
    opt, _ = build_optimizer(model, cfg, policy, global_batch_size=4 * cfg["ref_batch_size"])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([4 * cfg["lr"]] * 2)
    assert opt.defaults["lr"] == pytest.approx(4 * cfg["lr"])
    before = model.weight.detach().clone()
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)
    if name == "sgd":
        assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    if name == "adamw":  # torch's fused kernel, on CPU too
        assert opt.defaults["fused"] is True


def test_weight_decay_scaled_by_schedule_is_not_multiplied_by_the_lr():
    """big_vision (Wortsman): each step decays by wd x the schedule factor, here wd = 1e-4 whatever the lr."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "optimizer" / "adamw.yaml"))
    cfg.update(lr=1e-3, ref_batch_size=4096, weight_decay=1e-4, weight_decay_scaled_by="schedule")
    model = nn.Linear(4, 3, bias=False)
    policy = {"decay": "all", "skip_1d": True, "skip": [], "multipliers": []}
    for batch in (4096, 512):  # the lr scales with the batch; the decay per step must not
        opt, _ = build_optimizer(model, cfg, policy, global_batch_size=batch)
        group = opt.param_groups[0]
        assert group["lr"] * group["weight_decay"] == pytest.approx(1e-4)
