"""Test helpers: compose the real Hydra config and run ``vitstem-train`` in-process on tiny settings."""
from __future__ import annotations

import atexit
import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from vitstem.paths import CONF_DIR


# A model small enough for a CPU test: 1 block of width 32 at 16 px.
TINY = ["model=vit_p_32", "model.depth=1", "model.embed_dim=32", "model.num_heads=2",
        "data.img_size=16", "model.img_size=16",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "data.loader.batch_size=8", "scheduler.warmup=0",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]


def compose_config(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """The config ``vitstem-train <overrides>`` would run, with its Hydra runtime fields set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="test"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.run_dir = str(run_dir)
    return cfg


def train(overrides: list[str], run_dir: Path) -> dict:
    """Run ``vitstem-train`` in-process with ``overrides`` into ``run_dir``; return its results."""
    from vitstem.train import run

    cfg = compose_config(overrides, run_dir)
    with open_dict(cfg):
        del cfg.hydra
    return run(cfg)


REPO = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd, timeout: float = 300, env: dict | None = None):
    """``python -m vitstem.train <args>`` in a subprocess (``tests.helpers`` importable there)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "vitstem.train", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


class Zygote:
    """A ``python -m tests.zygote`` of this test process, started at first use: it forks commands as processes of
    their own without a new interpreter's imports (see tests/zygote.py for what differs and where that is tested)."""

    _proc: subprocess.Popen | None = None
    _files: Path | None = None  # the commands' streams and status files, removed when this process ends
    _count = 0

    @classmethod
    def start(cls, module: str, *args, cwd, env: dict | None = None, merge_stderr: bool = False,
              fsize: int | None = None, stdout: Path | None = None) -> "Forked":
        """Fork ``python -m <module> <args>`` (``stdout``: a file it appends to; ``fsize``: RLIMIT_FSIZE, bytes)."""
        if cls._proc is None or cls._proc.poll() is not None:
            cls._proc = subprocess.Popen([sys.executable, "-m", "tests.zygote"], cwd=REPO, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         env={**os.environ, "PYTHONPATH": str(REPO)})
            assert cls._proc.stdout.readline().strip() == "ready", "tests/zygote.py did not start"
        if cls._files is None:
            cls._files = Path(tempfile.mkdtemp(prefix="vitstem_forked_"))
            atexit.register(shutil.rmtree, cls._files, ignore_errors=True)
        cls._count += 1
        files = cls._files / str(cls._count)
        files.mkdir()
        request = {"module": module, "args": list(map(str, args)), "cwd": str(cwd),
                   "env": {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **(env or {})},
                   "stdout": str(stdout or files / "stdout"), "stderr": None if merge_stderr else str(files / "stderr"),
                   "status": str(files / "status.json"), "fsize": fsize}
        cls._proc.stdin.write(json.dumps(request) + "\n")
        cls._proc.stdin.flush()
        return Forked([module, *request["args"]], files)


class Forked:
    """A command forked by :class:`Zygote`, used like a ``subprocess.Popen``: ``pid``, ``wait``, ``returncode``."""

    def __init__(self, args: list[str], files: Path):
        self.args, self.files, self.returncode = args, files, None
        self.pid = self._status(timeout=60)["pid"]

    def _status(self, timeout: float, key: str = "pid") -> dict:
        path, end = self.files / "status.json", time.monotonic() + timeout
        while True:
            status = json.loads(path.read_text()) if path.is_file() else {}
            if key in status:
                return status
            if time.monotonic() > end:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.05)

    def wait(self, timeout: float | None = None) -> int:
        self.returncode = self._status(1e9 if timeout is None else timeout, "returncode")["returncode"]
        return self.returncode

    def result(self, timeout: float = 300) -> subprocess.CompletedProcess:
        """Wait for the end; what it wrote to its standard streams."""
        self.wait(timeout)
        read = lambda name: (self.files / name).read_text() if (self.files / name).is_file() else ""  # noqa: E731
        return subprocess.CompletedProcess(self.args, self.returncode, read("stdout"), read("stderr"))


def run_forked(*args, cwd, timeout: float = 300, env: dict | None = None, fsize: int | None = None):
    """``python -m vitstem.train <args>`` as a process of its own, forked by :class:`Zygote` (no new interpreter)."""
    return Zygote.start("vitstem.train", *args, cwd=cwd, env=env, fsize=fsize).result(timeout)


def run_app(*args, cwd) -> subprocess.CompletedProcess:
    """``vitstem-train <args>`` in this process: the console entry point with ``sys.argv`` set, so Hydra's app, its
    callbacks, the sweeper, the messages and the exit code are the command line's, without the seconds a new
    process takes to import torch and Lightning. For what only a process has (a signal, a kill, a resource limit,
    what is imported at start-up), use :func:`run_cli`."""
    from vitstem import train as app

    out, err = io.StringIO(), io.StringIO()
    argv, here, logging_state = sys.argv, os.getcwd(), _logging_state()
    code = 0
    try:
        os.chdir(cwd)
        sys.argv = ["vitstem-train", *map(str, args)]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                app.main()
            except SystemExit as e:  # as the interpreter ends a process: a message goes to stderr, exit code 1
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
        os.chdir(here)
        _restore_logging(logging_state)  # Hydra configured logging for the job: pytest's capture is put back
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess(["vitstem-train", *map(str, args)], code, out.getvalue(), err.getvalue())


def _logging_state():
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    return [(lg, lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers]


def _restore_logging(state) -> None:
    for lg, level, handlers, propagate, disabled in state:
        for h in lg.handlers:
            if h not in handlers:
                with contextlib.suppress(Exception):
                    h.close()
        lg.setLevel(level)
        lg.handlers[:] = handlers
        lg.propagate, lg.disabled = propagate, disabled


class SignalAt(L.Callback):
    """Test callback: send this process ``signal`` (a name, e.g. SIGKILL, SIGUSR1) during training step ``step + 1``
    (when ``global_step == step`` at its start) on global rank ``rank``, optionally only when the base lr
    equals ``when_lr``."""

    def __init__(self, step: int, signal: str = "SIGKILL", rank: int = 0, when_lr: float | None = None):
        self.step, self.signal, self.rank, self.when_lr = step, signal, rank, when_lr

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import signal as signals

        lr_ok = self.when_lr is None or abs(pl_module.hparams.optimizer["lr"] - self.when_lr) < 1e-12
        if trainer.global_step == self.step and trainer.global_rank == self.rank and lr_ok:
            os.kill(os.getpid(), getattr(signals, self.signal))


class RecordRank(L.Callback):
    """Test callback: each rank writes ``rank<global rank>.json`` into the run folder with the lr and pid it saw."""

    def on_train_start(self, trainer, pl_module) -> None:
        import json

        seen = {"lr": pl_module.hparams.optimizer["lr"], "pid": os.getpid(), "world_size": trainer.world_size,
                "run_dir": trainer.default_root_dir}
        (Path(trainer.default_root_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(seen))
