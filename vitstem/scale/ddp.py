"""Lightning DDP inside a Hydra multirun: each rank trains this job, in this job's folder, and nothing else.

Lightning starts ranks 1..N-1 of a node by running the command line again (``_SubprocessScriptLauncher``;
under Hydra with ``hydra.run.dir`` set to the parent's run folder). Inside ``vitstem-train -m`` that command
is the whole multirun, so a child re-runs the sweep in a second sweep folder and only pairs with rank 0 by
walking the same job list in lockstep (Lightning issue 11300). :class:`JobLauncher` replaces the launcher
of a trainer (:func:`vitstem.scale.launcher.adopt`; the launcher module imports Lightning, this one stays light for
the command line's start-up and is imported by it, never the other way round) and fixes three things:

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
  or code, stops the other children and aborts this process's process group, so that a collective
  waiting for the dead peer returns with an error (NCCL does not notice a dead peer by itself: it would
  wait for its timeout, 30 minutes, and its watchdog would then abort the whole multirun; gloo notices a
  closed connection, but not a peer that hangs); after ``grace_s`` the main thread is interrupted too.
  The job ends ``failed`` with that reason in ``results.json`` and the sweep moves on. A rank that stopped
  on a signal with the others exits with :data:`INTERRUPTED_EXIT`, which is not a death.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

log = logging.getLogger("vitstem")

CHILD_ENV = "VITSTEM_DDP_CHILD"
INTERRUPTED_EXIT = 75  # the exit code of a rank that stopped on a signal after its checkpoint (EX_TEMPFAIL)
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
    from vitstem.runs.identity import PLANNED  # rank 0 decided these: the child is told them below

    overrides = [o for o in task_overrides if o.lstrip("+~").split("=", 1)[0] not in PLANNED]
    return [sys.executable, "-m", "vitstem.train", *_config_flags(argv[1:]), *overrides,
            f"run_dir={_quote(run_dir)}", f"ckpt_path={_quote(ckpt_path) if ckpt_path else 'null'}", "retrain=false",
            f"hydra.run.dir={_quote(run_dir)}", "hydra.output_subdir=null", f"hydra.job.name=ddp_rank{local_rank}"]


def fresh_process_state() -> None:
    """What a previous job of this process left behind, cleared: torch.compile's caches (dynamo keeps the graphs of
    every model it saw, keyed on the same code: from the ninth job on it hit its recompile limit and ran the model
    uncompiled) and, on a GPU, the memory of objects only a reference cycle kept (``gc``), handed back to it. On a
    CPU the collection is left to Python's own schedule: a full one costs ~0.25 s in a process that imported torch,
    for memory the host gets back anyway."""
    if "torch" not in sys.modules:  # nothing can be cached by a torch that was never imported
        return
    import gc

    import torch

    torch.compiler.reset()
    if torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


@contextlib.contextmanager
def job_environment() -> Iterator[None]:
    """Run one job: before it, a fresh process state (:func:`fresh_process_state`); afterwards the rank variables are
    as before and no process group is left."""
    fresh_process_state()
    saved = {k: os.environ.get(k) for k in RANK_ENV}
    try:
        yield
    finally:
        dist = sys.modules.get("torch.distributed")  # no process group can exist if it was never imported
        if dist is not None and dist.is_available() and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as e:  # noqa: BLE001  (a group aborted after a rank died may refuse; it is gone)
                log.warning("destroying the process group: %s: %s", type(e).__name__, e)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
