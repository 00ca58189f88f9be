"""The command-line layer imports no heavy library (torch, timm, Lightning, scipy) before the config is checked; the
models still register with timm whenever timm is imported. (The seconds are benchmarks/, not tests.)"""
from __future__ import annotations

import subprocess
import sys

import pytest

CODE = """
import sys
import vitstem.train, vitstem.recipes, vitstem.bench, vitstem.data.shard_cli
import hydra_plugins.vitstem_sweeper  # Hydra's plugin scan imports it at every start
print(sorted(m for m in ("torch", "timm", "lightning", "torchvision", "scipy", "matplotlib") if m in sys.modules))
import timm  # vitstem was imported first: its hook registers the zoo now
print(timm.is_model("vit_c_4gf"), timm.is_model("vit_s8"))
"""


@pytest.mark.e2e  # starts a Python process
def test_cli_modules_import_no_heavy_library_and_models_register_with_timm_later():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True True"
