"""Every conf/experiment/*.yaml composes, passes the schema and trains one step of its own (shrunk) model with its
optimizer, parameter groups, loss, mixup and EMA; the five recipe bases run two steps end to end through the app (the
others differ from their base only in the parts the first test steps through)."""
from __future__ import annotations

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import compose_config, train
from vitstem.config import validate
from vitstem.train import module_groups
from vitstem.paths import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
BASES = ["xiao_peak", "xiao_stability", "deit", "wortsman_i1k", "wortsman_i21k"]  # every experiment's defaults start at one

# The experiment's own model, stem and attention, shrunk: 1 block of width 32 at 32 px (patch 16: 2 x 2 tokens).
SHRINK = ["data=synthetic", "model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.img_size=32",
          "data.img_size=32", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
          "data.loader.batch_size=8", "scheduler.warmup=0", "~callbacks.progress_bar",
          "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "trainer.accelerator=cpu",
          "trainer.devices=1", "trainer.strategy=auto", "trainer.precision=32-true",
          "callbacks.precise_bn.num_images=16", "trainer.accumulate_grad_batches=1"]

def composed(name, *overrides):
    return compose_config([f"experiment={name}", *overrides])


def test_every_experiment_starts_from_a_recipe_base():
    for name in set(EXPERIMENTS) - set(BASES):
        parents = OmegaConf.load(CONF_DIR / "experiment" / f"{name}.yaml").defaults
        assert any(p in BASES for p in parents if isinstance(p, str)), name


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_validates_and_trains_a_step(name):
    from vitstem.models.classifier import Classifier
    from vitstem.optim import build_optimizer

    header = (CONF_DIR / "experiment" / f"{name}.yaml").read_text()
    assert header.startswith("# @package _global_") and "vitstem-train experiment=" in header
    cfg = composed(name, *SHRINK)
    validate(cfg)
    data = hydra.utils.instantiate(cfg.data, _convert_="all")
    groups = module_groups(cfg)
    module = Classifier(**groups, num_classes=data.num_classes, img_size=data.img_size)
    optimizer, rows = build_optimizer(module.model, groups["optimizer"], groups["weight_decay"], 8)
    assert len(rows) == sum(p.requires_grad for p in module.model.parameters())  # every parameter in a group
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, data.num_classes, (8,))
    if module.mixup is not None:
        x, y = module.mixup(x, y)
    before = [p.detach().clone() for p in module.model.parameters()]
    loss = module.criterion(module(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, p) for a, p in zip(before, module.model.parameters()))
    assert (module.ema is not None) == bool(cfg.ema)


@pytest.mark.e2e
@pytest.mark.parametrize("name", BASES)
def test_recipe_base_runs(name, tmp_path):
    r = train([f"experiment={name}", *SHRINK], tmp_path)
    assert r["status"] == "finished" and r["steps"] == 2, r["error"]
    cfg = composed(name)
    assert (r["final_val_ema_acc1"] is not None) == bool(cfg.ema)


def test_recipe_details_beyond_the_recipe_table():
    """What tests/test_recipes.py does not cover: SGD's Nesterov, the decay skip lists, qk-LayerNorm, ReLU's alpha."""
    sgd = composed("xiao_stability_c_4gf_sgd").optimizer
    assert sgd.momentum == 0.9 and sgd.nesterov
    assert (composed("xiao_c_4gf").weight_decay.skip_1d, list(composed("xiao_c_4gf").weight_decay.skip)) == (True, [])
    assert "(^|\\.)pos_embed$" in composed("wang_deit_s_scaled_relu").weight_decay.skip
    assert composed("wang_deit_s_scaled_relu", "model/stem=scaled_relu_no_bn").model.stem.norm != "batchnorm"
    relu = composed("wortsman_s16_relu").model.attention
    assert (relu.activation, relu.alpha, relu.qk_norm) == ("relu", 1.0, True)
    base = composed("wortsman_s16_relu", "model/attention=softmax_qknorm").model.attention
    assert (base.activation, base.qk_norm) == ("softmax", True)
    assert composed("wortsman_i21k_s16_relu").model.name == "vit_s16"


@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if e.startswith("wortsman_") and e.endswith("_relu")])
def test_each_wortsman_model_takes_its_row_of_the_augmentation_table(name):
    """conf/paper/wortsman_augment.yaml is read through the bases; an alias that spells an "off" cell agrees with it."""
    cfg = composed(name)
    row = OmegaConf.load(CONF_DIR / "paper" / "wortsman_augment.yaml")["i21k" if "i21k" in name else "i1k"][cfg.model.name]
    assert cfg.data.augment.auto_augment == row.randaugment
    assert (cfg.mixup.mixup_alpha if cfg.mixup else 0) == row.mixup
