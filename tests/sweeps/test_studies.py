"""Every study in conf/sweep/ (paper form and tiny form) composes and plans the jobs it says, without training.

For each form: the config composes with its name and study.name set; the random sweeper's plan of its
``hydra.sweeper.params`` (``plan_jobs``, as ``RandomSweeper._sweep`` parses them) has the intended job count and
grid; chosen jobs, composed with their overrides as the sweeper launches them, carry the intended model,
stem, attention, optimizer and schedule values and pass the config schema. Tiny forms run on the CPU at 32 px,
do not inherit a paper recipe and stay within a few minutes of CPU time.
"""
from __future__ import annotations

import math
import re

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from tests.helpers import compose_config
from vitstem.config import validate
from vitstem.paths import CONF_DIR
from vitstem.runs import folder  # noqa: F401  (registers the vitstem_dirname resolver of hydra.run.dir)
from vitstem.sweeps.random import plan_jobs

SWEEP_DIR = CONF_DIR / "sweep"
XIAO_RECIPES = [f"xiao_stability_{m}_{gf}gf_{opt}" for gf in (1, 4, 18) for m in ("p", "c") for opt in ("adamw", "sgd")]
WANG_STEMS = ["scaled_relu", "scaled_relu_no_bn", "scaled_relu_no_relu", "scaled_relu_no_bn_relu",
              "scaled_relu_layernorm", "patchify", "patchify_bn_relu"]
ACTIVATIONS = ["softmax", "relu", "relu2", "gelu", "softplus", "identity", "relu6", "sigmoid"]

# form -> (job count, {grid key: its values}); sampled keys are listed by plan_jobs separately.
SEEDS3 = ["0", "1", "2"]
QKLN_GATE = ["relu_a1", "relu_a0", "relu_gate_a1", "relu_gate_a0", "relu_noqkln_a1", "relu_noqkln_a0",
             "relu_noqkln_gate_a1", "relu_noqkln_gate_a0", "softmax", "softmax_gate", "softmax_noqkln",
             "softmax_noqkln_gate"]
PLANS = {
    "xiao_lr_wd": (2 * 2 * 64, {"model": ["vit_p_4gf", "vit_c_4gf"], "optimizer": ["adamw", "sgd"]}),
    "xiao_lr_wd/tiny": (2 * 2 * 8, {"model": ["vit_p_32", "vit_c_32"], "optimizer": ["adamw", "sgd"]}),
    "xiao_optimizer": (2 * 2 * 3 * 4, {"experiment": XIAO_RECIPES, "trainer.max_epochs": ["50", "100", "200", "400"]}),
    "xiao_optimizer/tiny": (3 * 2 * 2 * 2, {"trainer.max_epochs": ["1", "2", "4"], "seed": ["0", "1"],
                                            "model": ["vit_p_32", "vit_c_32"], "optimizer": ["adamw", "sgd"]}),
    "xiao_stems": (6 * 2, {"optimizer": ["adamw", "sgd"],
                           "model/stem": ["patchify", "conv_xiao_4gf", *(f"conv_xiao_4gf_s{i}" for i in range(1, 5))]}),
    "xiao_stems/tiny": (2 * 3 * 3, {"optimizer": ["adamw", "sgd"], "model/stem": ["patchify", "conv_small", "conv_small_k4"],
                                    "seed": SEEDS3}),
    "wang_warmup": (2 * 5, {"experiment": ["wang_deit_s_patchify", "wang_deit_s_scaled_relu"],
                            "scheduler.warmup": ["0", "1", "5", "10", "20"]}),
    "wang_warmup/tiny": (2 * 2 * 3, {"model/stem": ["patchify", "scaled_relu"], "scheduler.warmup": ["0", "64"],
                                     "seed": SEEDS3}),
    "wang_stems": (7, {"model/stem": WANG_STEMS}),
    "wang_stems/tiny": (4 * 3, {"model/stem": ["scaled_relu", "scaled_relu_no_bn_relu", "patchify", "patchify_bn_relu"],
                                "seed": SEEDS3}),
    "wortsman_alpha": (8 * 9, {"model.attention.activation": ACTIVATIONS,
                               "model.attention.alpha": ["0", "0.25", "0.5", "0.75", "1", "1.25", "1.5", "1.75", "2"]}),
    "wortsman_alpha/tiny": (4 * 3, {"seed": SEEDS3}),   # study.attention: softmax, relu_a0, relu_a1, relu_a2
    "wortsman_qkln_gate": (12, {}),                     # study.variant: QKLN_GATE
    "wortsman_qkln_gate/tiny": (5 * 3, {"seed": SEEDS3}),
}

# (form, overrides that pick one job of its plan, {dotted key of the composed job config: intended value}).
PROBES = [
    ("xiao_lr_wd", ["model=vit_c_4gf", "optimizer=sgd", "study.sample=0"],
     {"model.name": "vit_c_4gf", "optimizer._target_": "torch.optim.SGD", "optimizer.ref_batch_size": 2048,
      "trainer.max_epochs": 50, "study.sample": 0}),
    ("xiao_optimizer", ["experiment=xiao_stability_p_4gf_sgd", "trainer.max_epochs=100"],
     {"model.name": "vit_p_4gf", "model.depth": 12, "model.stem.layers": [], "model.attention.activation": "softmax",
      "optimizer._target_": "torch.optim.SGD", "optimizer.lr": 1.9, "optimizer.weight_decay": 1.3e-5,
      "optimizer.ref_batch_size": 2048, "trainer.max_epochs": 100, "ema.copy_during_warmup": True}),
    ("xiao_optimizer", ["experiment=xiao_stability_c_18gf_adamw", "trainer.max_epochs=400"],
     {"model.name": "vit_c_18gf", "model.depth": 11, "optimizer._target_": "torch.optim.AdamW", "optimizer.lr": 1e-3,
      "optimizer.weight_decay": 0.24, "trainer.max_epochs": 400}),
    ("xiao_optimizer/tiny", ["trainer.max_epochs=4", "seed=1", "model=vit_c_32", "optimizer=sgd"],
     {"model.name": "vit_c_32", "model.depth": 3, "model.stem.layers.0.kernel": 3,
      "optimizer._target_": "torch.optim.SGD", "optimizer.lr": 0.1625, "optimizer.weight_decay": 2.2e-5,
      "optimizer.ref_batch_size": 128, "trainer.max_epochs": 4, "seed": 1, "scheduler.warmup": 16,
      "scheduler.warmup_unit": "steps", "data.loader.batch_size": 64, "callbacks.precise_bn.num_images": 1024}),
    ("xiao_optimizer/tiny", ["trainer.max_epochs=1", "seed=0", "model=vit_p_32", "optimizer=adamw"],
     {"model.name": "vit_p_32", "model.depth": 4, "optimizer._target_": "torch.optim.AdamW", "optimizer.lr": 2e-3,
      "optimizer.weight_decay": 0.2, "trainer.max_epochs": 1}),
    ("xiao_stems", ["optimizer=sgd", "model/stem=conv_xiao_4gf_s3"],
     {"model.name": "vit_c_4gf", "model.depth": 11, "model.embed_dim": 384,
      "model.stem.layers": [{"kernel": 3, "stride": 2, "channels": 17, "padding": 1},
                            {"kernel": 3, "stride": 1, "channels": 34, "padding": 1},
                            {"kernel": 3, "stride": 1, "channels": 68, "padding": 1},
                            {"kernel": 8, "stride": 8, "channels": 136, "padding": 0}],
      "model.stem.proj_kernel": 1, "optimizer._target_": "torch.optim.SGD", "optimizer.lr": 1.3,
      "optimizer.weight_decay": 2.2e-5, "optimizer.ref_batch_size": 2048, "trainer.max_epochs": 50}),
    ("xiao_stems", ["optimizer=adamw", "model/stem=patchify"],   # = ViT_P-4GF at its Table 4 row
     {"model.depth": 12, "model.stem.layers": [], "optimizer._target_": "torch.optim.AdamW", "optimizer.lr": 2e-3,
      "optimizer.weight_decay": 0.2, "trainer.max_epochs": 50}),
    ("xiao_stems/tiny", ["optimizer=adamw", "model/stem=conv_small_k4", "seed=2"],
     {"model.name": "vit_c_32", "model.depth": 3, "model.stem.layers.2.kernel": 4, "model.stem.layers.2.stride": 4,
      "optimizer._target_": "torch.optim.AdamW", "optimizer.lr": 1e-3, "optimizer.weight_decay": 0.24,
      "trainer.max_epochs": 4, "seed": 2}),
    ("xiao_stems/tiny", ["optimizer=sgd", "model/stem=patchify", "seed=0"],
     {"model.depth": 4, "model.stem.layers": [], "optimizer.lr": 0.2375, "optimizer.weight_decay": 1.3e-5}),
    ("wang_warmup", ["experiment=wang_deit_s_scaled_relu", "scheduler.warmup=0"],
     {"model.name": "deit_s_scaled_relu", "model.stem.layers.0.kernel": 7, "model.depth": 12, "scheduler.warmup": 0,
      "scheduler.warmup_unit": "epochs", "optimizer._target_": "torch.optim.AdamW", "optimizer.lr": 5e-4,
      "optimizer.ref_batch_size": 512, "trainer.max_epochs": 300}),
    ("wang_warmup/tiny", ["model/stem=scaled_relu", "scheduler.warmup=0", "seed=1"],
     {"model.name": "vit_p_32", "model.depth": 4, "model.stem.layers.0.kernel": 7, "scheduler.warmup": 0,
      "scheduler.warmup_unit": "steps", "optimizer.lr": 8e-3, "trainer.max_epochs": 4, "seed": 1}),
    ("wang_stems", ["model/stem=scaled_relu_no_bn"],
     {"model.name": "deit_s_scaled_relu", "model.stem.norm": "none", "model.stem.act": "relu",
      "optimizer.lr": 5e-4, "trainer.max_epochs": 300}),
    ("wang_stems", ["model/stem=patchify_bn_relu"],
     {"model.stem.layers": [], "model.stem.proj_norm": "batchnorm", "model.stem.proj_act": "relu"}),
    ("wang_stems/tiny", ["model/stem=scaled_relu_no_bn_relu", "seed=2"],
     {"model.name": "vit_p_32", "model.stem.norm": "none", "model.stem.act": "none", "optimizer.lr": 8e-3,
      "trainer.max_epochs": 4, "seed": 2}),
    ("wortsman_alpha", ["model.attention.activation=gelu", "model.attention.alpha=0.75"],
     {"model.name": "vit_s32", "model.attention.activation": "gelu", "model.attention.alpha": 0.75,
      "model.attention.qk_norm": True, "model.attention.gate": False, "optimizer.lr": 1e-3,
      "optimizer.ref_batch_size": 4096, "trainer.max_epochs": 300}),
    ("wortsman_alpha", ["model.attention.activation=softmax", "model.attention.alpha=0"],   # the reference
     {"model.attention.activation": "softmax", "model.attention.qk_norm": True, "model.attention.gate": False}),
    ("wortsman_alpha/tiny", ["study.attention=relu_a2", "seed=1"],
     {"model.name": "vit_p_32", "model.attention.activation": "relu", "model.attention.alpha": 2,
      "model.attention.qk_norm": True, "trainer.max_epochs": 4, "seed": 1}),
    ("wortsman_alpha/tiny", ["study.attention=softmax", "seed=2"],   # the reference, once per seed
     {"model.attention.activation": "softmax", "model.attention.qk_norm": True, "seed": 2}),
    ("wortsman_qkln_gate", ["study.variant=relu_noqkln_gate_a1"],
     {"model.name": "vit_s32", "model.attention.activation": "relu", "model.attention.alpha": 1.0,
      "model.attention.qk_norm": False, "model.attention.gate": True, "optimizer.ref_batch_size": 4096}),
    ("wortsman_qkln_gate/tiny", ["study.variant=relu_gate_a0", "seed=0"],
     {"model.name": "vit_p_32", "model.attention.activation": "relu", "model.attention.alpha": 0,
      "model.attention.qk_norm": True, "model.attention.gate": True}),
]


def studies() -> list[str]:
    return sorted(p.name for p in SWEEP_DIR.iterdir() if p.is_dir())


def plan(form: str):
    """The composed config of ``sweep=<form>`` and the sweeper's plan of its jobs."""
    cfg = compose_config([f"sweep={form}"])
    sweeper = cfg.hydra.sweeper
    params = [f"{k}={v}" for k, v in sweeper.params.items()]
    jobs, sampled = plan_jobs(OverridesParser.create().parse_overrides(params), sweeper.samples, sweeper.seed)
    return cfg, jobs, sampled


def grid(jobs: list[list[str]], sampled: list[str]) -> dict[str, list[str]]:
    """Each grid key's values in the order the jobs first take them (sampled keys and study.* left out)."""
    out: dict[str, list[str]] = {}
    for job in jobs:
        for override in job:
            key, value = override.split("=", 1)
            if key not in sampled and not key.startswith("study."):
                out.setdefault(key, []).append(value) if value not in out.get(key, []) else None
    return out


def test_every_study_has_a_paper_form_a_tiny_form_and_a_plan_here():
    assert studies(), "no study folders in conf/sweep/"
    for study in studies():
        assert (SWEEP_DIR / f"{study}.yaml").is_file(), f"{study}: no paper form conf/sweep/{study}.yaml"
        assert (SWEEP_DIR / study / "tiny.yaml").is_file(), f"{study}: no tiny form conf/sweep/{study}/tiny.yaml"
        assert study in PLANS and f"{study}/tiny" in PLANS, f"{study}: add its job plans to PLANS in this test"
        assert any(form.split("/")[0] == study for form, *_ in PROBES), f"{study}: add a probe job to PROBES"


@pytest.mark.parametrize("form", sorted(PLANS))
def test_study_composes_and_plans_its_jobs(form):
    study, tiny = form.split("/")[0], form.endswith("/tiny")
    cfg, jobs, sampled = plan(form)
    name = f"{study}_tiny" if tiny else study
    assert cfg.name == name and cfg.study.name == name
    assert cfg.hydra.sweep.dir == f"multirun/{name}"
    assert all(isinstance(v, str) for v in cfg.hydra.sweeper.params.values())
    count, keys = PLANS[form]
    assert len(jobs) == count
    assert grid(jobs, sampled) == keys
    assert len({tuple(job) for job in jobs}) == count  # no job twice


@pytest.mark.parametrize("study", studies())
def test_paper_form_header_gives_its_commands(study):
    header = (SWEEP_DIR / f"{study}.yaml").read_text()
    assert header.startswith("# @package _global_")
    assert re.search(rf"vitstem-train -m sweep={study} .*data=imagenet", header)
    assert f"vitstem-train -m sweep={study}/tiny" in header
    assert f"vitstem-analyze multirun/{study}" in header
    assert "Expected" in header and re.search("our (reading|choice)", header, re.I)  # the paper's result; our reading
    tiny = (SWEEP_DIR / study / "tiny.yaml").read_text()
    assert f"vitstem-train -m sweep={study}/tiny" in tiny and f"multirun/{study}_tiny" in tiny
    assert f"/sweep/{study}/study" in tiny and f"/sweep/{study}\n" not in tiny  # never the paper form


@pytest.mark.parametrize("form,overrides,expected", PROBES, ids=[f"{f}:{' '.join(o)}" for f, o, _ in PROBES])
def test_a_job_composes_to_the_intended_settings(form, overrides, expected):
    _, jobs, _ = plan(form)
    job = [j for j in jobs if set(overrides) <= set(j)]
    assert len(job) == 1, f"{overrides} pick {len(job)} jobs of sweep={form}"
    cfg = compose_config([f"sweep={form}", *job[0]])
    with open_dict(cfg):
        del cfg.hydra  # as the job sees it (${hydra:...} still resolves through HydraConfig)
    validate(cfg)  # the schema, with every interpolation resolved
    for key, value in expected.items():
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got, resolve=True) if OmegaConf.is_config(got) else got
        if isinstance(value, float):
            assert math.isclose(got, value, rel_tol=1e-9), f"{key}={got}, not {value}"
        else:
            assert got == value, f"{key}={got!r}, not {value!r}"


@pytest.mark.parametrize("study", studies())
def test_tiny_form_is_cpu_32px_synthetic_and_small(study):
    form = f"{study}/tiny"
    cfg, jobs, _ = plan(form)
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.hydra.runtime.choices.get("experiment") is None  # no paper recipe inherited
    assert cfg.hydra.runtime.choices.data == "synthetic"
    for job in (jobs[0], jobs[-1]):
        job_cfg = compose_config([f"sweep={form}", *job])
        assert job_cfg.model.img_size == 32 and job_cfg.data.img_size == 32
        assert job_cfg.trainer.accelerator == "cpu"
    # The calibrated scale (issue 18): 128-256+ steps, at least 1,000 validation images; CPU time: a vit_p_32 job
    # of 256 steps at batch 64 takes ~45 s on 2 idle cores; keep each study within ~30 min, i.e. 10,000 steps
    # (the header states the study's own count and time).
    epochs = [int(dict(o.split("=", 1) for o in job).get("trainer.max_epochs", cfg.trainer.max_epochs)) for job in jobs]
    steps = [e * cfg.data.train_size // cfg.data.loader.batch_size for e in epochs]
    assert max(steps) >= 256 and cfg.data.val_size >= 1000, f"{form}: {max(steps)} steps, {cfg.data.val_size} val"
    assert sum(steps) <= 10_000, f"{form}: {sum(steps)} steps"
    header = (SWEEP_DIR / study / "tiny.yaml").read_text()
    assert f"{len(jobs)} jobs" in header and re.search(r"\d+ min|measured", header, re.I)  # count and time
