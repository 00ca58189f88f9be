"""Every experiment's composed recipe against the papers' values, kept here (not read from conf/ or vitstem.recipes).

Sources: ../shared/papers.md (Xiao et al. 2021 sections 5.4, 6 and Tables 2 / 4, pycls defaults; Wortsman et al.
2023 with big_vision configs/vit_i1k.py and vit_i21k.py), DeiT's main.py (Wang et al. 2022: our reading).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import compose_config
from vitstem.recipes import EXPERIMENTS, main as recipes_main

XIAO = dict(opt="AdamW", betas=(0.9, 0.999), lr=1e-3, wd=0.24, wd_by="lr", ref=2048, wd_groups="pycls",
            warmup=(5, "epochs"), warmup_start=("factor", 0.1), end=("factor", 0.0), interval="epoch", overlap=True,
            epochs=400, crop=(0.08, 1.0), aa="v0", lighting=0.1, re=0.0, repeats=1, mixup=(0.8, 1.0),
            smoothing=0.1, loss="Softmax", head_bias=None, ema=("horizon", 0.078), precise_bn=8192, clip=None,
            drop_path=0.0, cls=True, rep=False, mean=0.485, holdout=0.0)
DEIT = dict(XIAO, lr=5e-4, wd=0.05, ref=512, wd_groups="timm", warmup_start=("lr", 1e-6), end=("lr", 1e-5),
            epochs=300, aa="rand-m9-mstd0.5-inc1", lighting=0.0, re=0.25, repeats=3, ema=("decay", 0.99996),
            precise_bn=0, drop_path=0.1)
I1K = dict(XIAO, lr=1e-3, wd=1e-4, wd_by="schedule", ref=4096, wd_groups="kernels", warmup=(10000, "steps"),
           warmup_start=("factor", 0.0), interval="step", overlap=False, epochs=300, crop=(0.05, 1.0),
           aa="rand-m15-n2-mmax15", lighting=0.0, mixup=(0.5, 0.0), smoothing=0.0, loss="Sigmoid", head_bias=-6.9,
           ema=None, precise_bn=0, clip=1.0, rep=True, mean=0.5, holdout=0.01)
I21K = dict(I1K, epochs=30, head_bias=-10.0, cls=False, rep=False, holdout=0.0039)
# Xiao Table 4 (batch 2048): AdamW (lr, wd), SGD (lr, wd)
TABLE4 = {"p_1gf": ((2.0e-3, 0.20), (1.9, 1.3e-5)), "p_4gf": ((2.0e-3, 0.20), (1.9, 1.3e-5)),
          "p_18gf": ((1.0e-3, 0.24), (1.1, 1.2e-5)), "c_1gf": ((2.5e-3, 0.19), (1.9, 1.3e-5)),
          "c_4gf": ((1.0e-3, 0.24), (1.3, 2.2e-5)), "c_18gf": ((1.0e-3, 0.24), (1.1, 2.7e-5))}
I21K_AUG = {"s32": (None, None), "s16": ("rand-m0-n2-mmax15", None), "b32": ("rand-m10-n2-mmax15", (0.2, 0.0)),
            "b16": ("rand-m10-n2-mmax15", (0.2, 0.0)), "l16": ("rand-m15-n2-mmax15", (0.5, 0.0))}


def expected(name: str) -> dict:
    if m := re.fullmatch(r"xiao_stability_(\w+?)_(adamw|sgd)", name):
        (lr, wd) = TABLE4[m[1]][m[2] == "sgd"]
        return dict(XIAO, epochs=50, lr=lr, wd=wd, **({"opt": "SGD", "betas": None} if m[2] == "sgd" else {}))
    if name == "xiao_stability":
        return dict(XIAO, epochs=50)
    if name.startswith("xiao_"):
        return dict(XIAO, lr=6e-4, wd=0.28) if name.endswith("36gf") else XIAO
    if name == "deit" or name.startswith("wang_"):
        return DEIT
    if m := re.fullmatch(r"wortsman_i21k_(\w+)_relu", name):
        aa, mixup = I21K_AUG[m[1]]
        return dict(I21K, aa=aa, mixup=mixup)
    if name == "wortsman_i21k":
        return I21K
    return dict(I1K, mixup=(0.2, 0.0)) if name == "wortsman_s32_relu" else I1K


def actual(cfg) -> dict:
    o, s, a, m = cfg.optimizer, cfg.scheduler, cfg.data.augment, cfg.mixup
    start = ("lr", s.warmup_start_lr) if s.warmup_start_lr is not None else ("factor", s.warmup_start_factor)
    end = ("lr", s.min_lr) if s.min_lr is not None else ("factor", s.min_factor)
    ema = None if not cfg.ema else (("decay", cfg.ema.decay) if cfg.ema.decay is not None else ("horizon", cfg.ema.horizon))
    return dict(opt=o._target_.rsplit(".", 1)[-1], betas=tuple(o.betas) if "betas" in o else None, lr=o.lr,
                wd=o.weight_decay, wd_by=o.weight_decay_scaled_by, ref=o.ref_batch_size,
                wd_groups=cfg.hydra.runtime.choices.weight_decay, warmup=(s.warmup, s.warmup_unit),
                warmup_start=start, end=end, interval=s.interval, overlap=s.warmup_overlap,
                epochs=cfg.trainer.max_epochs, crop=tuple(a.scale), aa=a.auto_augment, lighting=a.lighting,
                re=a.re_prob, repeats=a.num_repeats, mixup=(m.mixup_alpha, m.cutmix_alpha) if m else None,
                smoothing=cfg.loss.label_smoothing, loss=cfg.loss._target_.split(".")[-1].removesuffix("CrossEntropy"),
                head_bias=cfg.loss.head_bias_init, ema=ema, precise_bn=cfg.callbacks.precise_bn.num_images,
                clip=cfg.trainer.gradient_clip_val, drop_path=cfg.model.get("drop_path_rate", 0.0),
                cls=cfg.model.get("class_token", True), rep=bool(cfg.model.get("rep_size")), mean=cfg.data.mean[0],
                holdout=cfg.data.holdout)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_is_its_papers_recipe(name):
    cfg = compose_config([f"experiment={name}", "data=imagenet"])
    got, want = actual(cfg), expected(name)
    assert {k: got[k] for k in want if got[k] != want[k]} == {}


@pytest.mark.parametrize("model,opt", [(f"vit_{m}", o) for m in TABLE4 for o in ("adamw", "sgd")])
def test_xiao_stability_takes_table_4s_cell_of_its_model_and_optimizer(model, opt):
    cfg = compose_config(["experiment=xiao_stability", f"model={model}", f"optimizer={opt}"])
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == TABLE4[model[4:]][opt == "sgd"]
    assert cfg.optimizer._target_ == ("torch.optim.SGD" if opt == "sgd" else "torch.optim.AdamW")


def test_xiao_stability_outside_table_4_trains_at_vit_c_4gfs_adamw_cell():
    for overrides in (["model=vit_c_32"], ["model=vit_c_32", "optimizer=sgd"], ["model=vit_c_4gf", "optimizer=adam"]):
        cfg = compose_config(["experiment=xiao_stability", *overrides])
        assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == TABLE4["c_4gf"][0], overrides


def test_vitstem_recipes_agrees_and_flags_an_override(capsys):
    with pytest.raises(SystemExit) as done:
        recipes_main(["--bases"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "0 cell(s) differ" in out and out.count("\n| ") == 5  # one row per base
    with pytest.raises(SystemExit) as done:
        recipes_main(["xiao_c_4gf", "optimizer.lr=2e-3", "loss=sigmoid_bce"])
    out = capsys.readouterr().out
    assert done.value.code == 1 and "0.002 @ 2048 [paper: 0.001 @ 2048]" in out and "2 cell(s) differ" in out
    with pytest.raises(SystemExit) as done:
        recipes_main(["xiao_c_4gf", "loss=nope"])
    assert str(done.value) == "vitstem-recipes: xiao_c_4gf: In 'train': Could not find 'loss/nope'"


def test_readme_table_is_the_current_output(capsys):
    with pytest.raises(SystemExit):
        recipes_main(["--bases"])
    table = capsys.readouterr().out.split("\n\n")[0]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert table in readme, "README's recipe table is stale: paste `vitstem-recipes --bases` into it"
