"""Jobs of a multirun in one process: each starts from a fresh torch.compile cache (and collected memory)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers import TINY, train
from vitstem.scale.ddp import fresh_process_state


@pytest.mark.e2e  # two whole runs in-process
def test_two_compiled_jobs_in_one_process_each_compile_once(tmp_path, monkeypatch):
    """Dynamo keys its cache on the model's code, which every job shares: without a reset the second job's model is a
    recompilation, and once the limit (8; 1 here, to see it with two jobs) is hit later jobs run uncompiled."""
    graphs: list[int] = []

    def backend(gm, example_inputs):  # counts dynamo's compilations; runs the graph eagerly (cheap on a CPU)
        graphs.append(len(gm.graph.nodes))
        return gm.forward

    compile_ = nn.Module.compile
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compile_(self, backend=backend))
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    per_job = []
    for job in range(2):
        before = len(graphs)
        result = train(TINY + ["compile=true"], tmp_path / f"job{job}")
        assert result["status"] == "finished", result["error"]
        per_job.append(graphs[before:])
    assert per_job[0] and per_job[1] == per_job[0]  # the same graphs compiled again, not skipped


@pytest.mark.parametrize("on_gpu", [False, True])
def test_a_job_collects_reference_cycles_and_empties_the_cache_only_on_a_gpu(monkeypatch, on_gpu):
    import gc

    calls = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("collect") or 0)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: on_gpu)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.compiler, "reset", lambda: calls.append("reset"))
    fresh_process_state()
    assert calls == (["reset", "collect", "empty_cache"] if on_gpu else ["reset"])
