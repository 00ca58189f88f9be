"""The stability monitor (``callbacks.stability``), a thin callback around :mod:`vitstem.instrument.metrics`:
per-block gradient, parameter and update norms, gradient and loss spikes, and divergence.

:class:`StabilityMonitor`: every optimizer step it writes one row to a device-side record (the loss,
each block's largest absolute output and its gradient norm: a few small kernels, no host-device
synchronisation); every ``every_n_steps`` steps it reads the record to the host in one copy together with the
parameter norms of that moment, finds spikes and non-finite values step by step, and logs the norms. So a divergence is found at
most ``every_n_steps`` steps late but reported at its exact step. The record is also read before every
validation, at each epoch end, and before every checkpoint (:func:`diverged`, called by
:class:`~vitstem.runs.checkpoint.RunCheckpoint`): no checkpoint is written from weights that went non-finite,
so ``last.ckpt`` is the last good one. Under DDP the ranks agree on the earliest divergence (one all-reduce
per read).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import lightning as L
import numpy as np
import torch

from vitstem.instrument.metrics import (HEAD, STEM, SpikeDetector, block_layout, block_name, block_norms,
                                      first_nonfinite, loss_scale, spike_events, total_norm)

log = logging.getLogger("vitstem")

PHASES = ("forward", "backward", "update")
_NONE = 2 ** 62  # "no divergence" in the all-reduced key


def _log_metrics(trainer, metrics: dict, step: int) -> None:
    """Straight to the loggers at training step ``step`` (as Lightning's LearningRateMonitor does): ``self.log``
    would keep only the values of steps that fall on ``trainer.log_every_n_steps``."""
    metrics = {"epoch": trainer.current_epoch, **metrics}
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


class StabilityMonitor(L.Callback):
    """Per-block norms, spikes and divergence of the module's ``model`` (see the module docstring).

    Logged every ``every_n_steps`` steps: ``norms/{grad,param,update,update_ratio}/{stem,block_<i>,head,total}``
    (``update`` is the change the optimizer step made, ``update_ratio`` = update / parameter norm) and
    ``spikes/count``. A spike is a step whose loss exceeds ``loss_spike_factor`` x its running median, or whose
    gradient norm (total or of a block) exceeds ``grad_spike_factor`` x its own running median, over the last
    ``spike_window`` steps once ``spike_warmup`` steps are recorded; each names the first block, in network order,
    above threshold. The first ``max_spikes`` go to ``results.json`` (``spikes``; ``spikes_total`` counts all).
    A non-finite loss, gradient (unless a float16 gradient scaler skips such steps) or parameter stops the run:
    ``diverged_at_step`` (the first step, counted as ``global_step`` at its start, whose loss or gradients are
    non-finite; weights are checked when the record is read, so weights that an update made non-finite are
    reported at the next step, whose forward uses them, or at the last step read), ``diverged_block`` and
    ``diverged_phase`` (:func:`~vitstem.instrument.metrics.first_nonfinite`). Each block's output is followed in
    the training forward (one ``aminmax`` per block); not on a ``torch.compile``'d model, where a non-finite loss
    is then attributed to ``head``.
    """

    def __init__(self, every_n_steps: int, grad_spike_factor: float, loss_spike_factor: float, spike_window: int,
                 spike_warmup: int, max_spikes: int):
        self.every_n_steps, self.max_spikes = int(every_n_steps), int(max_spikes)
        self.grad_spikes = SpikeDetector(grad_spike_factor, spike_window, spike_warmup)
        self.loss_spikes = SpikeDetector(loss_spike_factor, spike_window, spike_warmup)
        self.spikes: list[dict] = []
        self.spikes_total = 0
        self.diverged: dict | None = None  # step, block, phase
        self.blocks: list[str] = []
        self.reads = 0  # device-to-host reads of the record (tests count them)
        self._rows: torch.Tensor | None = None
        self._hooks: list = []

    # set-up ------------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        model = pl_module.model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.blocks, index = block_layout(n for n, _ in named)
        self._params = [p for _, p in named]
        device = self._params[0].device
        self._index = torch.tensor(index, device=device)
        self._grad_index: dict[tuple | None, torch.Tensor] = {None: self._index}
        nb = len(self.blocks)
        self._width = 2 + 2 * nb  # step, loss, act[nb], grad[nb]
        self._rows = torch.zeros(self.every_n_steps, self._width, dtype=torch.float64, device=device)
        self._zero = torch.zeros((), device=device)
        self._grad = torch.zeros(nb, dtype=torch.float64, device=device)
        self._act: list = [None] * nb  # this step's (min, max) of each block's output, as tensors
        self._losses: list = []
        self._count, self._pending, self._snapshot, self._update, self._param = 0, None, None, None, None
        self._head = self.blocks.index(HEAD) if HEAD in self.blocks else nb - 1
        self._grads_decide = getattr(trainer.precision_plugin, "scaler", None) is None
        self._hook_outputs(model)

    def _hook_outputs(self, model) -> None:
        """Each block's smallest and largest output value, every training forward (for :func:`first_nonfinite`)."""
        if getattr(model, "_compiled_call_impl", None) is not None:
            return
        modules = {STEM: getattr(model, "patch_embed", None), HEAD: getattr(model, "head", None),
                   **{block_name(i): b for i, b in enumerate(getattr(model, "blocks", []))}}

        def hook(i):
            def record(module, args, output):
                if module.training and torch.is_grad_enabled():
                    low, high = torch.aminmax((output[0] if isinstance(output, tuple) else output).detach())
                    seen = self._act[i]  # another forward before this step (gradient accumulation)
                    self._act[i] = (low, high) if seen is None else (torch.minimum(seen[0], low),
                                                                     torch.maximum(seen[1], high))  # NaN wins
            return record

        self._hooks = [m.register_forward_hook(hook(self.blocks.index(name)))
                       for name, m in modules.items() if m is not None and name in self.blocks]

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # every step ----------------------------------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._rows is None or self.diverged:
            return
        if self._count == self.every_n_steps:  # not read for a whole window (cannot happen on the step schedule)
            self.check(trainer, pl_module)
        grads = [p.grad for p in self._params if p.grad is not None]
        present = tuple(p.grad is not None for p in self._params) if len(grads) < len(self._params) else None
        if present not in self._grad_index:  # parameters without a gradient (unused): their blocks' index
            self._grad_index[present] = self._index[torch.tensor(present, device=self._index.device)]
        nb = len(self.blocks)
        self._grad = block_norms(grads, self._grad_index[present], nb) if grads else self._grad.zero_()
        if (scale := loss_scale(trainer, optimizer)) is not None:  # fp16 gradients still loss-scaled: the true norms
            self._grad = self._grad / scale
        self._pending = trainer.global_step
        if (trainer.global_step + 1) % self.every_n_steps == 0:  # a logged step: the update's norm too
            self._snapshot = [p.detach().clone() for p in self._params]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._rows is None or self.diverged:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is not None:  # Lightning's loss divided by accumulate_grad_batches: summed, the batches' mean
            self._losses.append(loss.detach())
        if self._pending is None:  # accumulating gradients: no optimizer step yet
            return
        self._finish_row()
        if trainer.global_step % self.every_n_steps == 0:
            self.check(trainer, pl_module)

    def _finish_row(self) -> None:
        k, nb = self._count, len(self.blocks)
        seen = [a or (self._zero, self._zero) for a in self._act]
        act = torch.maximum(torch.stack([h for _, h in seen]), -torch.stack([lo for lo, _ in seen]))
        loss = self._losses[0] if len(self._losses) == 1 else torch.stack(self._losses).sum() if self._losses \
            else self._zero
        self._rows[k, 0] = self._pending
        self._rows[k, 1:] = torch.cat([loss.view(1), act, self._grad])
        if self._snapshot is not None:
            params = [p.detach() for p in self._params]
            self._update = block_norms(torch._foreach_sub(params, self._snapshot), self._index, nb)
            self._param, self._snapshot = block_norms(params, self._index, nb), None
        self._act, self._losses = [None] * nb, []
        self._count, self._pending = k + 1, None

    # reading the record --------------------------------------------------------------------------------------
    def check(self, trainer, pl_module) -> bool:
        """Read the steps recorded since the last read (one device-to-host copy; none if there are none): spikes,
        divergence, the norms of a logged step. Returns whether the run has diverged. Call on every rank at the
        same steps."""
        if self._rows is None or self.diverged:
            return self.diverged is not None
        if self._count == 0:
            return False
        n, nb = self._count, len(self.blocks)
        param = self._param if self._param is not None else block_norms([p.detach() for p in self._params],
                                                                           self._index, nb)  # the weights now
        update = self._update if self._update is not None else torch.full((nb,), float("nan"), device=param.device)
        host = torch.cat([self._rows[:n].reshape(-1), param, update]).cpu().numpy()  # the one copy to the host
        self.reads += 1
        rows, param, update = host[:n * self._width].reshape(n, self._width), host[-2 * nb:-nb], host[-nb:]
        self._count, self._update, self._param = 0, None, None
        loss, act, grad = rows[:, 1], rows[:, 2:2 + nb], rows[:, 2 + nb:]
        key, finite = _NONE, np.ones(nb)
        for r in range(n):  # the weights after the last step read: with its row
            found = first_nonfinite(loss[r], act[r], grad[r], param if r == n - 1 else finite, self._head,
                                    self._grads_decide)
            if found:
                key = (int(rows[r, 0]) * len(PHASES) + PHASES.index(found[0])) * 4096 + found[1]
                break
        if trainer.world_size > 1:  # the ranks agree on the earliest (a rank's own forward may break alone)
            key = int(trainer.strategy.reduce(torch.tensor(key, device=trainer.strategy.root_device), reduce_op="min"))
        bad_step = key // 4096 // len(PHASES) if key != _NONE else None
        for r in range(n):
            step = int(rows[r, 0])
            if bad_step is not None and step >= bad_step:
                break
            self._spikes(step, loss[r], grad[r])
        last = int(rows[-1, 0])
        if (last + 1) % self.every_n_steps == 0 and (bad_step is None or last < bad_step):
            self._log(trainer, last, grad[-1], param, None if np.isnan(update).all() else update)
        if bad_step is not None:
            self._diverge(trainer, pl_module, bad_step, PHASES[key // 4096 % len(PHASES)], self.blocks[key % 4096])
        return bad_step is not None

    def _spikes(self, step: int, loss: float, grad: np.ndarray) -> None:
        grads = np.append(grad, total_norm(grad))
        grad_spike, grad_median = self.grad_spikes.update(grads)
        loss_spike, loss_median = self.loss_spikes.update([loss])
        for event in spike_events(step, self.blocks, grads, grad_spike, grad_median, loss, bool(loss_spike[0]),
                                  float(loss_median[0])):
            self.spikes_total += 1
            if len(self.spikes) < self.max_spikes:
                self.spikes.append(event)
                log.warning("%s spike at step %d: %.1fx its running median; first block above threshold: %s",
                            event["kind"], step, event["ratio"], event["block"])

    def _log(self, trainer, step: int, grad: np.ndarray, param: np.ndarray, update: np.ndarray | None) -> None:
        metrics = {"spikes/count": self.spikes_total}
        series = {"grad": grad, "param": param}
        if update is not None:
            series |= {"update": update, "update_ratio": update / param}
        for kind, values in series.items():
            for name, v in zip(self.blocks, values):
                metrics[f"norms/{kind}/{name}"] = float(v)
        metrics["norms/grad/total"], metrics["norms/param/total"] = float(total_norm(grad)), float(total_norm(param))
        if update is not None:
            metrics["norms/update/total"] = float(total_norm(update))
            metrics["norms/update_ratio/total"] = metrics["norms/update/total"] / metrics["norms/param/total"]
        _log_metrics(trainer, metrics, step)

    def _diverge(self, trainer, pl_module, step: int, phase: str, block: str) -> None:
        self.diverged = {"step": step, "block": block, "phase": phase}
        pl_module.diverged_at_step = step
        trainer.should_stop = True
        what = {"forward": f"the output of {block} first", "backward": f"the gradient of {block} (nearest the loss)",
                "update": f"the parameters of {block} after the optimizer step"}[phase]
        log.warning("diverged: non-finite values at step %d in the %s (%s); stopping at step %d, the last "
                    "checkpoint written before it is kept", step, phase, what, trainer.global_step)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:  # no validation result, and no best accuracy, from weights gone non-finite
            self.check(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.check(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.check(trainer, pl_module)

    def results(self) -> dict:
        d = self.diverged or {}
        return {"diverged_block": d.get("block"), "diverged_phase": d.get("phase"), "spikes": list(self.spikes),
                "spikes_total": self.spikes_total}

    def state_dict(self) -> dict:
        return {"spikes": self.spikes, "spikes_total": self.spikes_total, "grad": self.grad_spikes.state_dict(),
                "loss": self.loss_spikes.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.spikes, self.spikes_total = list(state["spikes"]), int(state["spikes_total"])
        self.grad_spikes.load_state_dict(state["grad"]), self.loss_spikes.load_state_dict(state["loss"])


def diverged(trainer) -> bool:
    """Whether the run has diverged as of this step, the stability monitor's record read first (one copy to the
    host). Call on every rank at the same step."""
    module = trainer.lightning_module
    for callback in trainer.callbacks:
        if isinstance(callback, StabilityMonitor):
            callback.check(trainer, module)
    return getattr(module, "diverged_at_step", None) is not None
