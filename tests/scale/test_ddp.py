"""DDP inside a Hydra multirun: each rank trains its own job, in its job's folder; a dead rank fails one job."""
import json

import pytest

from tests.helpers import TINY, run_cli
from vitstem.scale.ddp import child_command

DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
       "+callbacks.record={_target_: tests.helpers.RecordRank}"]
LRS = [3e-3, 1e-3, 2e-3]  # job 0's rank 1 is killed at step 1; jobs 1 and 2 must still run


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One multirun of 3 jobs x 2 CPU ranks (gloo), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("ddp_sweep")
    kill = "+callbacks.kill={_target_: tests.helpers.SignalAt, step: 1, rank: 1, signal: SIGKILL, when_lr: 0.003}"
    proc = run_cli("-m", *TINY, *DDP, kill, "optimizer.lr=" + ",".join(map(str, LRS)),
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
        assert results["global_batch_size"] == 16 and (job / "ddp_rank1.log").is_file()  # rank 1: its own text log


@pytest.mark.e2e
def test_a_rank_that_dies_fails_its_job_and_the_sweep_goes_on(sweep):
    proc, _, jobs = sweep
    error = jobs[0][1]["error"]
    assert jobs[0][1]["status"] == "failed" and "rank 1" in error and "SIGKILL" in error, error
    assert "the process group was aborted" in error  # NCCL would wait for the dead peer; gloo happens not to
    assert proc.returncode != 0  # the sweep reports that a job failed


def test_the_child_command_runs_one_job_in_run_mode():
    cmd = child_command(["optimizer.lr=0.001", "run_dir=/old", "model=vit_p_32"], "/sweep/a b", "/sweep/a b/last.ckpt",
                        1, argv=["vitstem-train", "-m", "-cn", "train", "optimizer.lr=0.001,0.002"])
    assert cmd[1:3] == ["-m", "vitstem.train"] and "-m" not in cmd[3:]
    assert cmd[3:5] == ["-cn", "train"] and "optimizer.lr=0.001,0.002" not in cmd
    assert "optimizer.lr=0.001" in cmd and "run_dir=/old" not in cmd
    assert "run_dir='/sweep/a b'" in cmd and "hydra.run.dir='/sweep/a b'" in cmd
    assert "ckpt_path='/sweep/a b/last.ckpt'" in cmd and "hydra.output_subdir=null" in cmd
