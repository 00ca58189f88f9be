"""DDP inside a Hydra multirun: each rank trains its own job, in its job's folder; a dead rank fails one job; two CPU
ranks (gloo) with half batches train the same weights as one process with the same global batch.

One multirun (3 jobs x 2 ranks) serves every check here, as each rank a job starts is a new interpreter importing
torch and Lightning. Its jobs train full-batch (64 images, global batch 64 = 2 x 32 or 1 x 64): every step sees the
whole training set, so the order in which a sampler deals it out (Lightning's DistributedSampler under DDP, the
DataLoader's own shuffle in one process) cannot matter, and any difference from one process is DDP's own: gradients
averaged across ranks, each rank a different half, the lr scaled by the global batch, synced validation metrics.
SGD, because Adam's update ignores a gradient's scale and would hide gradients summed instead of averaged. The
patchify stem has no BatchNorm: with BN each rank normalises with its own half unless ``trainer.sync_batchnorm=true``,
which torch runs on GPUs only.
"""
import csv
import json

import pytest
import torch

from tests.helpers import run_forked, train
from vitstem.scale.ddp import child_command

FULL_BATCH = ["model=vit_p_32", "model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.img_size=16",
              "data.img_size=16", "data.train_size=64", "data.val_size=64", "trainer.max_epochs=8",
              "scheduler.warmup=0", "optimizer=sgd", "trainer.accelerator=cpu", "trainer.deterministic=true",
              "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
DDP = ["trainer.devices=2", "trainer.strategy=ddp", "data.loader.batch_size=32",
       "+callbacks.record={_target_: tests.helpers.RecordRank}"]
LRS = [0.3, 0.1, 0.2]  # job 0's rank 1 is killed at step 1; jobs 1 and 2 must still run (job 2: after a job that ran)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One multirun of 3 jobs x 2 CPU ranks (gloo), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("ddp_sweep")
    kill = f"+callbacks.kill={{_target_: tests.helpers.SignalAt, step: 1, rank: 1, signal: SIGKILL, when_lr: {LRS[0]}}}"
    proc = run_forked("-m", *FULL_BATCH, *DDP, kill, "optimizer.lr=" + ",".join(map(str, LRS)),
                   f"hydra.sweep.dir={tmp / 'sweep'}", cwd=tmp)
    jobs = sorted(p.parent for p in tmp.rglob("results.json"))
    return proc, tmp, {int(j.name): (j, json.loads((j / "results.json").read_text())) for j in jobs}


@pytest.mark.e2e
def test_every_rank_of_each_job_trains_that_job_in_its_folder(sweep):
    proc, tmp, jobs = sweep
    assert sorted(jobs) == [0, 1, 2] and all(j.parent == tmp / "sweep" for j, _ in jobs.values()), proc.stderr[-3000:]
    assert not (tmp / "multirun").exists() and not (tmp / "runs").exists()  # no rank started a second sweep
    finished = [n for n, (_, r) in jobs.items() if r["status"] == "finished"]
    assert finished == [1, 2]
    for n, (job, results) in jobs.items():
        seen = [json.loads((job / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert [s["lr"] for s in seen] == [LRS[n], LRS[n]] and seen[0]["pid"] != seen[1]["pid"]
        assert all(s["world_size"] == 2 and s["run_dir"] == str(job) for s in seen)
        assert results["global_batch_size"] == 64 and (job / "ddp_rank1.log").is_file()  # rank 1: its own text log


@pytest.mark.e2e
def test_a_rank_that_dies_fails_its_job_and_the_sweep_goes_on(sweep):
    proc, _, jobs = sweep
    error = jobs[0][1]["error"]
    assert jobs[0][1]["status"] == "failed" and "rank 1" in error and "SIGKILL" in error, error
    assert "the process group was aborted" in error  # NCCL would wait for the dead peer; gloo happens not to
    assert proc.returncode != 0  # the sweep reports that a job failed


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def val_losses(run_dir):
    return [float(r["val/loss"]) for r in csv.DictReader(open(run_dir / "metrics.csv")) if r["val/loss"]]


@pytest.mark.e2e
def test_two_cpu_ranks_with_half_batches_train_what_one_process_trains(sweep, tmp_path):
    _, _, jobs = sweep
    for n in (1, 2):  # the DDP jobs at lr 0.1 and 0.2, each against one process at its lr
        job, ddp = jobs[n]
        one_dir = tmp_path / f"one_{n}"
        one = train(FULL_BATCH + ["data.loader.batch_size=64", f"optimizer.lr={LRS[n]}"], one_dir)
        assert ddp["status"] == one["status"] == "finished"
        assert ddp["global_batch_size"] == one["global_batch_size"] == 64 and ddp["steps"] == one["steps"] == 8
        assert max_diff(weights(job), weights(one_dir)) < 1e-6
        assert val_losses(job) == pytest.approx(val_losses(one_dir), rel=1e-6)
        assert ddp["final_val_acc1"] == one["final_val_acc1"]
    # the check can see gradients summed instead of averaged across 2 ranks: for SGD that is twice the lr
    assert max_diff(weights(tmp_path / "one_2"), weights(tmp_path / "one_1")) > 1e-3


def test_the_child_command_runs_one_job_in_run_mode():
    cmd = child_command(["optimizer.lr=0.001", "run_dir=/old", "model=vit_p_32"], "/sweep/a b", "/sweep/a b/last.ckpt",
                        1, argv=["vitstem-train", "-m", "-cn", "train", "optimizer.lr=0.001,0.002"])
    assert cmd[1:3] == ["-m", "vitstem.train"] and "-m" not in cmd[3:]
    assert cmd[3:5] == ["-cn", "train"] and "optimizer.lr=0.001,0.002" not in cmd
    assert "optimizer.lr=0.001" in cmd and "run_dir=/old" not in cmd
    assert "run_dir='/sweep/a b'" in cmd and "hydra.run.dir='/sweep/a b'" in cmd
    assert "ckpt_path='/sweep/a b/last.ckpt'" in cmd and "hydra.output_subdir=null" in cmd
