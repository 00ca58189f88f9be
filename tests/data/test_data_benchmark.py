"""benchmarks/data_throughput.py on a tiny generated ImageFolder."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "data_throughput.py"


@pytest.fixture(scope="module")
def bench():
    """The benchmark script, loaded as a module."""
    spec = importlib.util.spec_from_file_location("data_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_times_each_worker_setting_and_writes_json(tmp_path, bench):
    out = tmp_path / "throughput.json"
    bench.main(["--make-imagefolder", str(tmp_path / "in"), "--classes", "2", "--per-class", "8", "--size", "40",
                "--workers", "0", "--batches", "3", "--warmup", "1", "--out", str(out), "--augment", "basic", "xiao",
                "--", "model.img_size=32", "data.loader.batch_size=4"])
    jpegs = sorted((tmp_path / "in" / "train").rglob("*.JPEG"))
    assert len(jpegs) == 16 and len(list((tmp_path / "in" / "val").rglob("*.JPEG"))) == 4
    with Image.open(jpegs[0]) as img:
        assert (img.format, img.size) == ("JPEG", (50, 40))
    result = json.loads(out.read_text())
    assert (result["data"], result["img_size"], result["batch_size"], result["train_images"]) == ("imagenet", 32, 4, 16)
    basic, xiao = result["results"]
    assert (basic["augment"], xiao["augment"]) == ("basic", "xiao")
    assert basic["num_workers"] == 0 and basic["images"] == 12 and basic["images_per_s"] > 0
    assert basic["settings"]["auto_augment"] is None and xiao["settings"]["auto_augment"] == "v0"
    assert result["machine"]["cpu_count"] >= 1


def test_benchmark_times_folder_and_shards_and_the_workers_a_gpu_needs(tmp_path, bench):
    out = tmp_path / "throughput.json"
    bench.main(["--make-imagefolder", str(tmp_path / "in"), "--classes", "2", "--per-class", "8", "--size", "40",
                "--shards", str(tmp_path / "shards"), "--shard-size", "5", "--workers", "0", "--batches", "3",
                "--warmup", "1", "--gpu-images-per-s", "1000", "--out", str(out), "--augment", "deit",
                "--", "model.img_size=32", "data.loader.batch_size=4"])
    assert json.loads((tmp_path / "shards" / "index.json").read_text())["splits"]["train"]["samples"] == 16
    result = json.loads(out.read_text())
    assert (result["data"], result["train_images"], result["gpu_images_per_s"]) == ("imagenet", 16, 1000)
    folder, shards = result["results"]
    assert (folder["data"], shards["data"]) == ("imagenet", "imagenet_shards")
    for r in (folder, shards):
        assert r["augment"] == "deit" and r["images"] == 12 and r["settings"]["num_repeats"] == 3
        assert r["workers_needed"] == math.ceil(1000 / r["images_per_s_per_worker"])
