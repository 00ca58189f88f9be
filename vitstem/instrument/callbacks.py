"""The instrumentation's Lightning callbacks, one module each, configured in ``conf/callbacks/default.yaml``:

- :class:`~vitstem.instrument.stability.StabilityMonitor` (``callbacks.stability``): per-block norms, spikes,
  divergence (:func:`~vitstem.instrument.stability.diverged`).
- :class:`~vitstem.instrument.tokens.TokenStatistics` (``callbacks.tokens``): token diversity, attention statistics.
- :class:`~vitstem.instrument.throughput.Throughput` (``callbacks.throughput``): images/s, MFU.

Each adds its keys to ``results.json`` (:func:`results`).
"""
from __future__ import annotations

from vitstem.instrument import RESULT_KEYS
from vitstem.instrument.stability import StabilityMonitor, diverged
from vitstem.instrument.throughput import Throughput
from vitstem.instrument.tokens import TokenStatistics

__all__ = ["StabilityMonitor", "TokenStatistics", "Throughput", "diverged", "results"]


# results.json keys of the instrumentation: null when their callback is off or has measured nothing
def results(trainer) -> dict:
    """The instrumentation's ``results.json`` keys (:data:`RESULT_KEYS`) from the trainer's callbacks."""
    out = dict.fromkeys(RESULT_KEYS)
    for callback in trainer.callbacks if trainer is not None else ():
        if isinstance(callback, (StabilityMonitor, TokenStatistics, Throughput)):
            out.update(callback.results())
    return out
