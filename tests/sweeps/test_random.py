"""The random sweeper: Hydra's grammar, pure sampling, sample-major jobs, resumable and failure-proof sweeps."""
import json

import numpy as np

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from tests.helpers import TINY, run_app, run_cli
from vitstem.sweeps.random import SweepError, draw, plan_jobs


def _plan(*overrides, samples=None, seed=0):
    return plan_jobs(OverridesParser.create().parse_overrides(list(overrides)), samples, seed)


def test_a_draw_is_a_pure_function_of_seed_index_and_key():
    assert draw(0, 3, "optimizer.lr") == draw(0, 3, "optimizer.lr")
    values = {draw(0, i, "optimizer.lr") for i in range(100)} | {draw(1, 0, "optimizer.lr"), draw(0, 0, "x")}
    assert len(values) == 102 and all(0 <= v < 1 for v in values)


@pytest.mark.parametrize("n", [8, 16, 64])
def test_draws_are_stratified_one_per_slice(n):
    """The first 2**m samples of a key put one sample in each of 2**m equal slices (a Latin hypercube per key),
    whatever the seed; the first 8 keep their places when the sweep grows to 64."""
    for seed in (0, 1, 7):
        for key in ("study.draw.lr", "study.draw.weight_decay"):
            slices = sorted(int(draw(seed, i, key) * n) for i in range(n))
            assert slices == list(range(n)), (seed, key, slices)
    assert [draw(0, i, "x") for i in range(8)] == [draw(0, i, "x") for i in range(64)][:8]


def test_keys_are_paired_at_random_and_seeds_differ():
    lr = [draw(0, i, "study.draw.lr") for i in range(16)]
    wd = [draw(0, i, "study.draw.weight_decay") for i in range(16)]
    assert lr != wd and abs(float(np.corrcoef(lr, wd)[0, 1])) < 0.6   # independent scrambles per key
    assert [draw(1, i, "study.draw.lr") for i in range(16)] != lr


def test_samples_lie_in_their_intervals_log_uniformly_and_cross_the_grid():
    jobs, sampled = _plan("model=vit_p_32,vit_c_32", "optimizer.lr=tag(log, interval(1e-4, 1e-2))",
                          "optimizer.weight_decay=interval(0.0, 0.5)", "seed=0", samples=200)
    assert sampled == ["optimizer.lr", "optimizer.weight_decay"] and len(jobs) == 400
    lrs = [float(j[2].split("=")[1]) for j in jobs[::2]]
    wds = [float(j[3].split("=")[1]) for j in jobs[::2]]
    assert all(1e-4 <= v < 1e-2 for v in lrs) and all(0 <= v < 0.5 for v in wds)
    below_1e3 = sum(v < 1e-3 for v in lrs) / len(lrs)  # log-uniform: half the mass below the geometric mean
    assert 0.4 < below_1e3 < 0.6 and 0.4 < sum(v < 0.25 for v in wds) / len(wds) < 0.6
    assert jobs[0][0] == "model=vit_p_32" and jobs[1][0] == "model=vit_c_32" and jobs[0][2:] == jobs[1][2:]
    assert jobs[0][-2:] == ["study.sample=0", "study.sampled=[optimizer.lr,optimizer.weight_decay]"]


def test_more_samples_keep_the_first_jobs():
    spec = ("optimizer=adamw,sgd", "optimizer.lr=tag(log, interval(1e-4, 1e-2))")
    sixteen, _ = _plan(*spec, samples=16)
    sixty_four, _ = _plan(*spec, samples=64)
    assert sixty_four[:32] == sixteen and len(sixty_four) == 128
    assert _plan(*spec, samples=16, seed=1)[0] != sixteen


def test_grids_without_intervals_are_the_basic_sweepers():
    jobs, sampled = _plan("a=1,2", "b=range(0,3)", "c=choice(x,y)", "d=5")
    assert sampled == [] and len(jobs) == 12 and jobs[0] == ["a=1", "b=0", "c=x", "d=5"]


@pytest.mark.parametrize("spec,samples,message", [
    (["optimizer.lr=interval(1e-4, 1e-2)"], None, "hydra.sweeper.samples is None"),
    (["optimizer.lr=interval(1e-2, 1e-4)"], 4, "lower bound must be below the upper one"),
    (["optimizer.lr=tag(log, interval(0, 1e-2))"], 4, "a log interval needs a lower bound above 0"),
])
def test_bad_sweep_specs_are_refused_before_any_job(spec, samples, message):
    with pytest.raises(SweepError, match=message):
        _plan(*spec, samples=samples)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One tiny random sweep shared by the tests below: lr {2e-3, 1e30 (diverges), -1 (rejected)} x 2 samples."""
    tmp = tmp_path_factory.mktemp("random_sweep")
    args = ["-m", *TINY, "trainer.limit_train_batches=3", "optimizer.lr=2e-3,1e30,-1",
            "optimizer.weight_decay=tag(log, interval(1e-3, 1e-1))", "hydra.sweeper.samples=2",
            f"hydra.sweep.dir={tmp / 'sweep'}"]
    first = run_app(*args, cwd=tmp)
    return tmp / "sweep", args, first


def _statuses(sweep_dir):
    return {int(p.parent.name): json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")}


@pytest.mark.e2e
def test_a_random_sweep_runs_every_job_and_reports_the_failed_ones(sweep):
    sweep_dir, _, first = sweep
    results = _statuses(sweep_dir)
    assert sorted(results) == list(range(6)), first.stderr[-3000:]
    by_status = {n: r["status"] for n, r in results.items()}
    assert by_status == {0: "finished", 1: "diverged", 2: "failed", 3: "finished", 4: "diverged", 5: "failed"}
    assert "optimizer.lr=-1" in results[2]["error"] and first.returncode != 0
    log = first.stdout + first.stderr
    assert "2 of 6 jobs failed" in first.stderr and log.count("failed: job") == 2 and "Traceback" not in log
    for n, r in results.items():
        h = r["hparams"]
        assert h["sample"] == n // 3 and h["sampled"] == ["optimizer.weight_decay"]
        assert 1e-3 <= h["weight_decay"] < 1e-1
    assert results[0]["hparams"]["weight_decay"] == results[1]["hparams"]["weight_decay"]  # same sample, same wd
    assert results[0]["hparams"]["weight_decay"] != results[3]["hparams"]["weight_decay"]


@pytest.mark.e2e
def test_running_the_sweep_again_skips_done_jobs_and_retries_failed_ones(sweep):
    sweep_dir, args, _ = sweep
    before = {n: r["wall_time_s"] for n, r in _statuses(sweep_dir).items()}
    again = run_app(*args, cwd=sweep_dir.parent)
    log = again.stdout + again.stderr
    assert log.count("not retrained") == 4 and "2 of 6 jobs failed" in log
    after = _statuses(sweep_dir)
    assert all(after[n]["wall_time_s"] == before[n] for n in (0, 1, 3, 4))  # untouched
    same = run_app(*[a for a in args if not a.startswith("trainer.limit_train_batches")],
                   "trainer.limit_train_batches=4", cwd=sweep_dir.parent)
    assert same.returncode != 0 and "holds a sweep with other fixed settings" in same.stderr
    assert "Traceback" not in same.stderr


@pytest.mark.e2e
def test_an_unknown_study_lists_the_studies(tmp_path):
    proc = run_cli("-m", "sweep=nope", cwd=tmp_path)
    assert proc.returncode != 0 and "xiao_lr_wd" in proc.stderr and "Traceback" not in proc.stderr
