"""The config schema: every bad value stops the run before compute with one line naming key, value and fix."""
import json

import pytest

from tests.helpers import TINY, compose_config, run_cli, train
from vitstem.config import ConfigError, validate

STEM = "model.stem.layers=[{kernel: 3, stride: 4, channels: 8}]"  # one stride-4 layer: patch 4 of TINY


@pytest.mark.parametrize("overrides,message", [
    (["optimizer.lr=abc"], "optimizer.lr='abc' must be a number"),
    (["optimizer.lr=0"], "optimizer.lr=0 must be positive"),
    (["optimizer.lr=true"], "optimizer.lr=True must be a number"),
    (["optimizer.ref_batch_size=64.5"], "optimizer.ref_batch_size=64.5 must be an integer"),
    (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay=-0.1 must be at least 0"),
    (["optimizer.betas=[0.9]"], "optimizer.betas=[0.9] must have at least 2 items, not 1"),
    (["optimizer.eps=0"], "optimizer.eps=0 must be positive"),
    (["optimizer=sgd", "optimizer.momentum=1.5"], "optimizer.momentum=1.5 must be less than 1"),
    (["optimizer=sgd", "optimizer.nesterov=maybe"], "optimizer.nesterov='maybe' must be true or false"),
    (["~optimizer.lr"], "optimizer.lr is missing"),
    (["weight_decay.multipliers=[{pattern: x, lr: -1}]"], "weight_decay.multipliers[0].lr=-1 must be at least 0"),
    (["scheduler.warmup=-1"], "scheduler.warmup=-1 must be at least 0"),
    (["scheduler.warmup_start_factor=2"], "scheduler.warmup_start_factor=2 must be at most 1"),
    (["scheduler.min_factor=x"], "scheduler.min_factor='x' must be a number"),
    (["scheduler=step", "scheduler.milestones=[0.5,2]"], "scheduler.milestones[1]=2 must be at most 1"),
    (["scheduler=step", "scheduler.gamma=0"], "scheduler.gamma=0 must be positive"),
    (["trainer.max_epochs=1.5"], "trainer.max_epochs=1.5 must be an integer"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 must be at least 1"),
    (["trainer.devices=1.5"], "trainer.devices=1.5 must be -1 or an integer or a string or a list"),
    (["trainer.num_nodes=0"], "trainer.num_nodes=0 must be at least 1"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0 must be at least 1"),
    (["trainer.precision=17"], "trainer.precision=17 must be 64, 32, 16, "),
    (["trainer.gradient_clip_val=1.0", "trainer.precision=16-mixed"], "cannot clip a fused optimizer's scaled gradients"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1 must be at least 0"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0 must be at least 1"),
    (["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0 must be positive"),
    (["+trainer.fast_dev_run=-1"], "trainer.fast_dev_run=-1 must be true or false or at least 0"),
    (["data.loader.batch_size=0"], "data.loader.batch_size=0 must be at least 1"),
    (["data.loader.batch_size=8.0"], "data.loader.batch_size=8.0 must be an integer"),
    (["data.loader.num_workers=-1"], "data.loader.num_workers=-1 must be at least 0"),
    (["data.loader.pin_memory=2"], "data.loader.pin_memory=2 must be true or false"),
    (["data.loader.prefetch_factor=0"], "data.loader.prefetch_factor=0 must be at least 1"),
    (["data.num_classes=1"], "data.num_classes=1 must be at least 2"),
    (["data.img_size=0"], "data.img_size=0 must be at least 1"),
    (["data.train_size=0"], "data.train_size=0 must be at least 1"),
    (["model.depth=0"], "model.depth=0 must be at least 1"),  # a ViT without blocks
    (["model.depth=two"], "model.depth='two' must be an integer"),
    (["model.embed_dim=-32"], "model.embed_dim=-32 must be at least 1"),
    (["model.num_heads=0"], "model.num_heads=0 must be at least 1"),
    (["model.embed_dim=33"], "model.embed_dim=33 must be a multiple of model.num_heads=2"),
    (["model.img_size=1.5"], "model.img_size=1.5 must be an integer"),
    (["model.mlp_ratio=0"], "model.mlp_ratio=0 must be positive"),
    ([STEM.replace("stride: 4", "stride: 0")], "model.stem.layers[0].stride=0 must be at least 1"),
    ([STEM.replace("kernel: 3", "kernel: 0")], "model.stem.layers[0].kernel=0 must be at least 1"),
    ([STEM.replace("channels: 8", "channels: -8")], "model.stem.layers[0].channels=-8 must be at least 1"),
    ([STEM.replace("}", ", padding: -1}")], "model.stem.layers[0].padding=-1 must be at least 0"),
    ([STEM.replace("channels: 8", "channels: 8, strides: 2")], "model.stem.layers[0].strides=2 is not a known setting"),
    ([STEM.replace(", channels: 8", "")], "model.stem.layers[0].channels is missing"),
    (["model.stem.proj_kernel=0"], "model.stem.proj_kernel=0 must be at least 1"),
    (["model.attention.alpha=-1"], "model.attention.alpha=-1 must be at least 0"),
    (["model.attention.qk_norm=3"], "model.attention.qk_norm=3 must be true or false"),
    (["loss.label_smoothing=1"], "loss.label_smoothing=1 must be less than 1"),
    (["ema=deit", "ema.decay=1"], "ema.decay=1 must be less than 1"),
    (["ema=pycls", "ema.horizon=0"], "ema.horizon=0 must be positive"),
    (["ema=pycls", "ema.horizon=null"], "ema.decay and ema.horizon are both null: set one"),
    (["ema=pycls", "ema.copy_during_warmup=yes"], "ema.copy_during_warmup='yes' must be true or false"),
    (["mixup=xiao", "mixup.prob=2"], "mixup.prob=2 must be at most 1"),
    (["mixup=xiao", "mixup.mixup_alpha=-1"], "mixup.mixup_alpha=-1 must be at least 0"),
    (["mixup=deit", "mixup.mode=pixel"], "mixup.mode='pixel' must be 'batch', 'pair' or 'elem'"),
    (["seed=-1"], "seed=-1 must be at least 0"),
    (["seed=abc"], "seed='abc' must be an integer"),
    (["matmul_precision=low"], "matmul_precision='low' must be 'highest', 'high' or 'medium'"),
    (["compile=1"], "compile=1 must be true or false"),
    (["optimizer.lr=inf"], "optimizer.lr=inf must be a finite number (not inf or nan)"),  # was accepted, then diverged
    (["optimizer.lr=nan"], "optimizer.lr=nan must be a finite number (not inf or nan)"),
    (["scheduler=step", "scheduler.gamma=-inf"], "scheduler.gamma=-inf must be a finite number"),
    (["+foo=1"], "foo=1 is not a known setting: the top level takes callbacks, ckpt_path, compile, data, "),
    (["+optimizer.lrr=1"], "optimizer.lrr=1 is not a known setting (did you mean optimizer.lr?): optimizer "
                           "(torch.optim.AdamW) takes amsgrad, betas, "),
    (["+optimizer.momentum=0.9"], "optimizer.momentum=0.9 is not a known setting: optimizer (torch.optim.AdamW)"),
    (["+scheduler.warmpu=2"], "scheduler.warmpu=2 is not a known setting (did you mean scheduler.warmup?)"),
    (["+trainer.detect_anomly=true"], "trainer.detect_anomly=True is not a known setting (did you mean "
                                      "trainer.detect_anomaly?): trainer (lightning.Trainer) takes"),
    (["+model.qkv_bais=false"], "model.qkv_bais=False is not a known setting (did you mean model.qkv_bias?)"),
    (["+data.root=/data"], "data.root='/data' is not a known setting: data "
                           "(vitstem.data.synthetic.SyntheticDataModule) takes augment, holdout"),
    (["+callbacks.stop={_target_: tests.helpers.SignalAt, stepp: 5}"],
     "callbacks.stop.stepp=5 is not a known setting (did you mean callbacks.stop.step?): callbacks.stop "
     "(tests.helpers.SignalAt) takes rank, signal, step, when_lr"),
])
def test_a_bad_value_stops_the_run_naming_key_value_and_fix(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as e:
        train(TINY + overrides, tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and results["steps"] == 0 and message in results["error"]
    assert not (tmp_path / "config.yaml").exists()  # stopped before anything else


@pytest.mark.e2e
def test_the_cli_prints_one_line_and_no_traceback(tmp_path):
    proc = run_cli(*TINY, "optimizer.lr=abc", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "vitstem-train: configuration error: optimizer.lr='abc' must be a number"
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("override", ["+optimizer.amsgrad=true", "+trainer.detect_anomaly=false",
                                      "+model.qkv_bias=false", "+callbacks.stop={_target_: tests.helpers.SignalAt, step: 9}",
                                      "+study.intervals={lr: [0.1, 1]}"])
def test_a_key_the_schema_does_not_list_passes_when_its_constructor_takes_it(override):
    validate(compose_config(TINY + [override]))  # a constructor's parameter, or under an UNCHECKED node (study)


@pytest.mark.parametrize("override,message", [
    ("optimizer.lr=abc", "vitstem-recipes: xiao_c_4gf: optimizer.lr='abc' must be a number"),
    ("+optimizer.lrr=1", "vitstem-recipes: xiao_c_4gf: optimizer.lrr=1 is not a known setting (did you mean "
                         "optimizer.lr?)"),
])
def test_vitstem_recipes_refuses_a_bad_override_in_one_line(override, message):
    from vitstem.recipes import main

    with pytest.raises(SystemExit) as e:
        main(["xiao_c_4gf", override])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


# --- the schema cannot drift from conf/ -------------------------------------------------------------------------
# Every composed config (each config group option, experiment and sweep form) is checked for keys the schema neither
# lists nor leaves UNCHECKED in tests/test_train.py::test_every_config_group_option_composes, which composes them all
# once already (composing costs ~0.1 s each).


# constructor parameters deliberately left out of conf/, and why
NOT_CONFIGURED: dict[tuple[str, str], str] = {}


def test_every_callback_takes_exactly_its_config_keys_and_the_schema_lists_them():
    import inspect

    from hydra.utils import get_class
    from typing_extensions import get_type_hints

    from vitstem.config import Callbacks, _fields

    cfg = compose_config([])
    schema = get_type_hints(Callbacks, include_extras=True)
    assert set(cfg.callbacks) == set(schema)  # every default callback has its schema entry, and no other
    for name, node in cfg.callbacks.items():
        target = node._target_
        own = {p.name for p in inspect.signature(get_class(target).__init__).parameters.values()
               if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        own -= {param for (t, param) in NOT_CONFIGURED if t == target}
        keys = set(node) - {"_target_"}
        assert keys == own, f"callbacks.{name}: conf/callbacks keys {sorted(keys)} != {target}'s parameters {sorted(own)}"
        listed = set(_fields(schema[name])) - {"_target_"}
        assert listed == own, f"callbacks.{name}: the schema lists {sorted(listed)}, {target} takes {sorted(own)}"


def test_the_drift_checks_see_a_new_key():
    from omegaconf import open_dict

    from vitstem.config import unlisted_keys, values_of

    cfg = compose_config([])
    with open_dict(cfg):
        cfg.optimizer.warmup_lr = 0.1  # as if an option file added a key the schema does not list
        cfg.study.stems = {"a": 1}  # under UNCHECKED: fine
    assert [k for k, *_ in unlisted_keys(values_of(cfg))] == ["optimizer.warmup_lr"]
