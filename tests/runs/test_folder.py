"""A run folder has one identity: settings compared before anything else, the keys that define no run, bad records."""
import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf, open_dict

from tests.helpers import TINY, compose_config, run_app, run_forked, train
from vitstem.config import ConfigError
from vitstem.paths import CONF_DIR
from vitstem.resolvers import dirname
from vitstem.runs import folder
from vitstem.runs.identity import NOT_DEFINING, defines_run, differences
from vitstem.runs.results import ResultsError, read_results, write_results


def _finished_folder(run_dir, overrides=TINY, status="finished"):
    """A folder as a finished run of ``overrides`` leaves it (config.yaml resolved, results.json), without training."""
    cfg = compose_config(overrides, run_dir)
    task = cfg.copy()
    with open_dict(task):
        del task["hydra"]
    task = OmegaConf.to_container(task, resolve=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(task))
    write_results(run_dir, {"status": status, "best_val_acc1": 12.5})
    return cfg


def test_keys_that_define_no_run():
    assert not defines_run("trainer.enable_progress_bar") and not defines_run("+logger.wandb.project")
    assert not defines_run("retrain") and not defines_run("callbacks.checkpoint.every_n_steps")
    assert defines_run("optimizer.lr") and defines_run("trainer.max_epochs") and defines_run("retrain_x")
    assert defines_run("callbacks.precise_bn.num_images")  # it changes the evaluated weights
    old = {"optimizer": {"lr": 0.002}, "retrain": False, "trainer": {"enable_progress_bar": True, "max_epochs": 1}}
    new = {"optimizer": {"lr": 0.5}, "retrain": True, "trainer": {"enable_progress_bar": False, "max_epochs": 1}}
    assert differences(old, new) == ["optimizer.lr: 0.002 -> 0.5"]


def test_a_folder_name_leaves_out_the_keys_that_define_no_run():
    assert dirname(["optimizer.lr=0.5", "retrain=true", "trainer.enable_progress_bar=false", "logger=wandb",
                    "+callbacks.kill={a: 1}", "name=x", "model/attention=relu"]) == "model.attention=relu,optimizer.lr=0.5"
    assert dirname(["retrain=true"]) == "base"
    cfg = compose_config(["optimizer.lr=0.5", "trainer.enable_progress_bar=false", "logger=wandb"])
    assert cfg.hydra.run.dir == "runs/default/optimizer.lr=0.5"
    assert "exclude_keys" not in (CONF_DIR / "train.yaml").read_text()  # one list: vitstem.runs.identity


def test_a_sweeps_fixed_settings_leave_out_the_keys_that_define_no_run():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vitstem.sweeps.random import fixed_settings

    parsed = OverridesParser.create().parse_overrides(
        ["optimizer.lr=1e-3,1e-4", "seed=1", "retrain=true", "trainer.enable_progress_bar=false", "name=x"])
    assert fixed_settings(parsed) == ["seed=1"]
    assert set(NOT_DEFINING) >= {"retrain", "trainer.enable_progress_bar", "name"}


def test_settings_are_compared_before_the_finished_run_skip(tmp_path):
    _finished_folder(tmp_path)
    with pytest.raises(ConfigError, match=r"holds a run with other settings \(optimizer.lr: 0.002 -> 0.5\)"):
        folder.plan(compose_config(TINY + ["optimizer.lr=0.5"], tmp_path), tmp_path)
    same = folder.plan(compose_config(TINY + ["trainer.enable_progress_bar=true", "name=other", "logger=wandb"],
                                      tmp_path), tmp_path)
    assert same.action == "skip" and same.previous["best_val_acc1"] == 12.5
    fresh = folder.plan(compose_config(TINY + ["optimizer.lr=0.5"], tmp_path), tmp_path, retrain=True)
    assert fresh.action == "train" and fresh.run_dir.name == tmp_path.name + "-retrain1"


def test_a_corrupt_results_json_is_named_and_does_not_block_retrain(tmp_path):
    _finished_folder(tmp_path)
    (tmp_path / "results.json").write_text('{"status": "finished", "best_val')  # cut short
    cfg = compose_config(TINY, tmp_path)
    with pytest.raises(ResultsError, match=rf"{tmp_path / 'results.json'} cannot be read \(JSONDecodeError"):
        folder.plan(cfg, tmp_path)
    assert folder.plan(cfg, tmp_path, retrain=True).run_dir.name.endswith("-retrain1")
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(ResultsError, match="is not a vitstem results record"):
        read_results(tmp_path)
    assert read_results(tmp_path / "nothing") is None


def test_results_json_on_a_full_disk_is_one_line_naming_the_file(tmp_path):
    """``ulimit -f``: the write fails with EFBIG; the error names the file and the previous record is kept."""
    write_results(tmp_path, {"status": "interrupted"})
    code = ("import resource, sys; from pathlib import Path; from vitstem.runs.results import write_results, ResultsError\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.RLIM_INFINITY))\n"
            "try:\n    write_results(Path(sys.argv[1]), {'status': 'finished', 'pad': 'x' * 1000})\n"
            "except ResultsError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert f"cannot write {tmp_path / 'results.json'}: File too large" in out.stdout, out.stderr
    assert json.loads((tmp_path / "results.json").read_text()) == {"status": "interrupted"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary file left


def test_resuming_a_checkpoint_of_another_model_fails_before_compute(tmp_path):
    train(TINY, tmp_path / "a")
    other = tmp_path / "b"
    with pytest.raises(ConfigError, match=r"ckpt_path=.* holds a checkpoint of another model \(0 tensors missing, "
                                          r"0 unexpected, \d+ of other shapes, e.g. model\..*\[32.*\] vs \[.*64"):
        train([o for o in TINY if not o.startswith("model.embed_dim")] + ["model.embed_dim=64",
              f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}"], other)
    results = json.loads((other / "results.json").read_text())
    assert results["status"] == "failed" and results["steps"] == 0
    assert results["best_val_acc1"] is None  # never the other run's


@pytest.mark.e2e
def test_the_cli_refuses_other_settings_and_rewrites_nothing(tmp_path):
    run_dir = tmp_path / "R"
    assert run_app(*TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path).returncode == 0
    kept = {p: p.read_bytes() for p in [run_dir / "results.json", *sorted((run_dir / ".hydra").iterdir())]}
    refused = run_app(*TINY, "optimizer.lr=0.5", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        f"vitstem-train: run folder {run_dir} holds a run with other settings (optimizer.lr: 0.002 -> 0.5); pick "
        "another folder (name=... or hydra.run.dir=...) or train afresh beside it with retrain=true")
    assert {p: p.read_bytes() for p in kept} == kept
    display = run_app(*TINY, "trainer.enable_progress_bar=true", "name=shown", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert display.returncode == 0 and "not retrained" in display.stderr + display.stdout
    assert (run_dir / "results.json").read_bytes() == kept[run_dir / "results.json"]
    (run_dir / "results.json").write_text("{")
    corrupt = run_app(*TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert corrupt.returncode == 1 and corrupt.stderr.strip().splitlines()[-1].startswith(
        f"vitstem-train: {run_dir / 'results.json'} cannot be read (JSONDecodeError")
    again = run_app(*TINY, "retrain=true", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "R-retrain1" / "results.json").read_text())["status"] == "finished"


@pytest.mark.e2e
def test_a_sweep_rerun_with_another_grid_is_refused_before_anything_is_written(tmp_path):
    sweep = [*TINY, f"hydra.sweep.dir={tmp_path / 'S'}"]
    first = run_app("-m", *sweep, "optimizer.lr=1e-3,1e-4", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    kept = {p: p.read_bytes() for p in sorted((tmp_path / "S").rglob("*")) if p.is_file() and ".lock" not in p.name}
    changed = run_app("-m", *sweep, "optimizer.lr=5e-3,1e-4", cwd=tmp_path)
    assert changed.returncode == 1
    assert changed.stderr.strip().splitlines()[-1] == (
        f"vitstem-train: sweep error: job 0: run folder {tmp_path / 'S' / '0'} holds a run with other settings "
        "(optimizer.lr: 0.001 -> 0.005); pick another folder (name=... or hydra.run.dir=...) or train afresh beside "
        "it with retrain=true")
    assert {p: p.read_bytes() for p in kept} == kept  # multirun.yaml, .hydra/overrides.yaml, results.json: untouched
    shown = run_app("-m", *sweep, "optimizer.lr=1e-3,1e-4", "trainer.enable_progress_bar=true", cwd=tmp_path)
    assert shown.returncode == 0 and (shown.stdout + shown.stderr).count("not retrained") == 2, shown.stderr[-2000:]
    retrained = run_app("-m", *sweep, "optimizer.lr=1e-3,1e-4", "retrain=true", cwd=tmp_path)
    assert retrained.returncode == 0, retrained.stderr[-2000:]
    for job in ("0", "1"):
        assert json.loads((tmp_path / "S" / f"{job}-retrain1" / "results.json").read_text())["status"] == "finished"
        assert (tmp_path / "S" / job / "results.json").read_bytes() == kept[tmp_path / "S" / job / "results.json"]


@pytest.mark.e2e
def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    """``ulimit -f 100`` (100 KiB): the first checkpoint (~200 KB) cannot be written."""
    proc = run_forked(*TINY, f"hydra.run.dir={tmp_path}", cwd=tmp_path, fsize=100 * 1024)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"vitstem-train: cannot write {tmp_path / 'checkpoints'}/") and "File too large" in last
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and results["error"] == last.removeprefix("vitstem-train: ")
