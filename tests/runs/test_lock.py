"""One writer per run folder: the lock names its holder, a dead holder never blocks, two sweeps share the jobs."""
import csv
import errno
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import TINY, Zygote, run_cli
from vitstem.runs import lock

HOLD = ("import sys, time; from vitstem.runs import lock; lock.acquire(sys.argv[1]); print('held', flush=True); "
        "time.sleep(120)")


@pytest.fixture
def holder(tmp_path):
    """Another process holding ``tmp_path/R``'s lock."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "R")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_held_folder_names_its_holder_and_a_dead_one_never_blocks(tmp_path, holder):
    run_dir = tmp_path / "R"
    with pytest.raises(lock.FolderBusy, match=rf"run folder {run_dir} is being written by pid {holder.pid} on host "
                                              rf"{socket.gethostname()} \(since 20"):
        lock.acquire(run_dir)
    with pytest.raises(lock.FolderBusy):
        lock.check_free(run_dir)
    holder.kill()  # SIGKILL: the kernel drops its lock, though the file still names it
    holder.wait()
    assert f" {holder.pid} " in (run_dir / lock.NAME).read_text()
    lock.acquire(run_dir)
    lock.acquire(run_dir)  # re-entrant within a process
    lock.release(run_dir)
    assert (run_dir / lock.NAME).read_text().split()[1] == str(os.getpid())
    lock.release(run_dir)
    assert (run_dir / lock.NAME).read_text() == ""
    lock.check_free(run_dir)


def test_without_kernel_locks_a_stale_holder_is_taken_over(tmp_path, monkeypatch, holder):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock.fcntl, "lockf", no_locks)
    with pytest.raises(lock.FolderBusy, match=f"pid {holder.pid}"):  # alive on this host: trusted
        lock.acquire(tmp_path / "R")
    holder.kill()
    holder.wait()
    lock.acquire(tmp_path / "R")  # its pid is gone: stale
    assert (tmp_path / "R" / lock.NAME).read_text().split()[:2] == [socket.gethostname(), str(os.getpid())]
    lock.release(tmp_path / "R")
    (tmp_path / "S").mkdir()
    (tmp_path / "S" / lock.NAME).write_text("another-host 1 1700000000\n")  # another host: cannot be checked
    with pytest.raises(lock.FolderBusy, match="pid 1 on host another-host"):
        lock.acquire(tmp_path / "S")


@pytest.mark.e2e
def test_a_second_command_into_a_running_folder_gets_one_line(tmp_path, holder):
    run_dir = tmp_path / "R"
    refused = run_cli(*TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"vitstem-train: run folder {run_dir} is being written by pid {holder.pid} on host {socket.gethostname()} "
        f"(since {lock.holder(run_dir).split('(since ')[1]}; wait for it to end, or stop it, then run the command "
        "again (a folder has one writer)"]
    assert sorted(p.name for p in run_dir.iterdir()) == [lock.NAME]  # nothing written, not even Hydra's .hydra/


@pytest.mark.e2e
def test_two_identical_sweeps_share_the_jobs(tmp_path):
    """The race of issue 17: two identical sweeps started 2 s apart over one folder."""
    sweep = ["-m", *[o for o in TINY if "limit_train" not in o], "trainer.limit_train_batches=12", "seed=0,1,2,3",
             f"hydra.sweep.dir={tmp_path / 'S'}"]
    first = Zygote.start("vitstem.train", *sweep, cwd=tmp_path, merge_stderr=True)
    time.sleep(2)
    second = Zygote.start("vitstem.train", *sweep, cwd=tmp_path, merge_stderr=True)
    outs = [p.result(timeout=900).stdout for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], [o[-2000:] for o in outs]
    for job in range(4):
        job_dir = tmp_path / "S" / str(job)
        trained = [o.count(f"run dir {job_dir} |") for o in outs]
        assert sum(trained) == 1, (job, trained)  # trained once, by one of the two
        assert json.loads((job_dir / "results.json").read_text())["status"] == "finished"
        with open(job_dir / "metrics.csv", newline="") as f:
            steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
        assert steps == sorted(set(steps)) and len(steps) == 12  # one writer: no duplicated or missing rows
    shared = [sum(o.count(f"run dir {tmp_path / 'S' / str(j)} |") for j in range(4)) for o in outs]
    print(f"jobs trained by the first sweep / the second: {shared}")


def test_a_sweep_leaves_a_busy_job_to_its_holder_and_keeps_the_job_numbers(tmp_path):
    """:class:`vitstem.runs.guard.ClaimingLauncher`: job 1's folder is held; jobs 0 and 2 run as jobs 0 and 2."""
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from vitstem.runs.guard import ClaimingLauncher

    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "S" / "1")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"

        class Launcher:  # records what it was asked to run
            calls = []

            def launch(self, batch, initial_job_idx):
                self.calls.append((initial_job_idx, [list(b) for b in batch]))
                return [JobReturn(overrides=list(b), status=JobStatus.COMPLETED, _return_value="ok") for b in batch]

        config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "S"), "subdir": "${hydra.job.num}"}}})
        for one_at_a_time, expected in ((False, [(0, [["seed=0"]]), (2, [["seed=2"], ["seed=3"]])]),
                                        (True, [(0, [["seed=0"]]), (2, [["seed=2"]]), (3, [["seed=3"]])])):
            inner = Launcher()
            inner.calls = []
            claiming = ClaimingLauncher(inner, config, loader=None)
            claiming.one_at_a_time = one_at_a_time
            returns = claiming.launch([["seed=0"], ["seed=1"], ["seed=2"], ["seed=3"]], initial_job_idx=0)
            assert inner.calls == expected
            assert [r.status for r in returns] == [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.COMPLETED,
                                                   JobStatus.COMPLETED]
            assert isinstance(returns[1]._return_value, lock.FolderBusy) and f"pid {proc.pid}" in str(returns[1]._return_value)
    finally:
        proc.kill()
        proc.wait()
