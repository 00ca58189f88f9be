"""vitstem.instrument in tiny training runs: metrics.csv and results.json, divergence, no host sync per step."""
from __future__ import annotations

import csv
import json
import math

import lightning as L
import pytest
import torch

import vitstem.train
from tests.helpers import TINY, train
from vitstem.config import ConfigError
from vitstem.instrument.callbacks import StabilityMonitor, Throughput
from vitstem.instrument.metrics import block_of
from vitstem.models.classifier import Classifier

N = 3  # trainer.log_every_n_steps, and so callbacks.stability.every_n_steps
SYNCS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


class SyncCounter:
    """Counts the calls that bring a tensor's value to the host (a host-device sync on a GPU) made inside the
    wrapped functions: one record (function, trainer.global_step at entry, count) per call."""

    def __init__(self, mp: pytest.MonkeyPatch):
        self.calls: list[tuple[str, int, int]] = []
        self.monitors: set = set()
        self._inside = 0
        for name in SYNCS:
            original = getattr(torch.Tensor, name)
            mp.setattr(torch.Tensor, name, self._counted(original))

    def _counted(self, original):
        counter = self

        def counted(tensor, *args, **kwargs):
            if counter._inside:
                counter._syncs += 1
            return original(tensor, *args, **kwargs)
        return counted

    def wrap(self, mp: pytest.MonkeyPatch, cls, name: str) -> None:
        original, counter = getattr(cls, name), self

        def wrapped(obj, *args, **kwargs):
            trainer = obj.trainer if isinstance(obj, L.LightningModule) else args[0]
            if isinstance(obj, StabilityMonitor):
                counter.monitors.add(obj)
            step, counter._syncs, counter._inside = trainer.global_step, 0, counter._inside + 1
            try:
                return original(obj, *args, **kwargs)
            finally:
                counter._inside -= 1
                counter.calls.append((f"{cls.__name__}.{name}", step, counter._syncs))
        mp.setattr(cls, name, wrapped)


class DirectNorms(L.Callback):
    """Each step's gradient norm per block, computed directly (parameter by parameter, in float64)."""

    def __init__(self):
        self.steps: dict[int, dict[str, float]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        sums: dict[str, float] = {}
        for name, p in pl_module.model.named_parameters():
            sums[block_of(name)] = sums.get(block_of(name), 0.0) + p.grad.double().square().sum().item()
        self.steps[trainer.global_step] = {b: math.sqrt(s) for b, s in sums.items()}


class FirstNonFinite(L.Callback):
    """The reference: the first step whose loss, gradients or updated parameters hold a non-finite value, found the
    slow way (a host sync per step)."""

    def __init__(self):
        self.first: int | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.first is None and not all(torch.isfinite(p.grad).all() for p in pl_module.model.parameters()):
            self.first = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        finite = torch.isfinite(outputs["loss"]) and all(torch.isfinite(p).all() for p in pl_module.model.parameters())
        if self.first is None and not finite:
            self.first = trainer.global_step - 1


def add_callbacks(mp: pytest.MonkeyPatch, *extra: L.Callback) -> None:
    build = vitstem.train.build

    def with_extra(cfg, resume_step=None):
        datamodule, module, trainer = build(cfg, resume_step)
        trainer.callbacks.extend(extra)
        return datamodule, module, trainer
    mp.setattr(vitstem.train, "build", with_extra)


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny run shared by the tests below: 6 steps, EMA, syncs counted in the per-step hooks."""
    run_dir = tmp_path_factory.mktemp("tiny")
    direct = DirectNorms()
    with pytest.MonkeyPatch.context() as mp:
        counter = SyncCounter(mp)
        for cls, name in ((StabilityMonitor, "on_before_optimizer_step"), (StabilityMonitor, "on_train_batch_end"),
                          (Throughput, "on_train_batch_start"), (Throughput, "on_train_batch_end"),
                          (Classifier, "training_step")):
            counter.wrap(mp, cls, name)
        add_callbacks(mp, direct)
        results = train(TINY + ["trainer.limit_train_batches=6", f"trainer.log_every_n_steps={N}", "ema=deit"],
                        run_dir)
    return run_dir, results, counter, direct


@pytest.mark.e2e
def test_statistics_appear_in_metrics_csv_and_results(tiny):
    run_dir, results, _, direct = tiny
    rows = read_csv(run_dir / "metrics.csv")
    blocks = ("stem", "block_00", "head")
    norms = [r for r in rows if r.get("norms/grad/stem")]
    assert [int(r["step"]) for r in norms] == [2, 5]  # every N steps
    for r in norms:
        for b in blocks:  # the logged gradient norms are the direct computation's
            assert float(r[f"norms/grad/{b}"]) == pytest.approx(direct.steps[int(r["step"])][b], rel=1e-6)
        assert float(r["norms/grad/total"]) == pytest.approx(
            math.sqrt(sum(v ** 2 for v in direct.steps[int(r["step"])].values())), rel=1e-6)
        for kind in ("param", "update", "update_ratio"):
            assert all(float(r[f"norms/{kind}/{b}"]) > 0 for b in (*blocks, "total"))
        assert float(r["norms/update_ratio/stem"]) == pytest.approx(
            float(r["norms/update/stem"]) / float(r["norms/param/stem"]))
        assert r["spikes/count"] == "0"
    tokens = [r for r in rows if r.get("diversity/stem")]
    assert len(tokens) == 1 and tokens[0]["epoch"] == "0"
    for key in ("diversity/stem", "diversity/block_00", "diversity_ema/stem", "diversity_ema/block_00"):
        assert 0 < float(tokens[0][key]) < 1
    assert 0 < float(tokens[0]["attention/entropy/block_00"]) < math.log(17)  # 16 patches + the class token
    speed = [r for r in rows if r.get("train/images_per_s_with_data")]
    assert len(speed) == 1 and 0 < float(speed[0]["train/images_per_s_with_data"]) < float(speed[0]["train/images_per_s"])
    assert results["status"] == "finished" and results["mfu"] is None  # no peak FLOP/s on a CPU
    assert results["train_flops_per_image"] > 0 and results["train_images_per_s_with_data"] > 0
    assert results["diversity"] == {"stem": pytest.approx(float(tokens[0]["diversity/stem"])),
                                    "block_00": pytest.approx(float(tokens[0]["diversity/block_00"]))}
    assert results["spikes"] == [] and results["spikes_total"] == 0 and results["diverged_block"] is None
    assert json.loads((run_dir / "results.json").read_text())["diversity_ema"].keys() == {"stem", "block_00"}


@pytest.mark.e2e
def test_divergence_check_does_not_sync_every_step(tiny):
    _, _, counter, _ = tiny
    assert len(counter.calls) == 6 * 5
    assert all(syncs == 0 for name, _, syncs in counter.calls if name != "StabilityMonitor.on_train_batch_end")
    ends = {step: syncs for name, step, syncs in counter.calls if name == "StabilityMonitor.on_train_batch_end"}
    # after training step s (global_step s + 1) the record is read when s + 1 is a multiple of N: steps 2 and 5
    assert sorted(ends) == [1, 2, 3, 4, 5, 6] and {step for step, syncs in ends.items() if syncs} == {3, 6}
    (monitor,) = counter.monitors
    assert monitor.reads == 2  # the epoch end and the validation found nothing new to read


@pytest.mark.e2e
def test_a_stem_explosion_is_caught_at_its_step_and_the_last_good_checkpoint_kept(tmp_path):
    """A huge lr and weight decay on the stem alone: each AdamW step multiplies its weights by about -1e5, until
    its output overflows the next LayerNorm (training step 5, as the slow reference finds too)."""
    reference = FirstNonFinite()
    with pytest.MonkeyPatch.context() as mp:
        add_callbacks(mp, reference)
        results = train(TINY + ["weight_decay.multipliers=[{pattern: '^patch_embed\\.', lr: 1e9, wd: 1.0}]",
                                "trainer.limit_train_batches=12", "trainer.log_every_n_steps=4",
                                "callbacks.checkpoint.every_n_steps=2"], tmp_path)
    assert reference.first == 5
    assert results["status"] == "diverged" and results["diverged_at_step"] == 5
    assert results["diverged_block"] == "stem" and results["diverged_phase"] == "forward"
    assert results["steps"] == 6  # found by the read before the checkpoint of step 6 (the regular one is at 8)
    assert results["final_val_acc1"] is None and results["best_val_acc1"] is None
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4  # the checkpoint of step 6 was refused: its weights came from step 5's NaNs
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert json.loads((tmp_path / "results.json").read_text())["diverged_block"] == "stem"


@pytest.mark.parametrize("override,message", [
    ("callbacks.stability.every_n_steps=0", "callbacks.stability.every_n_steps=0 must be at least 1"),
    ("callbacks.stability.loss_spike_factor=1", "callbacks.stability.loss_spike_factor=1 must be greater than 1"),
    ("callbacks.stability.spike_warmup=101", "spike_warmup=101 is larger than callbacks.stability.spike_window=100"),
    ("callbacks.tokens.num_images=0", "callbacks.tokens.num_images=0 must be at least 1"),
])
def test_bad_instrument_settings_fail_before_training(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        train(TINY + [override], tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == 0
