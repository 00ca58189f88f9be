"""benchmarks/data_throughput.py on a tiny generated ImageFolder."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "data_throughput.py"


def test_benchmark_times_each_worker_setting_and_writes_json(tmp_path):
    spec = importlib.util.spec_from_file_location("data_throughput", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
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
