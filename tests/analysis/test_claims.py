"""Claims checked on fake sweeps with a known effect: verdicts, pairing, differences, margins, the failed-to-train
rule, the metric choice, the report on any sweep (all diverged, all failed, one job, running, corrupt)."""
from __future__ import annotations

import csv

import pytest

from tests.analysis.study_sweep import claim, make_study
from vitstem.analysis.claims import ClaimError, check, load_claims
from vitstem.analysis.cli import analyze, main
from vitstem.analysis.collect import collect
from vitstem.analysis.replication import write_replication

P, C = {"model": "vit_p_32"}, {"model": "vit_c_32"}
SEEDS = range(8)


def pairs(a_errors, b_errors, a=C, b=P):
    return [(a, s, e) for s, e in enumerate(a_errors)] + [(b, s, e) for s, e in enumerate(b_errors)]


def checked(tmp_path, jobs, spec, **kw) -> dict:
    sweep = make_study(tmp_path, jobs, [spec], **kw)
    result = analyze(sweep)
    return result["claims"][0]


def test_a_consistent_effect_is_supported_with_its_interval_and_tests(tmp_path):
    b = [40.0 + 3 * s for s in SEEDS]                  # seeds differ a lot; C is 5 +- 1 points better in every pair
    a = [e - 5 + (1 if s % 2 else -1) for s, e in enumerate(b)]
    c = checked(tmp_path, pairs(a, b), claim(C, P))
    assert c["verdict"] == "supported" and c["n"] == 8 and (c["wins"], c["losses"], c["ties"]) == (8, 0, 0)
    assert c["effect"] == pytest.approx(-5.0) and -6.0 <= c["ci_low"] <= c["ci_high"] <= -4.0
    assert c["sign_p"] == pytest.approx(2 / 2**8) and c["wilcoxon_p"] < 0.01


def test_the_opposite_effect_is_contradicted(tmp_path):
    b = [40.0 + 3 * s for s in SEEDS]
    c = checked(tmp_path, pairs([e + 4 for e in b], b), claim(C, P))
    assert c["verdict"] == "contradicted" and c["wins"] == 0 and c["effect"] == pytest.approx(4.0)


def test_no_effect_is_inconclusive_and_says_what_would_settle_it(tmp_path, capsys):
    b = [40.0 + 3 * s for s in SEEDS]
    a = [e + (1.0 if s % 2 else -1.0) for s, e in enumerate(b)]
    sweep = make_study(tmp_path, pairs(a, b), [claim(C, P)])
    main([str(sweep)])
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("claims (effect: median paired difference")
    assert out[2].split()[:2] == ["INCONCLUSIVE", "c:"] and "wins 4/8" in out[2] and "would settle it" in out[4]
    rows = list(csv.DictReader((sweep / "analysis" / "claims.csv").open()))
    assert rows[0]["verdict"] == "inconclusive" and float(rows[0]["ci_low"]) < 0 < float(rows[0]["ci_high"])
    page = (sweep / "analysis" / "report.html").read_text()
    assert page.index("<h2>Claims</h2>") < page.index("<h2>Summary</h2>") and "inconclusive" in page


def test_pairing_sees_an_effect_that_seed_spread_hides_unpaired(tmp_path):
    b = [20.0 + 6 * s for s in SEEDS]                  # seed spread 42 points, effect 1 point
    jobs = pairs([e - 1 for e in b], b)
    assert checked(tmp_path / "paired", jobs, claim(C, P))["verdict"] == "supported"
    unpaired = checked(tmp_path / "unpaired", jobs, claim(C, P, pair_by=()))
    assert unpaired["verdict"] == "inconclusive" and unpaired["paired"] is False and unpaired["sign_p"] is None


def test_only_matched_jobs_are_paired(tmp_path):
    b = [40.0 + s for s in SEEDS]
    jobs = pairs([e - 3 for e in b][:5], b)           # side a has seeds 0-4 only
    c = checked(tmp_path, jobs, claim(C, P))
    assert c["n"] == 5 and "5 matched on seed (5 on side a, 8 on side b)" in c["note"]


def test_few_pairs_are_inconclusive(tmp_path):
    c = checked(tmp_path, pairs([30.0, 31.0], [40.0, 41.0]), claim(C, P))
    assert c["n"] == 2 and c["verdict"] == "inconclusive" and "fewer than 3" in c["note"]


def test_a_difference_of_differences(tmp_path):
    """ViT_P's SGD - AdamW gap (8 points) is larger than ViT_C's (1 point), per seed."""
    jobs = []
    for s in SEEDS:
        jobs += [({**P, "optimizer": "adamw"}, s, 30.0 + s), ({**P, "optimizer": "sgd"}, s, 38.0 + s),
                 ({**C, "optimizer": "adamw"}, s, 28.0 + s), ({**C, "optimizer": "sgd"}, s, 29.0 + s)]
    gap = claim([{**P, "optimizer": "sgd"}, {**P, "optimizer": "adamw"}],
                [{**C, "optimizer": "sgd"}, {**C, "optimizer": "adamw"}], direction="higher", magnitude=4.6)
    c = checked(tmp_path, jobs, gap)
    assert c["verdict"] == "supported" and c["effect"] == pytest.approx(7.0) and c["wins"] == 8


def test_within_a_margin(tmp_path):
    b = [40.0 + s for s in SEEDS]
    near = checked(tmp_path / "near", pairs([e + 0.3 for e in b], b), claim(C, P, direction="within", magnitude=1.0))
    far = checked(tmp_path / "far", pairs([e + 5 for e in b], b), claim(C, P, direction="within", magnitude=1.0))
    assert near["verdict"] == "supported" and far["verdict"] == "contradicted"


def test_share_within_k_of_the_best_resamples_matched_draws(tmp_path):
    """ViT_C: every draw within 4 points of its best; ViT_P: its draws 10 points apart, so one within 4 points."""
    a = [20.0 + 0.5 * s for s in SEEDS]
    b = [20.0 + 10 * s for s in SEEDS]
    spec = claim(C, P, direction="higher", metric="share_within", within=4)
    c = checked(tmp_path, pairs(a, b), spec)
    assert c["effect"] == pytest.approx(100 - 12.5) and c["verdict"] == "supported"
    assert (c["a_median"], c["b_median"]) == (100.0, 12.5)


def test_a_diverged_job_counts_at_100_and_a_crashed_one_not_at_all(tmp_path):
    b = [40.0 + s for s in SEEDS]
    a = [30.0] * 6 + ["diverged", "failed"]
    c = checked(tmp_path, pairs(a, b), claim(C, P))
    assert c["n"] == 7 and c["losses"] == 1 and c["verdict"] == "supported"


def test_failed_to_train_is_apart_from_diverged(tmp_path, capsys):
    jobs = [(P, 0, 40.0), (P, 1, 84.0), (P, 2, 85.0), (P, 3, 93.0), (P, 4, "diverged")]
    sweep = make_study(tmp_path, jobs)
    states = [r["state"] for r in collect(sweep)["rows"]]
    assert states == ["done", "done", "untrained", "untrained", "diverged"]   # chance 90, within 5 points: untrained
    main([str(sweep)])
    out = capsys.readouterr().out
    assert "2 failed to train (within a few points of chance), 1 diverged" in out
    summary = list(csv.DictReader((sweep / "analysis" / "summary.csv").open()))   # seeds are repeats: one group
    assert len(summary) == 1 and [int(summary[0][k]) for k in ("done", "untrained", "diverged")] == [5, 2, 1]


def test_metric_raw_or_ema(tmp_path):
    sweep = make_study(tmp_path, [(P, 0, 40.0), (P, 1, 42.0)], ema={0: 35.0})
    assert [r["error"] for r in collect(sweep)["rows"]] == [35.0, 42.0]                   # auto: the EMA's if any
    assert [r["error"] for r in collect(sweep, "raw")["rows"]] == [40.0, 42.0]
    ema = collect(sweep, "ema")["rows"]
    assert [r["error"] for r in ema] == [35.0, None] and ema[1]["state"] == "failed"


@pytest.mark.parametrize("kind", ["all_diverged", "all_failed", "one_job", "running", "corrupt"])
def test_any_sweep_gives_a_report(tmp_path, capsys, kind):
    jobs = {"all_diverged": [(P, s, "diverged") for s in range(3)] + [(C, s, "diverged") for s in range(3)],
            "all_failed": [(P, s, "failed") for s in range(3)],
            "one_job": [(P, 0, 41.0)],
            "running": [(P, 0, 41.0), (P, 1, "running")],
            "corrupt": [(P, 0, 41.0), (P, 1, "corrupt"), (C, 0, 30.0)]}[kind]
    sweep = make_study(tmp_path, jobs, [claim(C, P)])
    main([str(sweep)])
    out = capsys.readouterr().out
    assert (sweep / "analysis" / "report.html").is_file() and (sweep / "analysis" / "edf_raw.png").is_file()
    rows = list(csv.DictReader((sweep / "analysis" / "claims.csv").open()))
    assert rows[0]["verdict"] == "inconclusive"
    if kind == "all_diverged":
        assert "6 of 6 done" in out and "6 diverged" in out
    if kind == "running":
        assert "1 of 2 done" in out and "1 pending" in out
    if kind == "corrupt":
        assert "skipped 1 unreadable results.json (counted as failed): job 1" in out and "1 failed" in out


def test_claims_from_a_composed_study_config():
    """Every study's claims read (interpolations resolved) and name a direction, a metric, two sides."""
    from vitstem.config import compose

    for form in ("xiao_lr_wd/tiny", "xiao_optimizer/tiny", "xiao_stems/tiny", "wang_warmup/tiny", "wang_stems/tiny",
                 "wortsman_alpha/tiny", "wortsman_qkln_gate/tiny", "xiao_lr_wd/gpu", "wortsman_alpha/gpu"):
        claims = load_claims(compose([f"sweep={form}"]))
        assert claims and all(c["a"] != c["b"] for c in claims), form
    xiao = load_claims(compose(["sweep=xiao_lr_wd/tiny"]))
    assert xiao[0]["a"] == {"model": "vit_c_32", "optimizer": "sgd"}
    assert load_claims(compose(["sweep=xiao_lr_wd"]))[0]["a"]["model"] == "vit_c_4gf"


def test_a_bad_claim_is_one_line():
    with pytest.raises(ClaimError, match=r"study.claims\[0\] \(x\): direction='up'; choose one of lower"):
        load_claims({"study": {"claims": [{"id": "x", "claim": "-", "a": {}, "b": {}, "direction": "up"}]}})
    with pytest.raises(ClaimError, match="needs magnitude"):
        check_spec = {"id": "y", "claim": "-", "a": {}, "b": {}, "direction": "within"}
        load_claims({"study": {"claims": [check_spec]}})
    assert check(claim(C, P), [])["verdict"] == "inconclusive"


def test_replication_table_lists_each_claim_with_the_papers_number_and_ours(tmp_path):
    b = [40.0 + 3 * s for s in SEEDS]
    sweep = make_study(tmp_path / "multirun", pairs([e - 5 for e in b], b),
                       [claim(C, P, id="c_beats_p", paper="3.7 points (Table 3)")], name="demo_tiny")
    result = analyze(sweep)
    results = tmp_path / "results" / "demo_tiny"
    results.mkdir(parents=True)
    for f in ("claims.csv", "summary.csv", "runs.csv", "edf.png"):
        (results / f).write_bytes((result["out"] / f).read_bytes())
    text = write_replication(tmp_path / "results", ["demo_tiny", "other_tiny"]).read_text()
    assert "| `c_beats_p`: a beats b | test | 3.7 points (Table 3) | -5.0 [" in text
    assert "8/8 pairs in the claimed direction" in text and "**supported**" in text
    assert "## other_tiny\n\nNot analysed yet" in text and "16 of 16 jobs measured (complete); wall time 0 min" in text


def test_settle_never_asks_for_fewer_jobs_than_there_are():
    from vitstem.analysis.claims import settle

    lopsided = {"verdict": "inconclusive", "n": 3, "effect": -1.7, "ci_low": -2.8, "ci_high": 0.1}
    assert settle(lopsided).startswith("more matched jobs than 3 (the pairs disagree in direction")
    wide = {"verdict": "inconclusive", "n": 6, "effect": -2.3, "ci_low": -10.6, "ci_high": 2.8}
    assert settle(wide) == "an interval narrower than the effect: ~51 matched jobs (now 6), or a longer run"
