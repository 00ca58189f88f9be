"""SIGTERM to every process of a 2-rank DDP job (as scancel sends it): a checkpoint and a stop within a deadline,
every time, and the same command resumes; no per-step broadcast or host sync under DDP."""
import json
import os
import signal
import subprocess
import time

import pytest
import torch

from tests.helpers import TINY, Zygote

DEADLINE_S = 60  # from SIGTERM to every process gone (a loaded 2-core CPU; a hang is what this catches)
LOG_EVERY = 3
# 2 epochs of 6 steps on 2 CPU ranks (gloo); the ranks agree on a stop every 3 steps and at epoch ends
DDP = [o for o in TINY if not o.startswith(("trainer.limit_train_batches", "trainer.max_epochs",
                                            "trainer.log_every_n_steps"))] + [
    "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_epochs=2",
    "trainer.limit_train_batches=6", f"trainer.log_every_n_steps={LOG_EVERY}",
    "+callbacks.term={_target_: tests.scale.probes.TermAll, steps: [1, 4]}",
    "+callbacks.syncs={_target_: tests.scale.probes.CountSyncs}"]


def _attempt(run_dir) -> tuple[int, float]:
    """One run of the command in its own process group: (exit code, seconds from its SIGTERM to the job's end)."""
    (run_dir / "sigterm_sent").unlink(missing_ok=True)
    proc = Zygote.start("vitstem.train", *DDP, f"hydra.run.dir={run_dir}", cwd=run_dir.parent, merge_stderr=True,
                        stdout=run_dir.parent / f"{run_dir.name}.log")  # a process and session of its own
    try:
        code = proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"the job did not end; its log: {(run_dir.parent / f'{run_dir.name}.log').read_text()[-3000:]}")
    sent = run_dir / "sigterm_sent"
    return code, (time.time() - float(sent.read_text())) if sent.is_file() else None


@pytest.mark.e2e
def test_sigterm_to_every_rank_checkpoints_stops_and_the_same_command_resumes(tmp_path):
    run_dir = tmp_path / "run"
    results = lambda: json.loads((run_dir / "results.json").read_text())  # noqa: E731
    ckpt_step = lambda: torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]  # noqa: E731
    # twice: SIGTERM in step 2 (acted on at step 3, a sync step) and, resumed, in step 5 (at the epoch end, 6)
    for stopped_at in (3, 6):
        code, stopped_in = _attempt(run_dir)
        log = (tmp_path / "run.log").read_text()
        assert code != 0 and results()["status"] == "interrupted", log[-3000:]
        assert stopped_in < DEADLINE_S, stopped_in
        assert results()["error"].startswith("stopped by SIGTERM") and results()["steps"] == stopped_at
        assert ckpt_step() == stopped_at
        assert "died" not in results()["error"] and not list(run_dir.glob("traceback*"))
        assert f"SIGTERM: checkpoint written at step {stopped_at}" in log
    code, _ = _attempt(run_dir)
    assert code == 0 and results()["status"] == "finished" and results()["steps"] == 12
    for rank in (0, 1):  # the last attempt trained steps 7..12: no broadcast; syncs only at agreement/log steps
        syncs = json.loads((run_dir / f"syncs_rank{rank}.json").read_text())
        assert syncs["broadcast"] == {}, syncs
        for name in ("all_reduce", "item", "tolist"):
            assert all(int(step) % LOG_EVERY == 0 for step in syncs[name]), (name, syncs)
