"""Test callbacks for DDP runs: a scheduler's SIGTERM to every process of a job, and host syncs counted per step."""
from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist


class TermAll(L.Callback):
    """Global rank 0 sends SIGTERM to its whole process group (all ranks of the job, as ``scancel`` signals every
    task) during training step s + 1, for each s in ``steps`` that this attempt reaches."""

    def __init__(self, steps: list[int]):
        self.steps = set(steps)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.is_global_zero and trainer.global_step in self.steps:
            self.steps.discard(trainer.global_step)
            (Path(trainer.default_root_dir) / "sigterm_sent").write_text(repr(time.time()))
            os.killpg(os.getpgid(0), signal.SIGTERM)


class CountSyncs(L.Callback):
    """Counts, per ``global_step``, the calls that synchronise the ranks or the host with the device during
    training (validation excluded): ``dist.broadcast``, ``dist.all_reduce``, and ``Tensor.item`` /
    ``Tensor.tolist`` of a tensor that went through one of them (on a CPU every tensor is on the host, so
    reads of data tensors are not counted).
    Each rank writes ``syncs_rank<r>.json`` into the run folder: ``{name: {step: count}}``."""

    NAMES = (("dist", "broadcast"), ("dist", "all_reduce"), ("tensor", "item"), ("tensor", "tolist"))

    def __init__(self):
        self.counts: dict[str, Counter] = {name: Counter() for _, name in self.NAMES}
        self._originals: dict = {}
        self._active = False
        self._trainer = None

    def _patch(self) -> None:
        for owner_name, name in self.NAMES:
            owner = dist if owner_name == "dist" else torch.Tensor
            original = getattr(owner, name)
            self._originals[(owner_name, name)] = original

            def counted(*args, _original=original, _name=name, _collective=owner_name == "dist", **kwargs):
                if self._active and (_collective or getattr(args[0], "_collective", False)):
                    self.counts[_name][self._trainer.global_step] += 1
                if _collective and args and isinstance(args[0], torch.Tensor):
                    args[0]._collective = True  # its value read to the host later: a sync that waits for it
                return _original(*args, **kwargs)
            setattr(owner, name, counted)

    def _unpatch(self) -> None:
        for (owner_name, name), original in self._originals.items():
            setattr(dist if owner_name == "dist" else torch.Tensor, name, original)
        self._originals = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self._trainer, self._active = trainer, True
        self._patch()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._active = False

    def on_validation_end(self, trainer, pl_module) -> None:
        self._active = trainer.training

    def on_train_end(self, trainer, pl_module) -> None:
        self._active = False
        self._unpatch()
        out = {name: {str(k): v for k, v in sorted(c.items())} for name, c in self.counts.items()}
        (Path(trainer.default_root_dir) / f"syncs_rank{trainer.global_rank}.json").write_text(json.dumps(out))
