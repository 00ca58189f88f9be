"""data=imagenet: wnid image folders, class subsets, the per-class cap, unreadable files, folder errors."""
from __future__ import annotations

import re
import shutil

import pytest
import torch
from torch.utils.data import DataLoader

from tests.helpers import TINY, train
from vitstem.config import ConfigError
from vitstem.data.imagenet import CorruptImageError

WNIDS = [f"n{c:08d}" for c in range(4)]


def args(root, *more: str) -> list[str]:
    return TINY + ["data=imagenet", f"data.root={root}", "data.loader.num_workers=0",
                   "data.loader.persistent_workers=false", *more]


def head_classes(run_dir) -> int:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    return state["model.head.weight"].shape[0]


@pytest.mark.e2e
def test_trains_through_the_app(imagefolder, tmp_path):
    results = train(args(imagefolder, "data.num_classes=4"), tmp_path / "run")
    assert results["status"] == "finished" and results["steps"] == 2
    assert head_classes(tmp_path / "run") == 4


def test_samples_labels_and_transforms(imagefolder, datamodule):
    dm = datamodule(args(imagefolder, "data.num_classes=4"))
    dm.setup("fit")
    assert dm.classes == WNIDS and (len(dm.train_set), len(dm.val_set)) == (16, 8)
    x, y = dm.train_set[5]
    assert x.shape == (3, 16, 16) and y == 1 and dm.train_set.samples[5][0].endswith("n00000001/n00000001_1.JPEG")
    assert dm.val_set[7][0].shape == (3, 16, 16) and dm.val_set[7][1] == 3


@pytest.mark.e2e
def test_subset_is_every_kth_sorted_wnid_and_cap_keeps_the_first_files(imagefolder, datamodule, tmp_path):
    dm = datamodule(args(imagefolder, "data.num_classes=2", "data.max_per_class=3"))
    assert dm.classes == ["n00000000", "n00000002"]
    assert [s[0].rsplit("/", 1)[1] for s in dm.train_samples] == [
        f"n0000000{c}_{i}.JPEG" for c in (0, 2) for i in range(3)]
    assert [s[1] for s in dm.train_samples] == [0, 0, 0, 1, 1, 1]
    assert len(dm.val_samples) == 4  # validation is not capped
    results = train(args(imagefolder, "data.num_classes=2", "data.max_per_class=3", "data.loader.batch_size=2"),
                    tmp_path / "run")
    assert results["status"] == "finished" and head_classes(tmp_path / "run") == 2


def test_explicit_class_list(imagefolder, datamodule):
    dm = datamodule(args(imagefolder, "data.num_classes=2", "data.classes=[n00000003,n00000001]"))
    assert dm.classes == ["n00000003", "n00000001"] and {s[1] for s in dm.train_samples} == {0, 1}
    assert dm.train_samples[0][0].endswith("n00000003_0.JPEG")
    with pytest.raises(ConfigError, match=r"data.classes has 2 entries .* data.num_classes=2"):
        datamodule(args(imagefolder, "data.classes=[n00000003,n00000001]"))  # num_classes stays 1000
    with pytest.raises(ConfigError, match=r"\['n00000009'\] are not class folders"):
        datamodule(args(imagefolder, "data.num_classes=1", "data.classes=[n00000009]"))


def test_more_classes_than_folders_is_an_error(imagefolder, datamodule):
    with pytest.raises(ConfigError, match=r"data.num_classes=1000: the train folder has 4 class folders"):
        datamodule(args(imagefolder))


@pytest.mark.e2e
def test_corrupt_image_stops_training_naming_the_file(imagefolder, tmp_path):
    bad = imagefolder / "train" / "n00000002" / "n00000002_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(CorruptImageError, match=re.escape(str(bad))):  # 16 images, one batch of 16: it is read
        train(args(imagefolder, "data.num_classes=4", "data.loader.batch_size=16"), tmp_path / "run")


def test_skip_corrupt_skips_and_counts_across_workers(imagefolder, datamodule):
    bad = [imagefolder / "train" / "n00000000" / "n00000000_2.JPEG", imagefolder / "val" / "n00000003" / "n00000003_0.JPEG"]
    bad[0].write_bytes(b"not a jpeg")
    bad[1].write_bytes(bad[1].read_bytes()[:100])
    dm = datamodule(args(imagefolder, "data.num_classes=4", "data.skip_corrupt=true", "data.loader.batch_size=4",
                         "data.loader.num_workers=1"))
    dm.setup("fit")
    labels = torch.cat([y for _, y in dm.train_dataloader()])
    assert len(labels) == 16 and dm.train_set.skipped == 1 and dm.skipped == 1  # counted in the worker
    x, y = dm.val_set[6]  # the bad val image is replaced by the next one
    assert x.shape == (3, 16, 16) and y == 3 and dm.skipped == 2
    assert list(DataLoader(dm.val_set, batch_size=8))[0][1].tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and dm.skipped == 2


def test_empty_class_folder_is_an_error_naming_it(imagefolder, tmp_path):
    empty = imagefolder / "train" / "n00000001"
    shutil.rmtree(empty)
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ConfigError) as e:
        train(args(imagefolder, "data.num_classes=4"), tmp_path / "run")
    assert f"class folder {empty} holds no images" in str(e.value) and "data.classes" in str(e.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before training


def test_val_classes_must_match_train(imagefolder, datamodule):
    shutil.rmtree(imagefolder / "val" / "n00000002")
    (imagefolder / "val" / "n00000007").mkdir()
    with pytest.raises(ConfigError) as e:
        datamodule(args(imagefolder, "data.num_classes=4"))
    message = str(e.value)
    assert "only in train: ['n00000002']" in message and "only in val: ['n00000007']" in message
    assert str(imagefolder / "val") in message


def test_missing_root_names_the_path_and_how_to_get_it(tmp_path, datamodule):
    with pytest.raises(ConfigError) as e:
        datamodule(args(tmp_path / "nothing"))
    assert f"no folder {tmp_path / 'nothing' / 'train'}" in str(e.value) and "image-net.org" in str(e.value)
