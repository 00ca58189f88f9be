"""vitstem-replicate: the command per study, its errors, and the analysis of a finished tiny form into
sweeps/results/<name>/ and REPLICATION.md (a fake sweep with a known effect: no training)."""
from __future__ import annotations

import pytest

from tests.analysis.study_sweep import make_study
from vitstem.sweeps import replicate


def test_each_study_runs_its_tiny_form_and_another_seed_gets_its_own_folder():
    assert replicate.train_command("xiao_stems", 0)[-2:] == ["-m", "sweep=xiao_stems/tiny"]
    assert replicate.train_command("xiao_stems", 2)[-3:] == ["hydra.sweeper.seed=2", "name=xiao_stems_tiny_seed2",
                                                             "study.name=xiao_stems_tiny_seed2"]
    assert replicate.STUDIES[0] == "wortsman_alpha" and len(set(replicate.STUDIES)) == 7


def test_an_unknown_study_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        replicate.main(["xiao_stem"])
    assert "unknown study xiao_stem; the studies: wortsman_alpha xiao_lr_wd" in str(e.value)


def test_analyze_only_checks_the_studys_claims_and_writes_the_table(tmp_path, monkeypatch):
    """A finished xiao_lr_wd_tiny in which ViT_C beats ViT_P with SGD on 8 of 8 draws and ties with AdamW."""
    jobs = []
    for i in range(8):
        for model, sgd, adamw in (("vit_p_32", 40.0 + 2 * i, 30.0 + i), ("vit_c_32", 30.0 + 2 * i, 30.0 + i)):
            jobs += [({"model": model, "optimizer": "sgd", "study.sample": i}, 0, sgd),
                     ({"model": model, "optimizer": "adamw", "study.sample": i}, 0, adamw)]
    make_study(tmp_path / "multirun", jobs, name="xiao_lr_wd_tiny")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    replicate.main(["xiao_lr_wd", "--analyze-only", "--multirun", str(tmp_path / "multirun"),
                    "--results", str(tmp_path / "results")])
    folder = tmp_path / "results" / "xiao_lr_wd_tiny"
    assert {"claims.csv", "summary.csv", "runs.csv", "report.html", "edf.png", "edf_raw.png"} <= {
        p.name for p in folder.iterdir()}
    text = (tmp_path / "results" / "REPLICATION.md").read_text()
    assert "`sgd_c_beats_p`" in text and "-10.0 [-10.0, -10.0], n=8, 8/8 pairs" in text
    assert "`adamw_c_beats_p`" in text and "**inconclusive**" in text
    assert "## wang_stems_tiny\n\nNot analysed yet" in text


def test_another_seeds_table_lists_only_the_studies_run_at_it(tmp_path):
    (tmp_path / "multirun").mkdir()
    replicate.main(["--analyze-only", "--seed", "1", "xiao_lr_wd", "--multirun", str(tmp_path / "multirun"),
                    "--results", str(tmp_path / "results")])
    table = (tmp_path / "results" / "REPLICATION_seed1.md").read_text()
    assert "## xiao_lr_wd_tiny_seed1" in table and "wang_stems" not in table
    replicate.main(["--analyze-only", "xiao_lr_wd", "--multirun", str(tmp_path / "multirun"),
                    "--results", str(tmp_path / "results")])
    assert all(f"## {s}_tiny" in (tmp_path / "results" / "REPLICATION.md").read_text() for s in replicate.STUDIES)
