"""vitstem-shard and data=imagenet_shards: the tar contents, no duplicates over ranks x workers, shuffling,
exact mid-epoch resume (in the loader and through the app), validation, holdout, errors."""
from __future__ import annotations

import collections
import hashlib
import json
import tarfile
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from tests.data.tiny_files import write_imagefolder
from tests.helpers import TINY, train
from vitstem.config import ConfigError
from vitstem.data.imagenet import CorruptImageError
from vitstem.data.shard_cli import main as shard_cli
from vitstem.data.shards import ShardLoader, ShardPosition, ShardSplit, ShardStream, read_index, write_shards
from vitstem.train import Interrupted

WNIDS = [f"n{c:08d}" for c in range(3)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, Path]:
    """3 classes x 8 training (24) and x 3 validation (9) JPEGs of 24 x 28 px, as shards of 5 images."""
    root = tmp_path_factory.mktemp("shards")
    folder = write_imagefolder(root / "imagenet", classes=3, train_per_class=8, val_per_class=3)
    write_shards(folder, root / "out", shard_size="5", progress=lambda _: None)
    return folder, root / "out"


def split_of(out: Path, split: str = "train") -> ShardSplit:
    index = json.loads((out / "index.json").read_text())
    return ShardSplit(tuple((str(out / s["file"]), s["samples"]) for s in index["splits"][split]["shards"]))


def digest(x: torch.Tensor) -> str:
    return hashlib.sha1(x.numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def key_of(shards) -> dict[str, str]:
    """The sample key of each image's ToTensor() pixels (the tiny images are all different)."""
    folder, _ = shards
    return {digest(T.ToTensor()(Image.open(f).convert("RGB"))): f"{f.parent.name}/{f.stem}"
            for f in sorted(folder.rglob("*.JPEG"))}


def tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def test_shards_hold_the_original_bytes_and_labels(shards, tmp_path):
    folder, out = shards
    index = json.loads((out / "index.json").read_text())
    assert index["classes"] == WNIDS
    assert [s["samples"] for s in index["splits"]["train"]["shards"]] == [5, 5, 5, 5, 4]
    assert [s["samples"] for s in index["splits"]["val"]["shards"]] == [5, 4]
    for split, n in (("train", 24), ("val", 9)):
        members = [m for s in index["splits"][split]["shards"] for m in tar_members(out / s["file"])]
        names = [name for name, _ in members]
        assert len(names) == 2 * n and names[0::2] == [n.replace(".cls", ".jpg") for n in names[1::2]]
        for (jpg, data), (cls, label) in zip(members[0::2], members[1::2]):
            wnid, stem = jpg[:-4].split("/")
            assert data == (folder / split / wnid / f"{stem}.JPEG").read_bytes()  # unchanged
            assert int(label) == WNIDS.index(wnid)
        order = [name.split("/")[0] for name in names[0::2]]
        if split == "val":
            assert order == sorted(order)  # class order
        else:
            assert order != sorted(order) and sorted(collections.Counter(order).values()) == [8, 8, 8]  # shuffled
    write_shards(folder, tmp_path / "again", shard_size="5", progress=lambda _: None)
    assert (tmp_path / "again" / "train-000003.tar").read_bytes() == (out / "train-000003.tar").read_bytes()


def test_two_ranks_by_two_workers_read_each_sample_once_per_epoch(shards, key_of):
    _, out = shards
    split, seen = split_of(out), {}
    for epoch in (0, 1):
        for rank in (0, 1):
            position = ShardPosition(seed=0)
            stream = ShardStream(split, 2, T.ToTensor(), world=2, rank=rank, shuffle=True, buffer=4, seed=0,
                                 drop_last=True, state=position.state)
            position.set_epoch(epoch)
            batches = list(ShardLoader(stream, position, batch_size=2, num_workers=2, drop_last=True))
            assert len(batches) == 6 == len(stream) // 2  # 24 samples / 2 ranks / batch 2
            seen[epoch, rank] = [key_of[digest(x)] for xs, _ in batches for x in xs]
    for epoch in (0, 1):
        keys = seen[epoch, 0] + seen[epoch, 1]
        assert len(keys) == 24 and set(keys) == {f"n{c:08d}/n{c:08d}_{i}" for c in range(3) for i in range(8)}
    assert seen[0, 0] != seen[1, 0]
    # 23 samples do not divide: each rank gets 5 batches of 2, 3 samples are left out, none is read twice
    uneven = [[k for k, *_ in ShardStream(split.head(23), 2, None, world=2, rank=r, shuffle=True, buffer=4,
                                          drop_last=True).raw(0, 0, w, 2)] for r in (0, 1) for w in (0, 1)]
    assert [len(keys) for keys in uneven] == [6, 4, 6, 4] and len({k for keys in uneven for k in keys}) == 20


def test_shuffle_is_a_function_of_seed_and_epoch(shards):
    _, out = shards

    def order(seed, epoch):
        stream = ShardStream(split_of(out), 2, None, shuffle=True, buffer=6, seed=seed, drop_last=True)
        return [k for k, *_ in stream.raw(epoch, 0, 0, 1)]

    assert order(0, 0) == order(0, 0) and len(set(order(0, 0))) == 24
    assert order(0, 1) != order(0, 0) and order(1, 0) != order(0, 0) and sorted(order(0, 1)) == sorted(order(0, 0))
    unshuffled = ShardStream(split_of(out), 2, None, drop_last=True)
    assert [k for k, *_ in unshuffled.raw(5, 0, 0, 1)] == [k for k, *_ in unshuffled.raw(0, 0, 0, 1)]


@pytest.mark.parametrize("workers,persistent", [(0, False), (2, False), (2, True)])
def test_resume_skipping_k_batches_yields_the_tail_of_the_epoch(shards, workers, persistent):
    _, out = shards
    position = ShardPosition(seed=3)
    stream = ShardStream(split_of(out), 2, T.ToTensor(), world=2, rank=1, shuffle=True, buffer=4, seed=3,
                         drop_last=True, repeats=1, state=position.state)
    loader = ShardLoader(stream, position, batch_size=2, num_workers=workers, drop_last=True,
                         **({"persistent_workers": persistent} if workers else {}))
    assert loader.sampler is position and len(loader) == 6
    position.set_epoch(1)
    full = list(loader)
    for k in (3, 4, 6):  # 3: the next batch is worker 1's
        position.set_epoch(1)
        position.start_at(k * 2)  # what RunCheckpoint calls: the samples already trained
        tail = list(loader)
        assert len(tail) == 6 - k and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                          for a, b in zip(full[k:], tail))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, loader))  # the skip applies once


def test_validation_is_unshuffled_and_split_over_ranks(shards, datamodule):
    _, out = shards
    ranks = [[k for w in range(2) for k, *_ in ShardStream(split_of(out, "val"), 2, None, world=2, rank=r).raw(0, 0, w, 2)]
             for r in (0, 1)]
    assert [len(r) for r in ranks] == [5, 4]
    assert ranks[0] + ranks[1] == [f"n{c:08d}/n{c:08d}_{i}" for c in range(3) for i in range(3)]
    dm = datamodule(args(out, "data.loader.batch_size=4"))
    labels = torch.cat([y for _, y in dm.val_dataloader()])
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_holdout_keeps_the_tail_of_the_written_order_out(shards, datamodule):
    _, out = shards
    dm = datamodule(args(out, "data.holdout=0.25"))
    assert len(dm.train_set) == 24 and len(dm.trained_set) == 18
    assert dm.trained_set.shards[-1] == (str(out / "train-000003.tar"), 3)
    assert len(dm.train_dataloader()) == 18 // 8  # data.loader.batch_size=8 (TINY)


def test_unreadable_image_stops_naming_it_or_is_replaced_and_counted(shards, tmp_path):
    folder, _ = shards
    bad = tmp_path / "in"
    write_imagefolder(bad, classes=2, train_per_class=3, val_per_class=1)
    (bad / "train" / "n00000001" / "n00000001_0.JPEG").write_bytes(b"not a jpeg")
    write_shards(bad, tmp_path / "out", progress=lambda _: None)
    with pytest.raises(CorruptImageError, match=r"n00000001/n00000001_0 of shard .*train-000000.tar"):
        list(ShardStream(split_of(tmp_path / "out"), 3, T.ToTensor(), drop_last=True))
    stream = ShardStream(split_of(tmp_path / "out"), 3, T.ToTensor(), drop_last=True, skip_corrupt=True)
    assert len(list(stream)) == 6 and int(stream.bad) == 1


def args(root, *more: str) -> list[str]:
    return TINY + ["data=imagenet_shards", f"data.root={root}", "data.num_classes=3", "data.loader.num_workers=0",
                   "data.loader.persistent_workers=false", *more]


def test_config_errors(shards, datamodule, tmp_path):
    _, out = shards
    with pytest.raises(ConfigError, match=r"no .*index.json .*vitstem-shard <imagenet folder>"):
        datamodule(args(tmp_path))
    with pytest.raises(ConfigError, match=r"data.num_classes=1000 but the shards in .* hold 3 classes"):
        datamodule(args(out, "data.num_classes=1000"))
    with pytest.raises(ConfigError, match=r"data.max_per_class=2: .*vitstem-shard ... --max-per-class 2"):
        datamodule(args(out, "data.max_per_class=2"))
    assert datamodule(args(out, f"data.classes=[{','.join(WNIDS)}]")).classes == WNIDS


def test_cli_errors_are_one_line(shards, tmp_path, capsys):
    folder, out = shards
    cases = {(str(tmp_path / "none"), str(tmp_path / "o1")): "no folder",
             (str(folder), ""): "output folder is empty",
             (str(folder), str(out)): "is not empty",
             (str(folder), str(tmp_path / "o2"), "--shard-size", "0"): "--shard-size='0' must be",
             (str(folder), str(tmp_path / "o3"), "--num-classes", "7"): "--num-classes=7: the train folder has 3"}
    for argv, message in cases.items():
        assert shard_cli(list(argv)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("vitstem-shard: error: ") and message in err, err
    assert shard_cli([str(folder), str(tmp_path / "o4"), "--num-classes", "2", "--shard-size", "1MB"]) == 0
    assert "data.num_classes=2" in capsys.readouterr().out
    assert shard_cli([str(folder), str(tmp_path / "o4"), "--overwrite", "--max-per-class", "2"]) == 0
    assert read_index(tmp_path / "o4")["splits"]["train"]["samples"] == 6


class RecordBatches(L.Callback):
    """Test callback: appends each training batch's global step and pixel digest to ``batches.jsonl``."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(Path(trainer.default_root_dir) / "batches.jsonl", "a") as f:
            f.write(json.dumps([trainer.global_step, digest(batch[0].cpu())]) + "\n")


@pytest.mark.e2e
def test_trains_and_resumes_mid_epoch_through_the_app(tmp_path):
    # 16 px square images at img_size 16 with crop scale [1, 1]: every random-resized crop is the whole image, so
    # the training batches are a function of the sample order alone and a resumed run must see bit-identical ones
    write_imagefolder(tmp_path / "in", classes=3, train_per_class=8, val_per_class=1, size=16, width=16)
    write_shards(tmp_path / "in", tmp_path / "out", shard_size="5", progress=lambda _: None)
    # 2 epochs of 5 batches of 4 (holdout: 4 of 24), 2 persistent loader workers, a checkpoint every step
    run = args(tmp_path / "out", "data.holdout=0.17", "data.loader.num_workers=2", "data.loader.batch_size=4",
               "data/augment=none", "data.augment.scale=[1.0,1.0]", "trainer.max_epochs=2",
               "trainer.limit_train_batches=null", "trainer.deterministic=true", "callbacks.checkpoint.every_n_steps=1",
               "+callbacks.record={_target_: tests.data.test_shards.RecordBatches}")
    run = [o.replace("persistent_workers=false", "persistent_workers=true") for o in run]
    expected = train(run, tmp_path / "whole")
    assert expected["status"] == "finished" and expected["steps"] == 10
    stop = "+callbacks.stop={_target_: tests.helpers.SignalAt, step: 5, signal: SIGUSR1}"  # stops after batch 1 of epoch 1
    with pytest.raises(Interrupted):
        train(run + [stop], tmp_path / "resumed")
    resumed = train(run, tmp_path / "resumed")
    assert resumed["resumed_from"] and resumed["final_train_loss"] == expected["final_train_loss"]
    whole, parts = ((tmp_path / d / "batches.jsonl").read_text().splitlines() for d in ("whole", "resumed"))
    assert len(parts) == 10 and parts == whole  # batch 1 of epoch 1 was worker 1's: worker 0 continues its stream
