"""Only global rank 0 plans the run folder; ranks that srun (or submitit, torchrun) started follow its plan."""
import json

import pytest

from tests.helpers import TINY, compose_config, train
from vitstem.config import ConfigError
from vitstem.runs import folder, lock
from vitstem.train import Interrupted

STOP = "+callbacks.stop={_target_: tests.helpers.SignalAt, step: 1, signal: SIGUSR1}"


def _srun_task(monkeypatch, rank: int, restart: int | None = None):
    """The variables srun gives task ``rank`` of a 2-task job (named ``bash``: Lightning then starts no DDP here)."""
    for key, value in {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_PROCID": str(rank),
                       "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0", "SLURM_JOB_NAME": "bash"}.items():
        monkeypatch.setenv(key, value)
    if restart is None:
        monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    else:
        monkeypatch.setenv("SLURM_RESTART_COUNT", str(restart))


def test_every_task_follows_rank_0_and_a_requeued_job_resumes_its_folder(tmp_path, monkeypatch):
    run_dir = tmp_path / "R"
    train(TINY, run_dir)  # a finished run: retrain=true trains again beside it
    overrides = [o for o in TINY if "limit_train" not in o] + ["trainer.limit_train_batches=4", "retrain=true"]
    sibling = tmp_path / "R-retrain1"

    _srun_task(monkeypatch, rank=0)  # the job's tasks start together: rank 0 decides, task 1 follows
    task0 = folder.decide(compose_config(overrides, run_dir))
    _srun_task(monkeypatch, rank=1)
    task1 = folder.decide(compose_config(overrides, run_dir))
    assert (task0.action, task0.run_dir, task0.locked) == ("train", sibling, True)
    assert (task1.action, task1.run_dir, task1.locked) == ("train", sibling, False)
    lock.release(sibling)
    folder.end(task0)

    _srun_task(monkeypatch, rank=0)
    with pytest.raises(Interrupted):  # rank 0 of that job trains; the scheduler's signal stops it after step 2
        train(overrides + [STOP], run_dir)
    assert (sibling / "checkpoints" / "last.ckpt").is_file()

    _srun_task(monkeypatch, rank=0, restart=1)  # the requeued job (same job id): resumes, no new sibling
    results = train(overrides, run_dir)
    assert results["status"] == "finished" and results["steps"] == 4
    assert results["resumed_from"] == str(sibling / "checkpoints" / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R", "R-retrain1"]
    plan_file = json.loads((run_dir / folder.PLAN_FILE).read_text())
    assert (plan_file["job"], plan_file["restart"], plan_file["action"]) == ("4242", 1, "ended")

    _srun_task(monkeypatch, rank=1, restart=1)  # a task of that attempt that comes late still follows it
    late = folder.decide(compose_config(overrides, run_dir))
    assert (late.action, late.run_dir) == ("resume", sibling)
    for key in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "4242")  # submitit local: no attempt count; by time then
    monkeypatch.setenv("SUBMITIT_LOCAL_NTASKS", "2")
    monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", "1")
    plan_file["restart"] = 0
    (run_dir / folder.PLAN_FILE).write_text(json.dumps(plan_file))
    monkeypatch.setattr(folder, "_STARTED", plan_file["written"] + 1)  # started after that attempt ended: the next
    with pytest.raises(ConfigError, match="waited 1 s for rank 0's plan"):
        folder.decide(compose_config(overrides, run_dir), plan_timeout_s=1)


def test_a_task_whose_rank_0_refused_the_run_says_so(tmp_path, monkeypatch):
    run_dir = tmp_path / "R"
    train(TINY, run_dir)
    _srun_task(monkeypatch, rank=0)
    with pytest.raises(ConfigError, match="holds a run with other settings"):
        folder.decide(compose_config(TINY + ["optimizer.lr=0.5"], run_dir))
    _srun_task(monkeypatch, rank=1)
    with pytest.raises(ConfigError, match="rank 0 refused the run: run folder .* holds a run with other settings"):
        folder.decide(compose_config(TINY + ["optimizer.lr=0.5"], run_dir), plan_timeout_s=5)


def test_a_task_without_rank_0_waits_a_bounded_time(tmp_path, monkeypatch):
    _srun_task(monkeypatch, rank=1)
    with pytest.raises(ConfigError, match=r"rank 1 waited 1 s for rank 0's plan"):
        folder.decide(compose_config(TINY, tmp_path / "R"), plan_timeout_s=1)
