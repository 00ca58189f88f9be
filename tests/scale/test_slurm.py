"""hydra/launcher=slurm and =local: sbatch options, Lightning's cluster environment, signals and requeue."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch

from tests.helpers import TINY, compose_config, train
from vitstem.scale import environments, slurm
from vitstem.train import Interrupted

SLURM_TASK = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_PROCID": "0",
              "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "vitstem-test"}


def vitstem_train(*args, cwd, **popen):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "vitstem.train", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def test_slurm_launcher_takes_nodes_from_the_trainer_and_one_task_per_gpu():
    cfg = compose_config(["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=4",
                          "hydra.launcher.gpus_per_node=4", "name=xiao"])
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (4, 4, 4)
    assert launcher.name == "vitstem-xiao" and launcher.signal_delay_s == 120 and launcher.max_num_timeout > 0
    assert launcher._target_.endswith("SlurmLauncher")
    assert compose_config(["hydra/launcher=local"]).hydra.launcher._target_.endswith("LocalLauncher")


def test_slurm_launcher_submits_this_sbatch_script(tmp_path, monkeypatch):
    """The plugin's launcher, as Hydra builds it, submits to a stand-in ``sbatch`` that keeps the script and fails."""
    for name, body in (("sbatch", f'cp "$1" {tmp_path}/job.sh\necho "sbatch: no cluster here" >&2\nexit 1'),
                       ("srun", "exit 1")):
        (tmp_path / name).write_text(f"#!/bin/sh\n{body}\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    cfg = compose_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer=ddp", "trainer.num_nodes=2",
                          "experiment=xiao_c_4gf", f"hydra.sweep.dir={tmp_path}/sweep"])
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=print, config=cfg)
    with pytest.raises(Exception, match="sbatch: no cluster here"):
        launcher.launch([["data=imagenet"]], initial_job_idx=0)
    script = (tmp_path / "job.sh").read_text()
    for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=10", "--partition=gpu",
                 "--signal=USR2@120", "--time=1440", "--job-name=vitstem-xiao_c_4gf"):
        assert f"#SBATCH {line}\n" in script
    assert "export SUBMITIT_EXECUTOR=slurm\nsrun " in script and "-m submitit.core._submit" in script


def test_a_missing_launcher_plugin_names_the_extra(monkeypatch):
    monkeypatch.setattr(slurm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match=r"launcher=slurm needs .*: pip install 'vitstem\[slurm\]'$"):
        slurm.require_launcher_plugin(["-m", "hydra/launcher=slurm", "seed=1,2"])
    slurm.require_launcher_plugin(["-m", "seed=1,2"])  # the basic launcher needs nothing
    slurm.require_launcher_plugin(["hydra/launcher=basic"])


class SignalProbe(L.Callback):
    """Writes the cluster environment and the handlers on SIGUSR1 / SIGUSR2 as training starts to ``path``."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module):
        env = trainer._accelerator_connector.cluster_environment
        name = lambda h: getattr(h, "__qualname__", type(h).__name__)  # noqa: E731
        Path(self.path).write_text(json.dumps({
            "env": type(env).__name__, "auto_requeue": getattr(env, "auto_requeue", None),
            "usr1": name(signal.getsignal(signal.SIGUSR1)), "usr2": name(signal.getsignal(signal.SIGUSR2))}))


@pytest.mark.e2e
@pytest.mark.parametrize("submitit", [True, False])
def test_lightning_requeues_on_slurm_only_without_submitit(submitit, tmp_path, monkeypatch):
    for k, v in {**SLURM_TASK, **({"SUBMITIT_EXECUTOR": "slurm"} if submitit else {})}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(slurm, "_requeue", {})
    usr2 = signal.getsignal(signal.SIGUSR2)
    probe = ["+callbacks.probe._target_=tests.scale.test_slurm.SignalProbe",
             f"+callbacks.probe.path={tmp_path}/seen.json"]
    try:
        results = train(TINY + probe, tmp_path)
    finally:
        signal.signal(signal.SIGUSR2, usr2)
    assert results["status"] == "finished"
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["env"] == "SLURMEnvironment" and seen["auto_requeue"] is not submitit
    assert seen["usr1"] == "RunCheckpoint._handler"  # vitstem's save-and-stop, also before Lightning's SLURM requeue
    if submitit:  # and on submitit's SIGUSR2, keeping submitit's requeue handler for after the checkpoint
        assert seen["usr2"] == "RunCheckpoint._handler"
    else:
        assert seen["usr2"] != "RunCheckpoint._handler"


def test_submitits_requeue_handler_is_kept_for_after_the_run(monkeypatch):
    calls = []
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setattr(slurm, "_requeue", {})
    submitit_handler = lambda sig, frame: calls.append(sig)  # noqa: E731
    assert slurm.requeue_signals() == ("SIGUSR2",)
    assert not slurm.defer_requeue(signal.SIGUSR1, submitit_handler)  # only submitit's own signal
    assert slurm.defer_requeue(signal.SIGUSR2, submitit_handler) and calls == [] and slurm.requeue_pending()
    slurm.requeue_if_signalled()
    assert calls == [signal.SIGUSR2]


class SignalAt(L.Callback):
    """Sends this process submitit's SIGUSR2 after training step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR2)


@pytest.mark.e2e
def test_requeue_comes_after_the_checkpoint_of_the_stopped_step(tmp_path, monkeypatch):
    """vitstem-train's order under submitit: signal in step 3's on_train_batch_end, stop at the step boundary right
    after it (step 3), last.ckpt, results.json, then submitit's requeue."""
    for k, v in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "4242"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(slurm, "_requeue", {})
    seen = []

    def submitit_requeue(sig, frame):  # what it finds on disk when it is called
        ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        seen.append((sig, ckpt["global_step"], json.loads((tmp_path / "results.json").read_text())["status"]))

    previous = signal.signal(signal.SIGUSR2, submitit_requeue)
    try:
        with pytest.raises(Interrupted, match="stopped by SIGUSR2"):
            train(TINY + ["trainer.limit_train_batches=10", "+callbacks.signal.step=3",
                          "+callbacks.signal._target_=tests.scale.test_slurm.SignalAt"], tmp_path)
        assert seen == []  # the signal only stopped training
        slurm.requeue_if_signalled()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "interrupted" and results["steps"] == 3  # the boundary after the signal's step
    assert seen == [(signal.SIGUSR2, 3, "interrupted")]


def test_no_plugins_and_no_handler_outside_submitit(monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert environments.lightning_plugins() == [] and slurm.requeue_signals() == ()
    assert not slurm.defer_requeue(signal.SIGUSR2, lambda sig, frame: None) and not slurm.requeue_pending()


def test_local_environment_reads_ranks_from_submitit(monkeypatch):
    for k, v in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "31337", "SUBMITIT_LOCAL_NTASKS": "2",
                 "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1"}.items():
        monkeypatch.setenv(k, v)
    [env] = environments.lightning_plugins()
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (2, 1, 1, 0)
    assert env.creates_processes_externally and env.main_port == 15000 + 31337 % 20000
    env.validate_settings(num_devices=2, num_nodes=1)
    with pytest.raises(ValueError, match="set hydra.launcher.tasks_per_node=1"):
        env.validate_settings(num_devices=1, num_nodes=1)


@pytest.mark.e2e
@pytest.mark.skipif(not os.environ.get("VITSTEM_SLOW_TESTS"), reason="about 150 s: set VITSTEM_SLOW_TESTS=1")
def test_local_multirun_of_ddp_jobs_requeues_a_signalled_job_and_finishes_both(tmp_path):
    """Two jobs of two DDP processes each (one process per task, as on SLURM). Job 0 gets submitit's SIGUSR2
    mid-training on rank 1 only: both ranks stop after the same batch, the job is requeued and runs again."""
    steps = 3 * 100
    proc = vitstem_train("-m", "hydra/launcher=local", "hydra.launcher.tasks_per_node=2", *TINY, "trainer.max_epochs=3",
                         "trainer.limit_train_batches=100", "trainer.accelerator=cpu", "trainer.devices=2",
                         "trainer.strategy=ddp", "seed=0,1", "name=requeue", cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not list(tmp_path.glob("multirun/requeue/0/metrics.csv")):  # the CSV log flushes at step 100
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
            time.sleep(0.05)
        sweep = tmp_path / "multirun" / "requeue"
        jobs = [d for d in (sweep / ".submitit").iterdir() if d.name.isdigit()]
        [job0] = [d for d in jobs if f"run dir {sweep / '0'} |" in (d / f"{d.name}_0_log.out").read_text()]
        tasks = Path(f"/proc/{job0.name}/task/{job0.name}/children").read_text().split()  # the controller's
        [rank1] = [t for t in tasks if b"SUBMITIT_LOCAL_GLOBALID=1\0" in Path(f"/proc/{t}/environ").read_bytes()]
        os.kill(int(rank1), signal.SIGUSR2)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    assert sorted(p.name for p in sweep.glob("[0-9]*")) == ["0", "1"]  # the requeued job kept its folder
    for job in ("0", "1"):
        results = json.loads((sweep / job / "results.json").read_text())
        assert results["status"] == "finished" and results["steps"] == steps and results["global_batch_size"] == 16
    [job1] = [d for d in jobs if d != job0]
    log = {(j, rank): (d / f"{d.name}_{rank}_log.out").read_text()
           for j, d in ((0, job0), (1, job1)) for rank in (0, 1)}
    stopped = int(re.search(r"SIGUSR2: checkpoint written at step (\d+)", log[0, 0]).group(1))
    assert 0 < stopped < steps  # rank 0 stopped too: the ranks agree on a signal every few steps
    # rank 1 got the signal, rank 0 learnt of it when the ranks synced; both stopped at the same step
    assert all("SIGUSR2: time limit or preemption" in log[0, rank] for rank in (0, 1))
    assert re.search(r"SIGUSR2: checkpoint written at step (\d+)", log[0, 1]).group(1) == str(stopped)
    requeued = {key: len(re.findall(r"^submitit INFO .* - Requeued job", text, re.M)) for key, text in log.items()}
    assert requeued == {(0, 0): 1, (0, 1): 0, (1, 0): 0, (1, 1): 0}  # by rank 0 of job 0 only
    starts = {key: text.count("Starting with JobEnvironment") for key, text in log.items()}
    assert starts == {(0, 0): 2, (0, 1): 2, (1, 0): 1, (1, 1): 1}
