"""pytest set-up shared by every test: wandb stays offline and quiet; parallel workers share the cores; the
expensive artefacts several test modules read are built once per session (per worker under pytest-xdist).

Tiers: ``uv run pytest -m "not e2e"`` runs the fast unit tests (the edit loop); ``uv run pytest`` runs everything,
the end-to-end tests (``@pytest.mark.e2e``: a CLI process, a training run, DDP, a sweep, kill-and-resume) included.
Workers: ``-n auto`` (at most 4) from pyproject.toml; ``-n 0`` runs in this process (a debugger, ``-x`` on one test).
"""
import gc
import os
from pathlib import Path

import pytest
from hydra.core.plugins import Plugins

# Hydra's first plugin scan re-executes its core plugins' modules: done here, before any test module imports the
# random sweeper (a subclass of Hydra's BasicSweeper), so that the app run in this process (tests.helpers.run_app)
# instantiates a sweeper whose base is the BasicSweeper Hydra then holds.
Plugins.instance()

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# Under pytest-xdist each worker is a process: give each its share of the cores (torch would take them all in every
# worker, and the CLI processes a test starts inherit the setting).
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _workers))


# The modules that keep one worker longest (seconds, whole suite on 2 idle cores, 2026-12-05), handed out first: xdist's
# loadscope gives each worker whole modules in collection order (``--no-loadscope-reorder`` in pyproject.toml; its
# default order, most tests first, started the one-test DDP modules last, with the other worker idle).
LONGEST_FIRST = ("scale/test_signals.py",  # 35
                 "test_train.py",  # 33
                 "scale/test_ddp.py",  # 31
                 "runs/test_resume.py",  # 19
                 "test_experiments.py",  # 16
                 "analysis/test_claims.py",  # 13
                 "sweeps/test_studies.py",  # 13
                 "test_config.py",  # 13
                 "test_bench.py",  # 12
                 "test_recipes.py",  # 11
                 "runs/test_folder.py")  # 10


def pytest_collection_modifyitems(items) -> None:
    def rank(item) -> int:
        path = item.nodeid.split("::")[0].removeprefix("tests/")
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: a module's tests keep their order


@pytest.fixture(scope="session")
def _tiny(tmp_path_factory) -> tuple[Path, dict]:
    from tests.helpers import TINY, train

    run_dir = tmp_path_factory.mktemp("tiny_run")
    return run_dir, train(TINY, run_dir)


@pytest.fixture(scope="session")
def tiny_run(_tiny) -> Path:
    """The folder of a finished ``TINY`` run (tests/helpers.py), trained once: read it, never write into it."""
    assert _tiny[1]["status"] == "finished", _tiny[1]["error"]
    return _tiny[0]


@pytest.fixture(scope="session")
def tiny_results(_tiny) -> dict:
    """What ``train(TINY, tiny_run)`` returned."""
    return _tiny[1]


def pytest_collection_finish(session) -> None:
    # What collection imported (torch, Lightning, timm, Hydra: millions of objects) lives to the end: moved out of
    # the cyclic collector's reach, so that its automatic collections scan only what the tests create.
    gc.freeze()


def pytest_sessionfinish(session) -> None:
    gc.unfreeze()  # frozen objects are not finalised at exit: triton's bindings would report them as leaked
