"""Lightning DDP inside a Hydra multirun: each rank trains this job, in this job's folder, and nothing else.

Lightning starts ranks 1..N-1 of a node by running the command line again (``_SubprocessScriptLauncher``;
under Hydra with ``hydra.run.dir`` set to the parent's run folder). Inside ``vitstem-train -m`` that command
is the whole multirun, so a child re-runs the sweep in a second sweep folder and only pairs with rank 0 by
walking the same job list in lockstep (Lightning issue 11300). :class:`JobLauncher` replaces the launcher
of a trainer (:func:`adopt`) and fixes three things:

- **The child command** runs this one job in run mode: ``python -m vitstem.train <the job's own
  overrides> run_dir=<job folder> ckpt_path=<the checkpoint rank 0 resumes, or null>
  hydra.run.dir=<job folder> hydra.output_subdir=null``, with ``VITSTEM_DDP_CHILD=1`` in its environment
  (a child trains what rank 0 planned, and never decides to skip or retrain on its own).
- **The environment**: Lightning writes ``MASTER_ADDR/PORT``, ``NODE_RANK``, ``LOCAL_RANK`` and
  ``WORLD_SIZE`` into the parent's ``os.environ``; left there, the next job of the sweep believes it was
  launched externally and starts no ranks. :func:`job_environment` restores the environment at the end
  of each job and destroys the process group.
- **A rank that dies** fails its job, not the sweep: Lightning's observer SIGKILLs the parent process
  (and with it the whole sweep) when a child exits non-zero. Ours records the rank and its exit signal
  or code, stops the other children and lets the parent's collective fail (gloo raises at once when a
  peer disconnects; after ``grace_s`` the main thread is interrupted), so the job ends ``failed`` with
  that reason in ``results.json`` and the sweep moves on.
"""
from __future__ import annotations

import _thread
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import torch.distributed as dist
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

log = logging.getLogger("vitstem")

CHILD_ENV = "VITSTEM_DDP_CHILD"
RANK_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "RANK",
            "LOCAL_WORLD_SIZE", "PL_GLOBAL_SEED", CHILD_ENV)
_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


def is_child() -> bool:
    """True in a rank that a :class:`JobLauncher` started (it runs what rank 0 planned)."""
    return os.environ.get(CHILD_ENV) == "1"


def _config_flags(argv: list[str]) -> list[str]:
    """The config-location flags of the parent's command line (``-cn x``, ``--config-dir=y``)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in _CONFIG_FLAGS and i + 1 < len(argv):
            out += argv[i:i + 2]
            i += 2
            continue
        if arg.split("=", 1)[0] in _CONFIG_FLAGS:
            out.append(arg)
        i += 1
    return out


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def child_command(task_overrides: list[str], run_dir: str, ckpt_path: str | None, local_rank: int,
                  argv: list[str] | None = None) -> list[str]:
    """The command line that runs rank ``local_rank`` of this one job (see the module docstring)."""
    argv = sys.argv if argv is None else argv
    own = ("run_dir=", "ckpt_path=", "retrain=")
    overrides = [o for o in task_overrides if not o.startswith(own)]
    return [sys.executable, "-m", "vitstem.train", *_config_flags(argv[1:]), *overrides,
            f"run_dir={_quote(run_dir)}", f"ckpt_path={_quote(ckpt_path) if ckpt_path else 'null'}", "retrain=false",
            f"hydra.run.dir={_quote(run_dir)}", "hydra.output_subdir=null", f"hydra.job.name=ddp_rank{local_rank}"]


class JobLauncher(_SubprocessScriptLauncher):
    """Lightning's subprocess launcher with this job's child command and an observer that fails the job,
    not the process, when a rank dies."""

    def __init__(self, cluster_environment, num_processes: int, num_nodes: int, task_overrides: list[str],
                 run_dir: str, ckpt_path: str | None, grace_s: float = 30.0):
        super().__init__(cluster_environment, num_processes, num_nodes)
        self.task_overrides, self.run_dir, self.ckpt_path, self.grace_s = task_overrides, run_dir, ckpt_path, grace_s
        self.failure: str | None = None
        self._done = threading.Event()

    def launch(self, function, *args, trainer=None, **kwargs):
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
            threading.Thread(target=self._observe, daemon=True, name="vitstem-rank-observer").start()
        try:
            return function(*args, **kwargs)
        except BaseException:
            # a collective that failed because a peer died: wait a moment for the exit status to name it
            for _ in range(50):
                if self.failure or self._find_dead_rank():
                    break
                time.sleep(0.1)
            raise
        finally:
            self._done.set()
            if self.failure:
                raise RuntimeError(self.failure)

    def _find_dead_rank(self) -> bool:
        for local_rank, proc in enumerate(self.procs, start=1):
            code = proc.poll()
            if code:
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                rank = self.cluster_environment.node_rank() * self.num_processes + local_rank
                self.failure = f"rank {rank} (pid {proc.pid}) died with {how}"
                return True
        return False

    def join(self, timeout: float = 30.0) -> None:
        """Reap the children (no zombies); kill those still running after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _call_children_scripts(self) -> None:
        self._check_can_spawn_children()
        env = self.cluster_environment
        os.environ.update(MASTER_ADDR=env.main_address, MASTER_PORT=str(env.main_port), NODE_RANK=str(env.node_rank()),
                          LOCAL_RANK=str(env.local_rank()), WORLD_SIZE=str(self.num_processes * self.num_nodes))
        for local_rank in range(1, self.num_processes):
            child_env = {**os.environ, "LOCAL_RANK": str(local_rank), CHILD_ENV: "1"}
            command = child_command(self.task_overrides, self.run_dir, self.ckpt_path, local_rank)
            self.procs.append(subprocess.Popen(command, env=child_env))

    def _observe(self, period: float = 0.5) -> None:
        while not self._done.wait(period):
            if self._find_dead_rank():  # a rank died: fail this job (not the sweep)
                log.error("%s; stopping the job's other ranks", self.failure)
                self.kill(signal.SIGKILL)
                if not self._done.wait(self.grace_s):
                    _thread.interrupt_main()
                return
            if self.procs and all(p.poll() == 0 for p in self.procs):
                return


def adopt(trainer, task_overrides: list[str], run_dir: str, ckpt_path: str | None) -> None:
    """Give ``trainer`` a :class:`JobLauncher` if it would start ranks with Lightning's subprocess launcher."""
    launcher = getattr(trainer.strategy, "_launcher", None)
    if type(launcher) is _SubprocessScriptLauncher:
        trainer.strategy._launcher = JobLauncher(launcher.cluster_environment, launcher.num_processes,
                                                 launcher.num_nodes, task_overrides, run_dir, ckpt_path)


def launcher_failure(trainer) -> str | None:
    """Why a rank of this job died, if one did."""
    return getattr(getattr(trainer.strategy, "_launcher", None), "failure", None) if trainer is not None else None


def join_ranks(trainer) -> None:
    """Wait for the ranks this process started (after the job, so that none is left behind)."""
    launcher = getattr(trainer.strategy, "_launcher", None) if trainer is not None else None
    if isinstance(launcher, JobLauncher):
        launcher.join()


@contextlib.contextmanager
def job_environment() -> Iterator[None]:
    """Run one job: afterwards the rank variables are as before and no process group is left."""
    saved = {k: os.environ.get(k) for k in RANK_ENV}
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
