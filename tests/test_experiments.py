"""Every conf/experiment/*.yaml composes, encodes its paper's numbers, and runs two steps on a tiny model."""
from __future__ import annotations

import pytest

from tests.helpers import compose_config, train
from vitstem.paths import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))

# The experiment's own model, stem and attention, shrunk: 1 block of width 32 at 32 px (patch 16: 2 x 2 tokens).
SHRINK = ["data=synthetic", "model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.img_size=32",
          "data.img_size=32", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
          "data.loader.batch_size=8", "scheduler.warmup=0", "~callbacks.progress_bar",
          "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "trainer.accelerator=cpu",
          "trainer.devices=1", "trainer.strategy=auto", "trainer.precision=32-true",
          "callbacks.precise_bn.num_images=16", "trainer.accumulate_grad_batches=1"]

def composed(name, *overrides):
    return compose_config([f"experiment={name}", *overrides])


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs(name, tmp_path):
    header = (CONF_DIR / "experiment" / f"{name}.yaml").read_text()
    assert header.startswith("# @package _global_") and "vitstem-train experiment=" in header
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
