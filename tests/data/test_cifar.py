"""data=cifar10 / data=cifar100: the official pickle layout, transforms, errors, training through the app."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import TINY, train
from tests.data.tiny_files import write_cifar
from vitstem.config import ConfigError


def head_classes(run_dir) -> int:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    return state["model.head.weight"].shape[0]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_sample_has_the_written_pixels_and_label(cifar_root, datamodule, name):
    root, written = cifar_root
    dm = datamodule([f"data={name}", f"data.root={root}", "data.verify_checksums=false", "model.img_size=32"])
    dm.setup("fit")
    (train_data, train_labels), (test_data, test_labels) = written[name]["train"], written[name]["test"]
    assert (len(dm.train_set), len(dm.val_set)) == (20, 8)
    x, y = dm.val_set[3]
    assert x.shape == (3, 32, 32) and y == test_labels[3]
    mean, std = torch.tensor(dm.eval_transform.transforms[-1].mean), torch.tensor(dm.eval_transform.transforms[-1].std)
    pixels = (x * std.view(3, 1, 1) + mean.view(3, 1, 1)) * 255
    assert np.abs(pixels.numpy().reshape(-1) - test_data[3]).max() < 0.01  # channel-major, as in the file
    assert dm.train_set.targets == train_labels
    assert dm.train_set[0][0].shape == (3, 32, 32)


def test_other_img_size_resizes(cifar_root, datamodule):
    dm = datamodule(["data=cifar10", f"data.root={cifar_root[0]}", "data.verify_checksums=false", "model.img_size=48"])
    dm.setup("fit")
    assert dm.train_set[0][0].shape == dm.val_set[0][0].shape == (3, 48, 48)


@pytest.mark.e2e
@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_trains_through_the_app(cifar_root, tmp_path, name, classes):
    results = train(TINY + [f"data={name}", f"data.root={cifar_root[0]}", "data.verify_checksums=false"], tmp_path)
    assert results["status"] == "finished" and results["steps"] == 2
    assert head_classes(tmp_path) == classes


@pytest.mark.parametrize("name,folder,url", [
    ("cifar10", "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    ("cifar100", "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz")])
def test_missing_folder_names_the_path_and_how_to_get_it(tmp_path, name, folder, url):
    with pytest.raises(ConfigError) as e:
        train(TINY + [f"data={name}", f"data.root={tmp_path / 'nowhere'}"], tmp_path / "run")
    assert str(tmp_path / "nowhere" / folder) in str(e.value)
    assert url in str(e.value) and "data.download=true" in str(e.value)


def test_checksums_reject_unofficial_files_unless_switched_off(cifar_root, datamodule):
    with pytest.raises(ConfigError, match=r"data_batch_1.*MD5.*data.verify_checksums=false"):
        datamodule(["data=cifar10", f"data.root={cifar_root[0]}"])


def test_download_fetches_the_official_archive_before_setup(tmp_path, monkeypatch, datamodule):
    calls = []

    def fake_download(url, root, filename, md5):  # stands in for torchvision's downloader (no network here)
        calls.append((url, filename, md5))
        write_cifar(Path(root), "cifar100")

    monkeypatch.setattr("vitstem.data.cifar.download_and_extract_archive", fake_download)
    dm = datamodule(["data=cifar100", f"data.root={tmp_path}", "data.download=true", "data.verify_checksums=false"])
    dm.prepare_data()
    dm.prepare_data()  # already there: no second download
    dm.setup("fit")
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
                      "eb9058c3a382ffc7106e4002c42a8d85")]
    assert len(dm.train_set) == 20 and dm.train_set[0][0].shape == (3, 32, 32)  # model.img_size of vit_p_32
