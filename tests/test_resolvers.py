"""The config resolvers: run folder names, log-uniform draws, the precision of the machine."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import compose_config
from vitstem.resolvers import dirname, loguniform, precision


def test_dirname_and_loguniform():
    assert dirname("") == "base" and dirname("model=vit_c_32,data/augment=deit") == "model=vit_c_32,data.augment=deit"
    long = dirname("x=" + "a" * 300)
    assert len(long) == 120 and long != dirname("x=" + "a" * 299 + "b")
    assert loguniform(0.0, [1e-4, 1e-2]) == pytest.approx(1e-4) and loguniform(0.5, [1e-4, 1e-2]) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="0 < low < high"):
        loguniform(0.5, [1e-2, 1e-4])


def test_precision_is_bf16_mixed_only_on_a_bf16_gpu(monkeypatch):
    assert compose_config([]).trainer.precision == ("bf16-mixed" if torch.cuda.is_available() else "32-true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert (precision("auto"), precision("gpu"), precision("cpu")) == ("bf16-mixed", "bf16-mixed", "32-true")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert precision("gpu") == "32-true"
    assert compose_config(["trainer.precision=16-mixed"]).trainer.precision == "16-mixed"
