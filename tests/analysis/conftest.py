"""Fixtures of the analysis tests: a fake sweep folder (tests/analysis/fake_sweep.py), no training."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.analysis.fake_sweep import make_sweep


@pytest.fixture
def sweep(tmp_path) -> Path:
    return make_sweep(tmp_path)
