"""vitstem.data.transfer: loader settings from the device and the job's CPUs, uint8 transfer normalised on the device."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from vitstem.data import transfer

AUTO = {"num_workers": "auto", "pin_memory": "auto", "normalize_on_device": "auto", "batch_size": 8}


@pytest.fixture
def cpus(monkeypatch):
    """This process's CPUs (affinity) set to ``n``, and no SLURM task variables."""
    for key in ("SLURM_CPUS_PER_TASK", "SLURM_NTASKS_PER_NODE", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)

    def set_cpus(n: int):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)))
    return set_cpus


def test_auto_is_no_workers_and_no_pinning_on_a_cpu(cpus):
    cpus(64)
    assert transfer.resolve(AUTO, cuda=False, local_ranks=1) == {**AUTO, "num_workers": 0, "pin_memory": False,
                                                                  "normalize_on_device": False}
    fixed = {**AUTO, "num_workers": 3, "pin_memory": False}
    assert transfer.resolve(fixed, cuda=True, local_ranks=1)["num_workers"] == 3  # a number is kept


def test_workers_per_rank_come_from_the_cpus_the_job_has(cpus, monkeypatch):
    cpus(64)  # one process, 8 ranks started from it (Lightning / vitstem's launcher): 8 CPUs each
    assert transfer.rank_cpus(8) == 8
    assert transfer.resolve(AUTO, cuda=True, local_ranks=8) == {**AUTO, "num_workers": 7, "pin_memory": True,
                                                                 "normalize_on_device": True}
    assert transfer.resolve(AUTO, cuda=True, local_ranks=1)["num_workers"] == transfer.MAX_WORKERS  # 63 capped
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "10")  # srun: one task per rank, 10 CPUs each
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8(x2)")
    assert transfer.rank_cpus(8) == 10 and transfer.resolve(AUTO, cuda=True, local_ranks=8)["num_workers"] == 9
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "1")  # one task whose process starts the 8 ranks: they share its CPUs
    assert transfer.rank_cpus(8) == 8
    cpus(2)
    assert transfer.resolve(AUTO, cuda=True, local_ranks=2)["num_workers"] == 0  # one CPU each: the training loop's


def test_every_rank_caps_its_threads_at_its_cpus(cpus, monkeypatch, tmp_path):
    """vitstem's DDP launcher skips Lightning's per-rank thread cap: each rank caps itself in the module's setup."""
    from tests.models.test_classifier import build_tiny

    _, module, trainer = build_tiny([], tmp_path)
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpus(32)
    module.trainer = SimpleNamespace(num_devices=8, strategy=SimpleNamespace(root_device=torch.device("cpu")))
    module.setup("fit")
    assert calls == [4]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's setting wins
    module.setup("fit")
    assert calls == [4]


def fake_trainer(cuda: bool, training: bool = True):
    device = torch.device("cuda" if cuda else "cpu")
    return SimpleNamespace(strategy=SimpleNamespace(root_device=device), num_devices=1, world_size=1, global_rank=0,
                           training=training)


@pytest.fixture
def cifar_dm(cifar_root, datamodule):
    def build(*overrides):
        dm = datamodule(["data=cifar10", f"data.root={cifar_root[0]}", "data.verify_checksums=false",
                         "model.img_size=32", "data.loader.batch_size=4", "data.loader.num_workers=0", *overrides])
        dm.setup("fit")
        return dm
    return build


def test_images_travel_as_uint8_and_are_normalised_on_the_device_as_in_the_loader(cifar_dm):
    """On a GPU (faked: the device part runs on this CPU) the loader yields uint8, a quarter of float32's bytes, and
    the batch finished after the transfer equals what the loader made before, to float rounding."""
    cpu = cifar_dm()
    cpu.trainer = fake_trainer(cuda=False, training=False)
    reference, labels = next(iter(cpu.val_dataloader()))
    assert reference.dtype == torch.float32 and not cpu.loader["pin_memory"]

    gpu = cifar_dm()
    gpu.trainer = fake_trainer(cuda=True, training=False)
    assert gpu.loader["pin_memory"] and gpu.loader["normalize_on_device"]
    x, y = next(iter(gpu.val_dataloader()))
    assert x.dtype == torch.uint8 and torch.equal(y, labels)
    assert x.element_size() * 4 == reference.element_size()
    finished, _ = gpu.on_after_batch_transfer((x, y), 0)
    torch.testing.assert_close(finished, reference, atol=1e-6, rtol=0)


def test_training_augmentation_after_the_tensor_runs_on_the_batch(cifar_dm):
    """Xiao's lighting and DeiT's random erasing come after the tensor conversion: they run per image of the batch
    on the device; precise BatchNorm's loader (not moved by Lightning) finishes on the CPU."""
    gpu = cifar_dm("data/augment=deit", "data.augment.num_repeats=1", "data.augment.lighting=0.1", "data.augment.re_prob=1.0")
    gpu.trainer = fake_trainer(cuda=True, training=True)
    x, y = next(iter(gpu.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 32, 32)
    torch.manual_seed(0)
    finished, _ = gpu.on_after_batch_transfer((x, y), 0)
    assert finished.dtype == torch.float32 and finished.shape == x.shape
    mean = torch.tensor(gpu.train_transform.device_ops[1].mean).view(1, 3, 1, 1)  # [lighting, normalize, erasing]
    std = torch.tensor(gpu.train_transform.device_ops[1].std).view(1, 3, 1, 1)
    plain = (x.float() / 255 - mean) / std
    changed = (finished - plain).abs() > 1e-4
    for image in changed:  # each image lit (a shift everywhere) and erased (a rectangle of other values)
        assert image.float().mean() > 0.5
    sample_x, _ = next(iter(gpu.sample_dataloader(4, seed=0)))
    assert sample_x.dtype == torch.float32 and sample_x.shape == (4, 3, 32, 32)


def test_lighting_on_a_batch_is_lighting_per_image():
    from vitstem.data.augment import Lighting

    light = Lighting(0.1)
    batch = torch.rand(3, 3, 8, 8)
    torch.manual_seed(1)
    lit = light(batch)
    torch.manual_seed(1)
    alpha = torch.randn(3, 3) * 0.1
    for i in range(3):
        expected = batch[i] + (Lighting.EIGVEC @ (alpha[i] * Lighting.EIGVAL)).view(3, 1, 1)
        torch.testing.assert_close(lit[i], expected)


def test_precise_bn_images_are_split_evenly_over_the_ranks(cifar_dm):
    """Under sync_batchnorm every BatchNorm forward is a collective: the ranks must make as many (10 images over 3 ranks
    were 4, 3, 3: a batch of 2 made 2, 2, 2 batches, but a batch of 1 made 4, 3, 3 and the collectives did not pair)."""
    dm = cifar_dm("data.loader.batch_size=1")
    images, batches = [], []
    for rank in range(3):
        dm.trainer = SimpleNamespace(world_size=3, global_rank=rank)
        loader = dm.sample_dataloader(10, seed=0)
        images.append(set(loader.dataset.indices))
        batches.append(sum(1 for _ in loader))
    assert batches == [3, 3, 3] and [len(i) for i in images] == [3, 3, 3]
    assert len(images[0] | images[1] | images[2]) == 9  # different images on each rank
