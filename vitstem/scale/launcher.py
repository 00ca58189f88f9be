"""The launcher of one DDP job inside a Hydra multirun (see :mod:`vitstem.scale.ddp` for why and how)."""
from __future__ import annotations

import _thread
import logging
import os
import signal
import subprocess
import threading
import time

from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from vitstem.scale.ddp import CHILD_ENV, INTERRUPTED_EXIT, child_command

log = logging.getLogger("vitstem")


class JobLauncher(_SubprocessScriptLauncher):
    """Lightning's subprocess launcher with this job's child command and an observer that fails the job,
    not the process, when a rank dies."""

    def __init__(self, cluster_environment, num_processes: int, num_nodes: int, task_overrides: list[str],
                 run_dir: str, ckpt_path: str | None, grace_s: float = 30.0):
        super().__init__(cluster_environment, num_processes, num_nodes)
        self.task_overrides, self.run_dir, self.ckpt_path, self.grace_s = task_overrides, run_dir, ckpt_path, grace_s
        self.failure: str | None = None
        self._done = threading.Event()
        self._lock, self._handled = threading.Lock(), False

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
                    self._dead_rank_found()
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
            if code and code != INTERRUPTED_EXIT:
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
                self._dead_rank_found()
                if not self._done.wait(self.grace_s):
                    _thread.interrupt_main()
                return
            if self.procs and all(p.poll() in (0, INTERRUPTED_EXIT) for p in self.procs):
                return

    def _dead_rank_found(self) -> None:
        """Once, by whichever thread sees it first: stop the other ranks and abort the process group."""
        with self._lock:
            if self._handled:
                return
            self._handled = True
        log.error("%s; stopping the job's other ranks and aborting the process group", self.failure)
        self.kill(signal.SIGKILL)
        if self._abort_process_group():
            self.failure += "; the process group was aborted"

    @staticmethod
    def _abort_process_group() -> bool:
        """Abort this process's default process group: a collective blocked on the dead peer (NCCL waits for
        its timeout otherwise) returns with an error in the main thread. True if it was aborted."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return False
        try:
            dist.distributed_c10d._abort_process_group()
        except Exception as e:  # noqa: BLE001  (a backend without abort: the main thread is interrupted instead)
            log.warning("could not abort the process group (%s: %s)", type(e).__name__, e)
            return False
        return True


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
    launcher = getattr(getattr(trainer, "strategy", None), "_launcher", None)
    if isinstance(launcher, JobLauncher):
        launcher.join()
