"""Lightning's cluster environment for the processes of a submitit local job (``hydra/launcher=local``)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lightning.fabric.plugins.environments import ClusterEnvironment

from vitstem.scale.slurm import executor

_HELD: list = []  # the GPU locks this process holds, for its life


def claim_gpus(visible: str | None, rank: int):
    """Refuse to share GPUs with another job on this machine: submitit's local executor starts every job of a batch at
    once and gives each the same ``CUDA_VISIBLE_DEVICES=0..n-1``, so concurrent jobs would pile onto the same GPUs.
    Rank 0 of a job holds a lock on its GPUs while it lives; a second job's rank 0 gets a one-line error (the sweep
    records the job as failed). Run GPU multiruns locally one job at a time: ``hydra.sweeper.max_batch_size=1``."""
    if not visible or visible == "-1" or rank != 0:
        return None
    import fcntl

    from vitstem.config import ConfigError

    path = Path(tempfile.gettempdir()) / f"vitstem-local-gpus-{os.getuid()}-{visible.replace(',', '_')}.lock"
    lock = open(path, "w")  # noqa: SIM115 (held open: the lock lasts as long as the process)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ConfigError(f"hydra/launcher=local: another job on this machine is using GPUs {visible} (submitit's local "
                          "executor gives every job of a batch the same GPUs); run one GPU job at a time with "
                          "hydra.sweeper.max_batch_size=1, or use hydra/launcher=slurm") from None
    _HELD.append(lock)
    return lock


class SubmititLocalEnvironment(ClusterEnvironment):
    """The processes of a submitit local job: one per task, ranks from submitit's variables, one machine."""

    def __init__(self) -> None:
        import submitit
        import torch

        self.job = submitit.JobEnvironment()
        claim_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), self.job.global_rank)
        if "OMP_NUM_THREADS" not in os.environ:  # share the cores, as Lightning does for processes it starts
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.job.num_tasks))

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return "127.0.0.1"

    @property
    def main_port(self) -> int:  # the same in every task of a job (its id is the controller's pid)
        return 15000 + int(self.job.job_id.split("_")[0]) % 20000

    @staticmethod
    def detect() -> bool:
        return executor() == "local"

    def world_size(self) -> int:
        return self.job.num_tasks

    def set_world_size(self, size: int) -> None:
        pass

    def global_rank(self) -> int:
        return self.job.global_rank

    def set_global_rank(self, rank: int) -> None:
        pass

    def local_rank(self) -> int:
        return self.job.local_rank

    def node_rank(self) -> int:
        return 0

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        if num_devices * num_nodes != self.world_size():
            raise ValueError(f"trainer.devices={num_devices} x trainer.num_nodes={num_nodes} processes, but the job "
                             f"has {self.world_size()} tasks: set hydra.launcher.tasks_per_node={num_devices}")


def lightning_plugins() -> list:
    """The trainer's cluster environment under submitit (none elsewhere: Lightning picks its own)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if executor() == "slurm":
        return [SLURMEnvironment(auto_requeue=False)]
    if executor() == "local":
        return [SubmititLocalEnvironment()]
    return []
