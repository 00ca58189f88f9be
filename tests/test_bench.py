"""vitstem-bench on a tiny model: both paths train, the JSON and table are written (no timing asserted)."""
from __future__ import annotations

import json

import pytest

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
