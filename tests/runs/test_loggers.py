"""Loggers: wandb per job (name, group, tags, kept run id), offline fallback that is applied and bounded in time,
wandb trouble never stopping a run; CSV continued on resume."""
import json
import socket
import time

import pytest
from lightning.pytorch.loggers import WandbLogger

from tests.helpers import TINY, compose_config, train
from vitstem.runs.loggers import CSVLogger, finish_wandb, wandb_logger, wandb_run_id


@pytest.fixture
def hung_server(monkeypatch):
    """WANDB_BASE_URL at a local socket that accepts connections (the kernel completes them from the listen
    backlog) and never answers: a hung server or a black-holing proxy. An API key is set, WANDB_MODE is not."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{sock.getsockname()[1]}")
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_an_unreachable_wandb_server_falls_back_to_offline_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there: refused
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="wandb: cannot reach http://127.0.0.1:9.*logging offline"):
        logger = wandb_logger(save_dir=str(tmp_path), project="vitstem")
    assert time.perf_counter() - start < 2 and logger.mode == "offline" == logger._wandb_init["mode"]


def test_a_server_that_never_answers_is_given_up_after_the_probe_timeout(tmp_path, hung_server):
    start = time.perf_counter()
    with pytest.warns(UserWarning, match=f"wandb: no answer from {hung_server} within 1 s; logging offline"):
        logger = wandb_logger(save_dir=str(tmp_path), project="vitstem", probe_timeout=1.0)
    assert 1.0 <= time.perf_counter() - start < 2.0
    assert logger.mode == "offline" and logger._wandb_init["settings"]["init_timeout"] == 30.0


def test_offline_is_applied_to_the_run_even_after_a_wandb_session_started(tmp_path, hung_server):
    # the fault of issue 17: WANDB_MODE set after wandb's session started is ignored (wandb says so) and the run went
    # online, stalled and died with CommError; the mode now goes to wandb.init itself
    import wandb

    wandb.setup()  # what wandb.login did before
    with pytest.warns(UserWarning, match="no answer"):
        logger = wandb_logger(save_dir=str(tmp_path), project="vitstem", probe_timeout=0.5)
    start = time.perf_counter()
    try:
        run = logger.experiment
        assert run.settings.mode == "offline" and run.id == wandb_run_id(str(tmp_path))
        logger.log_metrics({"train/loss": 1.5}, step=3)
    finally:
        finish_wandb(failed=False)
    assert time.perf_counter() - start < 60  # an offline start (wandb's service process), no network wait
    assert [p.name.startswith("offline-run-") for p in (tmp_path / "wandb").glob("*run-*")] == [True]


@pytest.mark.e2e
def test_a_server_that_answers_the_probe_but_not_the_run_falls_back_to_offline(tmp_path, monkeypatch):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Half(BaseHTTPRequestHandler):  # answers vitstem's probe, then hangs on wandb's own queries
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if b"query { viewer { id } }" not in body:
                time.sleep(120)
                return
            out = json.dumps({"data": {"viewer": {"id": "u1"}}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Half)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    logger = wandb_logger(save_dir=str(tmp_path), project="vitstem", init_timeout=5)
    assert logger.mode == "online"
    start = time.perf_counter()
    try:
        with pytest.warns(UserWarning, match="wandb: the online run could not start .*logging offline"):
            run = logger.experiment
        assert run.settings.mode == "offline" and logger.mode == "offline"
        logger.log_metrics({"train/loss": 1.5}, step=0)
    finally:
        finish_wandb(failed=False)
        server.shutdown()
    assert time.perf_counter() - start < 90 and list((tmp_path / "wandb").glob("offline-run-*"))


def test_wandb_errors_while_logging_turn_wandb_off_and_training_goes_on(tmp_path, monkeypatch):
    logger = wandb_logger(save_dir=str(tmp_path), project="vitstem")  # WANDB_MODE=offline (conftest)

    def fail(self, *args, **kwargs):
        raise ConnectionError("the wandb service died")

    monkeypatch.setattr(WandbLogger, "log_metrics", fail)
    with pytest.warns(UserWarning, match=r"logging to wandb is off for this run \(ConnectionError: the wandb service "
                                         r"died\); metrics.csv holds the log"):
        logger.log_metrics({"train/loss": 1.0}, step=0)
    assert logger.mode == "off" and logger.log_metrics({"train/loss": 0.9}, step=1) is None
    assert logger.experiment.log({"x": 1}) is None  # a do-nothing run from now on


@pytest.mark.e2e
def test_a_run_with_a_hung_wandb_server_trains_and_logs_offline(tmp_path, hung_server):
    start = time.perf_counter()
    results = train(TINY + ["logger=wandb", "+logger.wandb.probe_timeout=1"], tmp_path)
    assert results["status"] == "finished" and results["steps"] == 2
    assert "train/loss" in (tmp_path / "metrics.csv").read_text()
    assert list((tmp_path / "wandb").glob("offline-run-*")) and not list((tmp_path / "wandb").glob("run-*"))
    assert time.perf_counter() - start < 120


def test_a_job_is_named_after_its_study_and_folder_and_tagged_with_its_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_config(["logger=wandb", "name=xiao_lr_wd", "model=vit_c_32", "optimizer=sgd", "tags=[a]"], tmp_path / "7")
    node = cfg.logger.wandb
    assert node.name == "xiao_lr_wd-7" and node.group == "xiao_lr_wd" and node.job_type == "train"
    logger = wandb_logger(save_dir=str(tmp_path), choices=dict(node.choices), tags=list(node.tags))
    assert logger.mode == "offline"  # WANDB_MODE=offline: no probe
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
