"""Reading a sweep folder (the fake sweep of conftest.py) and grouping its jobs."""
from __future__ import annotations

import pytest

from tests.analysis.fake_sweep import DIVERGED, ERRORS, FAILED, PENDING, UNSTARTED, lr_of, make_sweep
from vitstem.analysis import groups
from vitstem.analysis.collect import AnalysisError, collect, error_of, find_jobs, plan_jobs, read_curve


def test_every_job_is_a_row_with_the_papers_error(sweep):
    s = collect(sweep)
    rows = {r["job"]: r for r in s["rows"]}
    assert s["name"] == "xiao_lr_wd" and s["found"] == 12 and s["planned"] == 14
    assert list(rows) == [str(k) for k in range(14)]
    for k, err in ERRORS.items():
        assert (rows[str(k)]["state"], rows[str(k)]["error"]) == ("done", err)
    assert rows["1"]["error"] == 20.0 and rows["1"]["best_acc1"] == 78.0   # EMA error, not 100 - 78
    assert (rows[str(DIVERGED)]["state"], rows[str(DIVERGED)]["error"]) == ("diverged", 100.0)
    assert (rows[str(FAILED)]["state"], rows[str(FAILED)]["error"]) == ("failed", None)
    assert rows[str(FAILED)]["message"] == "RuntimeError: boom"
    for k in (PENDING, *UNSTARTED):
        assert (rows[str(k)]["status"], rows[str(k)]["state"], rows[str(k)]["error"]) == ("pending", "pending", None)
    # A pending job's settings come from .hydra/overrides.yaml, an unstarted one's from the plan.
    assert (rows["10"]["model"], rows["10"]["lr"], rows["10"]["sample"]) == ("vit_p_32", lr_of(10), 5)
    assert (rows["12"]["model"], rows["13"]["model"], rows["13"]["sample"]) == ("vit_p_32", "vit_c_32", 6)


def test_without_a_plan_the_jobs_found_are_all_jobs(tmp_path):
    s = collect(make_sweep(tmp_path, plan=False))
    assert (len(s["rows"]), s["found"], s["planned"]) == (12, 12, None)


def test_error_metric():
    assert error_of({"status": "finished", "best_val_err1": 30.0, "best_val_ema_err1": None}) == 30.0
    assert error_of({"status": "finished", "best_val_err1": 30.0, "best_val_ema_err1": 28.5}) == 28.5
    assert error_of({"status": "finished", "best_val_err1": 30.0}) == 30.0
    assert error_of({"status": "diverged", "best_val_err1": 88.0}) == 100.0
    assert error_of({"status": "failed", "best_val_err1": 30.0}) is None
    assert error_of({"status": "interrupted", "best_val_err1": 30.0}) is None


def test_interrupted_is_pending_and_unreadable_results_fail(sweep):
    (sweep / "0" / "results.json").write_text('{"status": "interrupted", "overrides": ["model=vit_p_32"]}')
    (sweep / "2" / "results.json").write_text('{"status": "finis')
    (sweep / "4" / "results.json").write_text('["not", "a", "record"]')
    rows = {r["job"]: r for r in collect(sweep)["rows"]}
    assert (rows["0"]["status"], rows["0"]["state"]) == ("interrupted", "pending")
    assert rows["2"]["state"] == "failed" and rows["2"]["message"].startswith("unreadable results.json")
    assert rows["2"]["model"] == "vit_p_32"                     # overrides from .hydra/overrides.yaml
    assert rows["4"]["state"] == "failed" and "not a vitstem results record" in rows["4"]["message"]


def test_find_jobs_skips_the_analysis_folder_and_sorts_naturally(sweep):
    (sweep / "analysis" / "old").mkdir(parents=True)
    (sweep / "analysis" / "old" / "results.json").write_text("{}")
    names = [p.name for p in find_jobs(sweep)]
    assert names == [str(k) for k in range(12)]


def test_missing_or_empty_folders_raise_one_line_errors(tmp_path):
    with pytest.raises(AnalysisError, match="no such folder"):
        collect(tmp_path / "nope")
    (tmp_path / "empty" / "0").mkdir(parents=True)
    with pytest.raises(AnalysisError, match="no jobs"):
        collect(tmp_path / "empty")


def test_plan_follows_hydras_job_order():
    jobs, sampled = plan_jobs(["model=a,b", "optimizer=adamw,sgd", "optimizer.lr=tag(log, interval(1e-4, 1e-2))",
                               "seed=1"], samples=3)
    assert sampled == ["optimizer.lr"] and len(jobs) == 12
    assert jobs[0] == ["model=a", "optimizer=adamw", "seed=1", "study.sample=0"]
    assert jobs[5] == ["model=a", "optimizer=sgd", "seed=1", "study.sample=1"]     # samples outermost
    assert jobs[6] == ["model=b", "optimizer=adamw", "seed=1", "study.sample=1"]
    jobs, sampled = plan_jobs(["model=a,b", "trainer.max_epochs=range(1,4)"], samples=None)
    assert sampled == [] and len(jobs) == 6 and jobs[-1] == ["model=b", "trainer.max_epochs=3"]
    assert plan_jobs(["optimizer.lr=interval(0.1, 1)"], samples=None) is None   # samples unknown


def test_curve_is_validation_error_per_epoch(sweep):
    assert read_curve(sweep / "0") == [(1, 35.0), (2, 29.0), (3, 25.0)]
    assert read_curve(sweep / "1") == [(1, 30.0), (2, 24.0), (3, 20.0)]    # the EMA's, as the error
    assert read_curve(sweep / "11") == [] and read_curve(None) == []
    with (sweep / "0" / "metrics.csv").open("a") as f:
        f.write("3,3")                                          # a row being written by a running job
    assert read_curve(sweep / "0") == [(1, 35.0), (2, 29.0), (3, 25.0)]


def test_default_groups_are_the_varying_keys_that_were_not_sampled(sweep):
    rows = collect(sweep)["rows"]
    assert groups.varying_keys(rows) == ["model"]
    names = groups.assign(rows, ["model"])
    assert names == ["model=vit_c_32", "model=vit_p_32"]
    assert [r["group"] for r in rows[:2]] == ["model=vit_p_32", "model=vit_c_32"]


def test_grid_keys_group_and_sampled_keys_do_not():
    def job(model, opt, lr, sample):
        return {"overrides": {"model": model, "optimizer": opt, "optimizer.lr": lr, "study.sample": sample,
                              "trainer.max_epochs": "5"}, "sampled": ["optimizer.lr"], "hparams": {}}
    rows = [job(m, o, str(0.001 * (i + 1)), str(i)) for i in range(3) for m in ("vit_p_32", "vit_c_32")
            for o in ("adamw", "sgd")]
    assert groups.varying_keys(rows) == ["model", "optimizer"]
    assert groups.assign(rows, ["model", "optimizer"])[0] == "model=vit_c_32,optimizer=adamw"
    rows[0]["sampled"] = []                                 # a pending job without hparams: still excluded
    assert groups.varying_keys(rows) == ["model", "optimizer"]


def test_by_override_key_or_hparams_name(sweep):
    rows = collect(sweep)["rows"]
    assert groups.assign(rows, ["study.name"]) == ["study.name=xiao_lr_wd"]
    names = groups.assign(rows, ["hparams.stem"])        # pending jobs have no hparams: "-"
    assert names == ["hparams.stem=-", "hparams.stem=conv_small"]
    assert groups.assign(rows, []) == ["all"]
    groups.check_keys(rows, ["model", "hparams.attention.activation"])
    with pytest.raises(AnalysisError, match="--by optimizer: no job has this key"):
        groups.check_keys(rows, ["optimizer"])
