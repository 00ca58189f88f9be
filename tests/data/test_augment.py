"""The data/augment group: flip, auto-augment, random erasing and repeated augmentation on CIFAR / ImageNet."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from timm.data.auto_augment import AutoAugment, RandAugment
from timm.data.distributed_sampler import RepeatAugSampler
from timm.data.random_erasing import RandomErasing
from torch.utils.data import DistributedSampler

from tests.helpers import TINY, compose_config, train
from vitstem.config import ConfigError
from vitstem.train import build


def cifar(root, *more: str) -> list[str]:
    return TINY + ["data=cifar10", f"data.root={root}", "data.verify_checksums=false", *more]


def test_presets_compose_one_augment_node():
    deit = compose_config(["data=imagenet", "data/augment=deit"]).data.augment
    assert dict(deit) == dict(scale=[0.08, 1.0], hflip=0.5, auto_augment="rand-m9-mstd0.5-inc1", color_jitter=0.3,
                              lighting=0.0, re_prob=0.25, re_mode="pixel", num_repeats=3)
    assert compose_config(["data=cifar100", "data/augment=autoaugment"]).data.augment.auto_augment == "v0"
    assert compose_config(["data=cifar10", "data/augment=none"]).data.augment.hflip == 0.0
    assert compose_config([]).data.augment.auto_augment is None  # the synthetic set takes the node, applies none


def test_hflip_probability_one_flips_every_image(cifar_root, datamodule):
    dm = datamodule(cifar(cifar_root[0], "data.padding=0", "data.augment.hflip=1.0", "model.img_size=32"))
    dm.setup("fit")
    flipped = dm.train_set[2][0]
    plain = dm.eval_transform(Image.fromarray(dm.train_set.data[2]))
    assert torch.allclose(flipped, plain.flip(-1))


@pytest.mark.parametrize("preset,kind", [("autoaugment", AutoAugment), ("randaugment", RandAugment)])
def test_auto_augment_presets_build_timm_policies(cifar_root, imagefolder, datamodule, preset, kind):
    for overrides in (cifar(cifar_root[0]), TINY + ["data=imagenet", f"data.root={imagefolder}", "data.num_classes=4"]):
        dm = datamodule(overrides + [f"data/augment={preset}"])
        assert any(isinstance(t, kind) for t in dm.train_transform.transforms)
        dm.setup("fit")
        assert dm.train_set[0][0].shape == (3, 16, 16)


def test_bad_auto_augment_string_is_a_config_error(cifar_root, datamodule):
    with pytest.raises(ConfigError, match="data.augment.auto_augment='bogus'"):
        datamodule(cifar(cifar_root[0], "data.augment.auto_augment=bogus"))
    with pytest.raises(ConfigError, match=r"data.augment.re_prob=1.5 must be a probability"):
        datamodule(cifar(cifar_root[0], "data.augment.re_prob=1.5"))


@pytest.mark.e2e
def test_deit_repeated_augmentation_builds_its_own_sampler_and_trains(cifar_root, tmp_path):
    cfg = compose_config(cifar(cifar_root[0], "data/augment=deit"), tmp_path / "built")
    dm, _, trainer = build(cfg)
    assert trainer._accelerator_connector.use_distributed_sampler is False
    assert any(isinstance(t, RandomErasing) and t.probability == 0.25 for t in dm.train_transform.transforms)
    dm.setup("fit")
    orders = []
    for rank in range(3):  # 3 devices for 3 repeats: each device sees one copy of every image, at the same place
        dm.trainer = SimpleNamespace(world_size=3, global_rank=rank)
        sampler = dm.train_dataloader().sampler
        assert isinstance(sampler.base, RepeatAugSampler) and len(sampler) == 7
        orders.append(list(sampler))
    assert orders[0] == orders[1] == orders[2] and len(set(orders[0])) == 7
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0)  # fewer devices than repeats: copies in one batch
    with pytest.raises(ConfigError, match=r"^data.augment.num_repeats=3 needs at least 3 devices .*num_repeats=1"):
        dm.train_dataloader()
    results = train(cifar(cifar_root[0], "data/augment=deit", "data.augment.num_repeats=1"), tmp_path / "run")
    assert results["status"] == "finished" and results["steps"] == 2


def test_under_ddp_the_data_module_shards_train_and_val_itself(cifar_root, datamodule):
    dm = datamodule(cifar(cifar_root[0], "data/augment=deit", "data.augment.num_repeats=2"))
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1)
    train_sampler, val_sampler = dm.train_dataloader().sampler, dm.val_dataloader().sampler
    assert (train_sampler.base.num_replicas, train_sampler.base.rank, len(train_sampler)) == (2, 1, 10)
    assert isinstance(val_sampler, DistributedSampler) and (val_sampler.num_replicas, val_sampler.rank) == (2, 1)
    assert len(list(val_sampler)) == 4


def test_posterize_keeps_zero_bits_as_tf_does_instead_of_crashing():
    """timm's AutoAugment can ask Pillow 13 for 0 bits (it raises): vitstem's op gives TF's black image."""
    import numpy as np
    from PIL import Image
    from timm.data.auto_augment import NAME_TO_OP, auto_augment_transform

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    assert np.asarray(NAME_TO_OP["Posterize"](img, 0)).max() == 0
    assert (np.asarray(NAME_TO_OP["PosterizeIncreasing"](img, 4)) == np.asarray(img) & 0xF0).all()
    policy = auto_augment_transform("v0", {"translate_const": 6, "img_mean": (124, 116, 104)})
    for _ in range(400):  # ~3% of calls hit 0 bits: this crashed without the fix
        policy(img)


def test_lighting_adds_the_pca_offset_per_image():
    """pycls's lighting: every pixel moves by V (alpha * lambda), alpha ~ N(0, std), on [0, 1] RGB."""
    from vitstem.data.augment import Lighting
    img = torch.rand(3, 8, 8)
    torch.manual_seed(0)
    out = Lighting(0.1)(img)
    torch.manual_seed(0)
    alpha = torch.randn(3) * 0.1
    offset = Lighting.EIGVEC @ (alpha * Lighting.EIGVAL)
    assert torch.allclose(out - img, offset.view(3, 1, 1).expand(3, 8, 8), atol=1e-6)
    assert offset.abs().max() < 0.1  # a small colour shift, not a new image


@pytest.mark.parametrize("experiment,expect", [
    ("xiao_c_4gf", dict(auto=AutoAugment, lighting=0.1, erasing=None, repeats=1, scale=(0.08, 1.0), mean=0.485)),
    ("wang_deit_s_scaled_relu", dict(auto=RandAugment, lighting=None, erasing=0.25, repeats=3, scale=(0.08, 1.0),
                                     mean=0.485)),
    ("wortsman_s16_relu", dict(auto=RandAugment, lighting=None, erasing=None, repeats=1, scale=(0.05, 1.0), mean=0.5)),
])
def test_experiments_switch_on_their_augmentation_with_real_data(imagefolder, datamodule, experiment, expect):
    from timm.data.transforms import RandomResizedCropAndInterpolation
    from vitstem.data.augment import Lighting
    dm = datamodule([f"experiment={experiment}", "data=imagenet", f"data.root={imagefolder}", "data.num_classes=4",
                     "model.img_size=32"])
    ts = dm.train_transform.transforms
    assert any(isinstance(t, expect["auto"]) for t in ts)
    assert [t.std for t in ts if isinstance(t, Lighting)] == ([expect["lighting"]] if expect["lighting"] else [])
    assert [t.probability for t in ts if isinstance(t, RandomErasing)] == ([expect["erasing"]] if expect["erasing"] else [])
    assert next(t for t in ts if isinstance(t, RandomResizedCropAndInterpolation)).scale == expect["scale"]
    assert dm.augment["num_repeats"] == expect["repeats"]
    norm = next(t for t in dm.eval_transform.transforms if type(t).__name__ == "Normalize")
    assert norm.mean[0] == pytest.approx(expect["mean"])
    if experiment.startswith("wortsman"):  # inputs in [-1, 1]; 99% of the images trained on
        assert norm.std[0] == pytest.approx(0.5) and dm.holdout == 0.01


def test_synthetic_data_says_once_that_it_ignores_the_recipe(caplog, datamodule):
    with caplog.at_level("INFO", logger="vitstem"):
        datamodule(["experiment=xiao_c_4gf", "model.img_size=32"])
        datamodule([])
    lines = [r.message for r in caplog.records if "not applied" in r.message]
    assert len(lines) == 1 and "auto_augment=v0" in lines[0] and "data=imagenet" in lines[0]


def test_holdout_keeps_a_fixed_share_out_of_training(datamodule):
    dm = datamodule(["data.train_size=200", "data.holdout=0.25", "seed=3", "model.img_size=16"])
    dm.setup("fit")
    kept = dm.trained_set.indices
    assert len(kept) == 150 and len(set(kept)) == 150 and dm.trained_set is dm.trained_set
    again = datamodule(["data.train_size=200", "data.holdout=0.25", "seed=7", "model.img_size=16"])
    again.setup("fit")
    assert again.trained_set.indices == kept  # the same held-out images whatever the run's seed
    batches = sum(len(x) for x, _ in dm.train_dataloader())
    assert batches == 150 // 128 * 128
