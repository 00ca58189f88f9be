"""EDF, bootstrap band and summary numbers against direct computations."""
from __future__ import annotations

import numpy as np
import pytest

from vitstem.analysis.edf import edf, edf_at, edf_band, group_stats, summarize


def test_edf_of_a_small_example():
    deltas, fractions = edf([13, 10, 100, 11])
    np.testing.assert_allclose(deltas, [0, 1, 3, 90])
    np.testing.assert_allclose(fractions, [0.25, 0.5, 0.75, 1.0])
    deltas, _ = edf([13, 10, 100, 11], best=9.0)            # relative to a best from elsewhere
    np.testing.assert_allclose(deltas, [1, 2, 4, 91])
    assert edf([])[0].size == 0


def test_edf_at_counts_jobs_within_each_point():
    np.testing.assert_allclose(edf_at([0, 1, 3, 90], [0, 0.5, 1, 2.9, 3, 50, 90]),
                               [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0])
    assert edf_at(np.array([11.3, 10.3]) - 10.3, [1.0])[0] == 1.0   # float noise: 11.3 - 10.3 > 1.0 by 1e-15


def test_bootstrap_band_contains_the_edf_and_is_reproducible():
    errors = np.array([20.0, 20.5, 21.5, 23.0, 30.0, 22.2, 24.9, 100.0])
    deltas, _ = edf(errors)
    at = np.linspace(0, 12, 49)
    lo, hi = edf_band(deltas, at)
    f = edf_at(deltas, at)
    assert np.all(lo <= f + 1e-12) and np.all(f <= hi + 1e-12)
    assert np.all(hi - lo > 0.1)                       # 8 jobs, F between 1/8 and 7/8 here: a wide band
    lo2, hi2 = edf_band(deltas, at)
    np.testing.assert_array_equal(lo, lo2)
    np.testing.assert_array_equal(hi, hi2)
    # Below the best nothing, past the worst everything: no uncertainty there.
    lo, hi = edf_band(deltas, [-1.0, 200.0])
    np.testing.assert_array_equal(lo, [0, 1])
    np.testing.assert_array_equal(hi, [0, 1])


def test_bootstrap_band_percentiles_match_a_loop_over_resamples():
    deltas = np.array([0.0, 1.0, 3.0, 90.0])
    at = np.array([0.5, 2.0, 10.0])
    rng = np.random.default_rng(7)
    counts = rng.multinomial(4, [0.25] * 4, size=200)
    direct = [[sum(c[j] for j in range(4) if deltas[j] <= x) / 4 for x in at] for c in counts]
    lo, hi = edf_band(deltas, at, n_boot=200, seed=7, q=(10, 90))
    np.testing.assert_allclose(lo, np.percentile(direct, 10, axis=0))
    np.testing.assert_allclose(hi, np.percentile(direct, 90, axis=0))


def test_group_stats_by_hand():
    s = group_stats([20.0, 20.5, 21.5, 23.0, 30.0])
    assert s == {"best": 20.0, "median": 21.5, "within_1": 0.4, "within_2": 0.6, "within_4": 0.8}
    s = group_stats([25.0, 25.5, 26.5, 29.5, 100.0, 26.0])
    assert s["median"] == pytest.approx(26.25)          # even count: mean of the middle two
    assert s["within_1"] == pytest.approx(3 / 6) and s["within_4"] == pytest.approx(4 / 6)
    assert group_stats([])["best"] is None


def test_summarize_counts_states_and_uses_done_and_diverged_errors():
    rows = [{"group": "a", "state": s, "error": e} for s, e in
            [("done", 10.0), ("done", 11.0), ("diverged", 100.0), ("failed", None), ("pending", None)]]
    rows += [{"group": "b", "state": "pending", "error": None}]
    a, b = summarize(rows, ["a", "b"])
    assert (a["jobs"], a["done"], a["diverged"], a["failed"], a["pending"]) == (5, 3, 1, 1, 1)
    assert (a["best"], a["median"]) == (10.0, 11.0)                        # done: 10, 11 and 100 (diverged)
    assert a["within_1"] == pytest.approx(2 / 3) and a["within_4"] == pytest.approx(2 / 3)
    assert (b["jobs"], b["done"], b["pending"], b["best"], b["median"]) == (1, 0, 1, None, None)


def test_matched_jobs_are_resampled_together():
    """Groups over the same draws share one resample per bootstrap round; groups over other draws do not."""
    from vitstem.analysis.plots import matched_units

    def rows(samples):
        return [{"overrides": {"study.sample": str(s)}, "hparams": {}, "error": 10.0 + s} for s in samples]

    a, b = rows([2, 0, 1]), rows([1, 2, 0])
    unit_of, counts = matched_units({"a": a, "b": b})
    assert counts.shape[1] == 3 and counts.sum(axis=1).tolist() == [3] * counts.shape[0]
    assert [unit_of[id(r)] for r in a] == [2, 0, 1] and [unit_of[id(r)] for r in b] == [1, 2, 0]
    assert matched_units({"a": a, "b": rows([0, 1, 3])}) == ({}, None)
