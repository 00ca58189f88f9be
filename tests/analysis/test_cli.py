"""``vitstem-analyze`` on the fake sweep: the files it writes, what it prints, its errors, wandb offline."""
from __future__ import annotations

import base64
import csv
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO
from vitstem.analysis.cli import main

FIGURES = ("edf_raw.png", "edf.png", "error_vs_lr.png", "error_vs_wd.png", "curves.png")
PNG = b"\x89PNG\r\n\x1a\n"


def read_csv(path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_writes_tables_figures_and_report(sweep, capsys):
    main([str(sweep)])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "xiao_lr_wd: 10 of 14 done"
    assert out[1] == "claims: none (the study config has no study.claims)"   # the claims lead: tests/analysis/test_claims.py
    assert out[2] == "12 job folders, 14 planned; 1 diverged, 1 failed, 3 pending; grouped by model"
    assert out[4].split() == ["model=vit_c_32", "7", "5", "0", "0", "1", "1", "20", "21.5", "40%", "60%", "80%"]
    assert out[5].split() == ["model=vit_p_32", "7", "5", "0", "1", "0", "2", "25", "26.5", "40%", "60%", "60%"]
    analysis = sweep / "analysis"
    runs = read_csv(analysis / "runs.csv")
    assert [r["job"] for r in runs] == [str(k) for k in range(14)]
    assert [r["status"] for r in runs[8:]] == ["diverged", "finished", "pending", "failed", "pending", "pending"]
    assert (runs[8]["error"], runs[11]["error"], runs[11]["message"]) == ("100.0", "", "RuntimeError: boom")
    assert runs[1]["stem"] == "conv_small" and runs[1]["group"] == "model=vit_c_32"
    summary = {r["group"]: r for r in read_csv(analysis / "summary.csv")}
    c, p = summary["model=vit_c_32"], summary["model=vit_p_32"]
    assert [float(c[k]) for k in ("best", "median", "within_1", "within_2", "within_4")] == [20, 21.5, 0.4, 0.6, 0.8]
    assert [float(p[k]) for k in ("best", "median", "within_1", "within_2", "within_4")] == [25, 26.5, 0.4, 0.6, 0.6]
    assert [int(p[k]) for k in ("jobs", "done", "diverged", "failed", "pending")] == [7, 5, 1, 0, 2]
    page = (analysis / "report.html").read_text()
    for name in FIGURES:
        data = (analysis / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
        assert f"data:image/png;base64,{base64.b64encode(data).decode()}" in page
    assert "xiao_lr_wd: 10 of 14 done" in page and "RuntimeError: boom" in page and page.count("<table>") == 2


def test_figures_are_the_same_on_a_second_run(sweep):
    main([str(sweep)])
    first = (sweep / "analysis" / "edf.png").read_bytes()
    main([str(sweep)])
    assert (sweep / "analysis" / "edf.png").read_bytes() == first   # a seeded bootstrap


def test_by_sets_the_groups(sweep, capsys):
    main([str(sweep), "--by", "study.name", "--by", "hparams.ema"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].endswith("grouped by study.name, hparams.ema")
    groups = [r["group"] for r in read_csv(sweep / "analysis" / "summary.csv")]
    assert groups == ["study.name=xiao_lr_wd,hparams.ema=-", "study.name=xiao_lr_wd,hparams.ema=none",
                      "study.name=xiao_lr_wd,hparams.ema=pycls"]


def test_a_sweep_in_progress_without_a_plan(tmp_path, capsys):
    from tests.analysis.fake_sweep import make_sweep

    main([str(make_sweep(tmp_path, plan=False))])
    assert capsys.readouterr().out.splitlines()[0] == "xiao_lr_wd: 10 of 12 done"


@pytest.mark.e2e
def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    for argv in ([str(tmp_path / "missing")], [str(tmp_path)]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("vitstem-analyze: error: ")
    # The same through the interpreter, as a user runs it.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "vitstem.analysis.cli", str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (f"vitstem-analyze: error: {tmp_path}: no jobs (no folder below it holds "
                                            "results.json or .hydra/overrides.yaml)")


def test_unknown_by_key_is_an_error(sweep, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(sweep), "--by", "optimizer"])
    assert e.value.code == 2 and "--by optimizer: no job has this key" in capsys.readouterr().err


def test_wandb_offline_writes_a_run_folder(sweep, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    main([str(sweep), "--wandb", "--project", "vitstem-test"])
    runs = list((sweep / "analysis" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    media = runs[0] / "files" / "media"
    assert sorted(p.name.split("_0_")[0] for p in (media / "table").iterdir()) == ["runs", "summary"]
    assert sorted(p.name.split("_0_")[0] for p in (media / "images").iterdir()) == sorted(f[:-4] for f in FIGURES)
    table = json.loads(next((media / "table").glob("summary_*")).read_text())
    assert table["data"][0][:3] == ["model=vit_c_32", 7, 5]
    assert f"wandb run: {runs[0]}" in capsys.readouterr().out
