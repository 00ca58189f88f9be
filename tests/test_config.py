"""The config schema: every bad value stops the run before compute with one line naming key, value and fix."""
import json

import pytest

from tests.helpers import TINY, run_cli, train
from vitstem.config import ConfigError

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
