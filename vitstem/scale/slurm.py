"""vitstem under submitit (``hydra/launcher=slurm`` and ``hydra/launcher=local``): processes, signals, requeue.

``hydra/launcher=slurm`` (``conf/hydra/launcher/slurm.yaml``, hydra-submitit-launcher's ``submitit_slurm``;
``pip install vitstem[slurm]``) submits every job of a multirun (``vitstem-train -m ...``) as one SLURM job of
``nodes x tasks_per_node`` processes, one per GPU, started by ``srun``; each process runs the Hydra job (the
training with that job's overrides) into the job's run folder. ``hydra/launcher=local`` does the same on this
machine with submitit's local executor (one process per task, no SLURM), for trying it out.

**Processes.** The launcher starts the processes, so Lightning must not start more:
:func:`vitstem.scale.environments.lightning_plugins` gives the trainer its cluster environment, Lightning's
``SLURMEnvironment`` on SLURM (ranks from ``SLURM_PROCID`` / ``SLURM_LOCALID`` / ``SLURM_NODEID``, rendezvous on
the first node, port from the job id) and its ``SubmititLocalEnvironment`` locally. ``trainer.devices`` must equal ``tasks_per_node`` and
``trainer.num_nodes`` the job's nodes (both environments check it before training).

**Time limit and preemption**, step by step:

1. submitit's sbatch script asks for ``--signal=USR2@<signal_delay_s>``: SLURM sends SIGUSR2 to every task
   that long before the time limit, and at preemption on clusters with ``PreemptParameters=send_user_signal``.
   The signal is submitit's ``JobEnvironment.USR_SIG`` (``$SUBMITIT_PREEMPT_SIGNAL``, default ``USR2``;
   submitit avoids USR1, which NCCL may catch). The local executor sends it 30 s before ``timeout_min``.
2. Before it calls the job, submitit installs in every task ``SignalHandler.checkpoint_and_try_requeue`` on
   SIGUSR2, and a handler that only logs on SIGTERM and SIGCONT.
3. Left alone, that handler acts in global rank 0 only (other ranks log and return): it calls the launcher's
   ``checkpoint()``, which returns a ``DelayedSubmission`` of the same Hydra job (same overrides and job
   number, so the same run folder), pickles it over the job's submitted pickle, runs ``scontrol requeue
   <job id>`` (the local executor instead exits with code 144, on which its controller starts the tasks
   again) and exits with ``sys.exit(-1)``, in the middle of whatever training step was running.
4. vitstem-train's checkpoint callback (:class:`vitstem.runs.checkpoint.RunCheckpoint`) handles that signal
   too (:func:`requeue_signals`) and replaces submitit's handler in every rank; :func:`defer_requeue` keeps
   submitit's handler aside instead of running it. Training stops after the current step, in all ranks at
   the same step (the ranks agree every ``callbacks.checkpoint.sync_every`` steps, so a rank the signal
   missed stops too), ``checkpoints/last.ckpt`` is written and ``results.json`` says ``interrupted``
   (``stopped by SIGUSR2``). Then vitstem-train calls :func:`requeue_if_signalled`, which runs submitit's
   handler: rank 0 dumps, requeues and exits, the other ranks return. The checkpoint is on disk before SLURM
   is asked to requeue; the current step and the checkpoint must fit in ``signal_delay_s``.
5. Time-outs are requeued at most ``max_num_timeout`` times (a signal after 80% of ``timeout_min``, or in
   its last 10 minutes, counts as a time-out); preemptions are not counted.
6. The requeued job runs the same pickled Hydra job into the same run folder (the ``${now:...}`` of the
   sweep folder is cached in the pickled config), where vitstem-train resumes from ``checkpoints/last.ckpt``.

**Lightning's own SLURM handling** (``SLURMEnvironment(auto_requeue=True)``, what Lightning picks by itself
under ``srun``) installs at fit start a SIGUSR1 handler that writes ``hpc_ckpt_<n>.ckpt`` inside the handler
and runs ``scontrol requeue`` itself, and resumes from such a file: a second requeue mechanism, racing
submitit's, so it is off under submitit (``auto_requeue=False``). Lightning leaves SIGUSR2 alone. Its own
SIGTERM handling is switched off by the checkpoint callback (its handler runs a broadcast inside the signal
handler and forwards SIGTERM to the ranks it started, so a job whose every task gets SIGTERM from
``scancel`` can hang; its loop broadcasts the flag every step). SIGTERM (sent by SLURM at the hard limit,
at preemption without ``send_user_signal``, and by ``scancel``) is handled like SIGUSR2 above: the ranks
agree, checkpoint and stop. With ``PreemptMode=REQUEUE`` SLURM then requeues the job itself, and it runs
again as in step 6.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sys

log = logging.getLogger("vitstem")

SUBMITIT_LAUNCHERS = ("slurm", "local", "submitit_slurm", "submitit_local")
_requeue: dict = {}  # submitit's handler and signal under submitit; "asked" once the signal has come


def require_launcher_plugin(args: list[str]) -> None:
    """Exit with the install command when the command line picks a submitit launcher that is not installed."""
    chosen = [a.split("=", 1)[1] for a in args if a.lstrip("+").startswith("hydra/launcher=")]
    if chosen and chosen[-1] in SUBMITIT_LAUNCHERS \
            and importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        sys.exit(f"vitstem-train: hydra/launcher={chosen[-1]} needs hydra-submitit-launcher: "
                 "pip install 'vitstem[slurm]'")


def executor() -> str | None:
    """``"slurm"`` or ``"local"`` inside a job that submitit started, else None."""
    return os.environ.get("SUBMITIT_EXECUTOR") or None


def requeue_signals() -> tuple[str, ...]:
    """Under submitit, the name of its time-limit / preemption signal (``SIGUSR2``), for the checkpoint
    callback to handle; elsewhere none."""
    if executor() is None:
        return ()
    import submitit

    return ("SIG" + submitit.JobEnvironment.USR_SIG,)


def defer_requeue(signum: int, previous) -> bool:
    """Given the handler that vitstem's checkpoint handler replaced on ``signum``: if it is submitit's requeue
    handler, keep it for :func:`requeue_if_signalled` (after the checkpoint) instead of letting it run now,
    in the middle of a training step, and return True."""
    if executor() is None or not callable(previous) or signal.Signals(signum).name not in requeue_signals():
        return False
    log.warning("%s: time limit or preemption; checkpoint after this step, then the job is requeued",
                signal.Signals(signum).name)
    _requeue.update(submitit_handler=previous, signum=signum)
    return True


def requeue_pending() -> bool:
    """Whether submitit's requeue signal has come to this process."""
    return "submitit_handler" in _requeue


def requeue_if_signalled() -> None:
    """After the run stopped for submitit's signal: run submitit's handler (global rank 0 dumps the job,
    requeues it and exits; the other ranks return)."""
    if requeue_pending():
        log.warning("training stopped with its checkpoint written; submitit requeues the job")
        _requeue["submitit_handler"](_requeue["signum"], None)
