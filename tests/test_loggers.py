"""Loggers: wandb per job (name, group, tags, kept run id), offline fallback; CSV continued on resume."""
import time

import pytest

from tests.helpers import compose_config
from vitstem.loggers import CSVLogger, wandb_logger, wandb_run_id


def test_an_unreachable_wandb_server_falls_back_to_offline_within_seconds(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="wandb: cannot reach http://127.0.0.1:9.*logging offline"):
        logger = wandb_logger(save_dir=str(tmp_path), project="vitstem")
    assert time.perf_counter() - start < 10 and logger._offline


def test_a_job_is_named_after_its_study_and_folder_and_tagged_with_its_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_config(["logger=wandb", "name=xiao_lr_wd", "model=vit_c_32", "optimizer=sgd", "tags=[a]"], tmp_path / "7")
    node = cfg.logger.wandb
    assert node.name == "xiao_lr_wd-7" and node.group == "xiao_lr_wd" and node.job_type == "train"
    logger = wandb_logger(save_dir=str(tmp_path), choices=dict(node.choices), tags=list(node.tags))
    assert logger._wandb_init["tags"] == ["a", "model=vit_c_32", "stem=conv_small", "attention=softmax", "optimizer=sgd"]
    assert logger._wandb_init["id"] == wandb_run_id(str(tmp_path)) == (tmp_path / "wandb_run_id").read_text().strip()
    assert logger._wandb_init["resume"] == "allow"


def test_the_csv_log_keeps_the_rows_before_the_resumed_step(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss\n0,0,2.0\n0,5,1.5\n0,9,1.2\n")
    logger = CSVLogger(save_dir=str(tmp_path), name="", version="")
    logger.resume_before(6)
    logger.log_metrics({"train/loss": 1.4, "epoch": 0}, step=6)
    logger.save()
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "epoch,step,train/loss" and [r.split(",")[1] for r in rows[1:]] == ["0", "5", "6"]
