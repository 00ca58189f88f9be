"""Fixtures of the data tests: tiny data sets on disk (tests/data/tiny_files.py) and a data-module builder."""
from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from hydra.errors import InstantiationException

from tests.helpers import compose_config
from tests.data.tiny_files import CIFAR_FILES, write_cifar, write_imagefolder


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> tuple[Path, dict]:
    """One root holding a tiny CIFAR-10 and CIFAR-100; the written data by variant."""
    root = tmp_path_factory.mktemp("cifar")
    return root, {name: write_cifar(root, name, seed=i) for i, name in enumerate(CIFAR_FILES)}


@pytest.fixture
def imagefolder(tmp_path) -> Path:
    return write_imagefolder(tmp_path / "imagenet")


@pytest.fixture
def datamodule():
    """Build the data module of ``vitstem-train <overrides>``; raise its own error, not Hydra's wrapper."""
    def build(overrides: list[str]):
        try:
            return hydra.utils.instantiate(compose_config(overrides).data, _convert_="all")
        except InstantiationException as e:
            raise e.__cause__ from None
    return build
