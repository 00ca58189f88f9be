"""The one-GPU forms (conf/sweep/<study>/gpu.yaml: CIFAR-100, ~2 GPU-hours by FLOP count): they compose, plan
their jobs, state their estimate as not yet measured, and a job runs 2 steps on the CPU on a fake CIFAR-100."""
from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from tests.data.tiny_files import write_cifar
from tests.helpers import compose_config, train
from vitstem.paths import CONF_DIR
from vitstem.sweeps.random import plan_jobs

FORMS = {"xiao_lr_wd/gpu": (64, ["model=vit_c_32", "optimizer=sgd", "study.sample=3"], {"model.depth": 7}),
         "wortsman_alpha/gpu": (18, ["study.attention=relu_a0_5", "seed=2"],
                                {"model.attention.alpha": 0.5, "model.attention.activation": "relu", "seed": 2})}


def jobs_of(form: str):
    cfg = compose_config([f"sweep={form}"])
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    jobs, _ = plan_jobs(OverridesParser.create().parse_overrides(params), cfg.hydra.sweeper.samples,
                        cfg.hydra.sweeper.seed)
    return cfg, jobs


@pytest.mark.parametrize("form", sorted(FORMS))
def test_gpu_form_composes_on_cifar100_and_says_its_estimate_is_not_measured(form):
    cfg, jobs = jobs_of(form)
    count, pick, expected = FORMS[form]
    assert len(jobs) == count and cfg.name == form.replace("/", "_") and cfg.data.num_classes == 100
    assert cfg.trainer.accelerator == "gpu" and cfg.data.loader.batch_size == 256
    header = (CONF_DIR / "sweep" / f"{form}.yaml").read_text()
    assert "NOT YET MEASURED ON A GPU" in header and "GPU-hours" in header and "GFLOPs" in header
    job = [j for j in jobs if set(pick) <= set(j)]
    assert len(job) == 1
    job_cfg = compose_config([f"sweep={form}", *job[0]])
    for key, value in expected.items():
        assert OmegaConf.select(job_cfg, key) == value, key


@pytest.mark.e2e
@pytest.mark.parametrize("form", sorted(FORMS))
def test_gpu_form_job_runs_two_steps_on_the_cpu(form, tmp_path):
    write_cifar(tmp_path / "data", "cifar100", train_size=16, test_size=8)
    _, jobs = jobs_of(form)
    cpu = ["trainer.accelerator=cpu", "trainer.precision=32-true", f"data.root={tmp_path / 'data'}",
           "data.loader.num_workers=0", "data.loader.persistent_workers=false", "data.loader.pin_memory=false",
           "data.verify_checksums=false", "data.loader.batch_size=8", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
           "trainer.limit_val_batches=1", "callbacks.precise_bn.num_images=8", "model.depth=1"]
    results = train([f"sweep={form}", *jobs[-1], *cpu], tmp_path / "run")
    assert results["status"] == "finished" and results["steps"] == 2
    assert results["hparams"]["study"] == form.replace("/", "_")
