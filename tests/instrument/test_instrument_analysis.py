"""``vitstem-analyze --job``: a job's per-block curves from its metrics.csv (a hand-written job folder, no training)."""
from __future__ import annotations

import csv
import json

import pytest

from vitstem.analysis.cli import main
from vitstem.analysis.collect import read_blocks

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def sweep(tmp_path):
    """Job 0: norms at steps 4 and 9 (a gradient spike at 9), diversity after epochs 0 and 1; job 1: no metrics."""
    job = tmp_path / "0"
    job.mkdir()
    rows = [{"epoch": 0, "step": 4, "norms/grad/stem": 1.0, "norms/grad/block_00": 2.0, "norms/grad/head": 3.0,
             "norms/grad/total": 3.7, "norms/update_ratio/stem": 1e-3},
            {"epoch": 0, "step": 4, "train/loss": 2.3},
            {"epoch": 0, "step": 9, "diversity/stem": 0.5, "diversity/block_00": 0.4, "val/acc1": 20.0,
             "attention/entropy/block_00": 2.0},
            {"epoch": 1, "step": 9, "norms/grad/stem": 9.0, "norms/grad/block_00": 2.5, "norms/grad/head": 3.5,
             "norms/grad/total": 10.0, "norms/update_ratio/stem": 2e-3},
            {"epoch": 1, "step": 19, "diversity/stem": 0.45, "diversity/block_00": 0.3, "val/acc1": 30.0,
             "attention/entropy/block_00": 1.5}]
    columns = sorted({k for r in rows for k in r})  # Lightning's CSV: columns in alphabetical order
    with (job / "metrics.csv").open("w", newline="") as f:
        out = csv.DictWriter(f, columns)
        out.writeheader()
        out.writerows(rows)
    spike = {"step": 9, "kind": "grad", "block": "stem", "blocks": ["stem"], "ratio": 9.0}
    (job / "results.json").write_text(json.dumps({"status": "finished", "best_val_err1": 70.0, "spikes": [spike],
                                                  "diverged_at_step": None, "overrides": ["seed=0"]}))
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "results.json").write_text(json.dumps({"status": "failed", "overrides": ["seed=1"]}))
    return tmp_path


def test_read_blocks_in_network_order(sweep):
    grad = read_blocks(sweep / "0", "norms/grad/")
    assert list(grad) == ["stem", "block_00", "head", "total"]
    assert grad["stem"] == [(4.0, 1.0), (9.0, 9.0)]
    assert read_blocks(sweep / "0", "diversity/", by="epoch") == {"stem": [(1.0, 0.5), (2.0, 0.45)],
                                                                   "block_00": [(1.0, 0.4), (2.0, 0.3)]}
    assert read_blocks(sweep / "1", "norms/grad/") == {}


def test_job_curves_are_written_and_in_the_report(sweep, capsys):
    main([str(sweep), "--job", "0", "--job", "1"])
    out = sweep / "analysis"
    for job in ("0", "1"):  # job 1 has no metrics.csv: its figures say so
        for name in ("grad_norms", "update_ratio", "diversity", "attention"):
            assert (out / f"job{job}_{name}.png").read_bytes().startswith(PNG)
    report = (out / "report.html").read_text()
    assert "Job 0: gradient norm per block" in report and "Job 1: patch-token diversity per block" in report
    assert "job0_grad_norms.png" in capsys.readouterr().out


def test_an_unknown_job_is_a_one_line_error(sweep, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(sweep), "--job", "7"])
    assert exit_.value.code == 2
    assert "--job 7: no such job folder; the jobs with folders are 0, 1" in capsys.readouterr().err
