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
          "callbacks.precise_bn.num_images=16"]

# Xiao et al. 2021 Table 4 (batch 2048): model -> AdamW (lr, wd), SGD (lr, wd)
TABLE4 = {"p_1gf": ((2.0e-3, 0.20), (1.9, 1.3e-5)), "p_4gf": ((2.0e-3, 0.20), (1.9, 1.3e-5)),
          "p_18gf": ((1.0e-3, 0.24), (1.1, 1.2e-5)), "c_1gf": ((2.5e-3, 0.19), (1.9, 1.3e-5)),
          "c_4gf": ((1.0e-3, 0.24), (1.3, 2.2e-5)), "c_18gf": ((1.0e-3, 0.24), (1.1, 2.7e-5))}


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


@pytest.mark.parametrize("model", sorted(TABLE4))
@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_xiao_table4_cells(model, opt):
    cfg = composed(f"xiao_stability_{model}_{opt}")
    lr, wd = TABLE4[model][opt == "sgd"]
    assert (cfg.model.name, cfg.optimizer.lr, cfg.optimizer.weight_decay) == (f"vit_{model}", lr, wd)
    assert cfg.optimizer._target_ == {"adamw": "torch.optim.AdamW", "sgd": "torch.optim.SGD"}[opt]
    assert (cfg.optimizer.ref_batch_size, cfg.trainer.max_epochs) == (2048, 50)
    if opt == "sgd":
        assert cfg.optimizer.momentum == 0.9 and cfg.optimizer.nesterov


@pytest.mark.parametrize("size", ["p_1gf", "c_4gf", "p_18gf", "c_36gf"])
def test_xiao_peak_recipe(size):
    cfg = composed(f"xiao_{size}")
    lr, wd = (6e-4, 0.28) if size.endswith("36gf") else (1e-3, 0.24)
    assert (cfg.model.name, cfg.optimizer._target_, cfg.optimizer.lr, cfg.optimizer.weight_decay,
            cfg.optimizer.ref_batch_size) == (f"vit_{size}", "torch.optim.AdamW", lr, wd, 2048)
    s = cfg.scheduler
    assert (s.decay, s.warmup, s.warmup_unit, s.warmup_start_factor, s.interval, s.warmup_overlap) == \
        ("cosine", 5, "epochs", 0.1, "epoch", True)
    assert cfg.trainer.max_epochs == 400 and cfg.loss.label_smoothing == 0.1
    assert (cfg.weight_decay.skip_1d, list(cfg.weight_decay.skip)) == (True, [])  # pycls: tokens decayed
    assert (cfg.mixup.mixup_alpha, cfg.mixup.cutmix_alpha, cfg.mixup.switch_prob, cfg.mixup.label_smoothing) == \
        (0.8, 1.0, 0.5, 0.1)
    assert cfg.ema.horizon == 0.078 and cfg.ema.copy_during_warmup
    assert "drop_path_rate" not in cfg.model and cfg.trainer.gradient_clip_val is None


def test_wang_deit_recipe():
    cfg = composed("wang_deit_s_scaled_relu")
    assert cfg.model.name == "deit_s_scaled_relu" and cfg.model.drop_path_rate == 0.1
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.ref_batch_size) == (5e-4, 0.05, 512)
    assert (cfg.scheduler.warmup, cfg.scheduler.decay, cfg.trainer.max_epochs) == (5, "cosine", 300)
    assert "(^|\\.)pos_embed$" in cfg.weight_decay.skip and cfg.mixup.cutmix_alpha == 1.0
    assert composed("wang_deit_s_scaled_relu", "model/stem=scaled_relu_no_bn").model.stem.norm != "batchnorm"


def test_wortsman_recipe():
    cfg = composed("wortsman_s16_relu")
    assert cfg.model.name == "vit_s16" and (cfg.model.attention.activation, cfg.model.attention.alpha) == ("relu", 1.0)
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.ref_batch_size) == (1e-3, 0.1, 4096)
    assert (cfg.scheduler.warmup, cfg.scheduler.warmup_unit, cfg.scheduler.interval) == (10000, "steps", "step")
    assert cfg.weight_decay.decay == "kernels" and cfg.trainer.gradient_clip_val == 1.0
    assert cfg.trainer.max_epochs == 300 and not cfg.mixup and not cfg.ema
    base = composed("wortsman_s16_relu", "model/attention=softmax_qknorm").model.attention
    assert (base.activation, base.qk_norm) == ("softmax", True)
