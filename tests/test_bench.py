"""vitstem-bench on a tiny model: both paths train, the JSON and table are written (no timing asserted)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitstem.config import ConfigError

from vitstem.bench import main as bench_main

TINY = ["model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.img_size=16", "data.img_size=16",
        "data.loader.batch_size=8", "trainer.accelerator=cpu"]


def test_bench_alternates_vitstem_and_a_plain_loop_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench_main([*TINY, "--attention", "softmax", "relu", "--steps", "3", "--warmup", "1", "--rounds", "2",
                "--out", str(out)])
    result = json.loads(out.read_text())
    softmax, relu = result["results"]
    assert (softmax["attention"], relu["attention"]) == ("softmax", "relu")
    for row in (softmax, relu):
        assert len(row["rounds"]["vitstem"]) == len(row["rounds"]["plain"]) == 2
        assert row["vitstem_step_ms"] > 0 and row["plain_step_ms"] > 0 and row["ratio"] > 0
        assert row["train_tflop_per_image"] > 0 and row["batch"] == 8
    assert result["torch"] and result["device"] and "| vit_p_32 | relu |" in capsys.readouterr().out


@pytest.mark.parametrize("bad,message", [("model=nope", "Could not find 'model/nope'"),
                                         ("optimizer.lr=abc", "optimizer.lr='abc' must be a number")])
def test_a_bad_override_is_one_line_before_any_compute(tmp_path, bad, message):
    with pytest.raises(SystemExit) as done:
        bench_main([bad, "--out", str(tmp_path / "b.json")])
    assert str(done.value).startswith("vitstem-bench: configuration error:") and message in str(done.value)
    assert not (tmp_path / "b.json").exists()


def test_memory_mode_estimates_without_running_and_suggests_a_batch_that_fits(tmp_path, capsys):
    """ViT-S/8 with ReLU attention at 512 per GPU (the documented batch before): about 135 GB estimated, more than an
    H200; 256 x 2 accumulated keeps the images per step and fits 80 GB."""
    out = tmp_path / "memory.json"
    bench_main(["experiment=wortsman_s8_relu", "data.loader.batch_size=512", "trainer.accumulate_grad_batches=1",
                "--memory", "80", "--out", str(out)])
    m = json.loads(out.read_text())["memory"]
    assert (m["model"], m["precision"], m["batch"]) == ("vit_s8", "bf16-mixed", 512)
    assert 120 < m["estimate_gb"] < 150 and m["attention_maps_gb"] > 40
    assert m["fits"] == {"batch_size": 256, "accumulate_grad_batches": 2} and 256 <= m["largest_batch"] < 512
    assert "use data.loader.batch_size=256 trainer.accumulate_grad_batches=2" in capsys.readouterr().out


REPO = Path(__file__).resolve().parents[1]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_dry_mode_composes_every_command_and_runs_none(tmp_path, capsys):
    """benchmarks/gpu_check.py --dry on a CPU: every step printed, every vitstem config composed and validated, no
    file written; the steps cover the issue's list (precision, both models x attention x compile, pinned vs unpinned,
    checkpoint cadence, SIGTERM then the same command)."""
    gpu_check = load_gpu_check()
    out = tmp_path / "gpu"
    assert gpu_check.main(["--dry", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    names = [s["name"] for s in gpu_check.steps(out)]
    assert names == ["precision", "bench vit_s16", "bench vit_c_4gf", "data pin_memory=true", "data pin_memory=false",
                     "checkpoints every 10 steps", "checkpoints end only", "sigterm then resume"]
    for name in names:
        assert f"[{name}, at most" in text
    assert text.count("--attention softmax relu --compile off on") == 2 and f"{out}/bench_vit_c_4gf.json" in text
    assert "dry run: 8 steps composed, none run" in text and not out.exists()


def test_gpu_check_dry_mode_refuses_a_command_that_does_not_compose(tmp_path, monkeypatch):
    gpu_check = load_gpu_check()
    monkeypatch.setitem(gpu_check.CADENCES, "broken", ["trainer.precision=bf17"])
    with pytest.raises(ConfigError, match="trainer.precision=.bf17"):
        gpu_check.main(["--dry", "--out", str(tmp_path)])


@pytest.mark.e2e
def test_gpu_check_sh_dry(tmp_path):
    """The shell entry point in its dry mode (what a CPU can run of it): the install lines and every step printed."""
    env = {**os.environ, "DRY": "1", "PYTHON": sys.executable, "OUT": str(tmp_path / "gpu")}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("+ command -v uv || pip install uv\n+ uv sync\n")
    assert "dry run: 8 steps composed, none run" in proc.stdout and not (tmp_path / "gpu").exists()
