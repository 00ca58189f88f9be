"""Checkpoints: pickled code is refused unrun, foreign files cannot resume, ``init_from`` loads what fits."""
import json

import pytest
import timm
import torch

from tests.helpers import TINY, run_app, train
from vitstem.config import ConfigError
from vitstem.models.classifier import create_model
from vitstem.runs.restore import check_resumable, init_weights, load_checkpoint

TINY_MODEL = dict(name="vit_p_32", depth=1, embed_dim=32, num_heads=2)  # the model of TINY, 10 classes at 16 px


class Payload:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def timm_state_dict(path, num_classes):
    model = timm.create_model("vit_p_32", depth=1, embed_dim=32, num_heads=2, img_size=16, num_classes=num_classes)
    torch.save(model.state_dict(), path)
    return model.state_dict()


def test_pickled_code_is_refused_and_never_run(tmp_path):
    marker, path = tmp_path / "marker", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": Payload(marker)}, path)
    with pytest.raises(ConfigError, match=r"evil.ckpt needs the pickled object io.open besides tensors, so it was not "
                                          r"loaded: .* re-save its tensors"):
        load_checkpoint(path)
    for key in ("ckpt_path", "init_from"):
        with pytest.raises(ConfigError, match="needs the pickled object io.open"):
            train(TINY + [f"{key}={path}"], tmp_path / key)
        assert json.loads((tmp_path / key / "results.json").read_text())["status"] == "failed"
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: an unsafe load does run the payload
    assert marker.exists()


def test_unreadable_and_missing_files_name_the_file(tmp_path):
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=r"junk.ckpt cannot be read by torch.load \(UnpicklingError: Unsupported "
                                          r"operand 110\): is it a complete"):
        load_checkpoint(tmp_path / "junk.ckpt")
    with pytest.raises(ConfigError, match=r"nope.ckpt does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    torch.save([torch.zeros(1)], tmp_path / "list.ckpt")
    with pytest.raises(ConfigError, match=r"holds a list, not a dict of tensors"):
        load_checkpoint(tmp_path / "list.ckpt")


@pytest.mark.e2e
def test_a_timm_state_dict_cannot_resume_one_line_error(tmp_path):
    timm_state_dict(tmp_path / "timm.pth", 10)
    proc = run_app(*TINY, f"ckpt_path={tmp_path / 'timm.pth'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("vitstem-train: configuration error: ckpt_path=")
    assert "timm.pth is not a vitstem checkpoint" in last
    assert "lacks pytorch-lightning_version, state_dict, optimizer_states" in last and "use init_from=" in last
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed" and results["steps"] == 0


@pytest.mark.e2e
def test_another_projects_lightning_checkpoint_cannot_resume(tiny_run, tmp_path):
    checkpoint = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)
    check_resumable(tiny_run / "checkpoints" / "last.ckpt")  # vitstem's own resumes
    checkpoint["hyper_parameters"] = {"lr": 0.1, "backbone": "resnet50"}
    torch.save(checkpoint, tmp_path / "other.ckpt")
    with pytest.raises(ConfigError, match=r"lacks hyper_parameters\['model'\] \(it was not written by vitstem-train\)"):
        check_resumable(tmp_path / "other.ckpt")
    del checkpoint["loops"], checkpoint["optimizer_states"]
    torch.save(checkpoint, tmp_path / "other.ckpt")
    with pytest.raises(ConfigError, match=r"lacks optimizer_states, loops; to start a new run .* init_from="):
        check_resumable(tmp_path / "other.ckpt")


@pytest.mark.e2e
def test_init_from_a_timm_state_dict_with_another_head(tmp_path):
    """5 classes in the file, 10 in the model: the head is skipped and reported, every other tensor loads."""
    saved = timm_state_dict(tmp_path / "timm5.pth", num_classes=5)
    model = create_model(TINY_MODEL, num_classes=10, img_size=16)
    fresh = model.head.weight.clone()
    report = init_weights(model, tmp_path / "timm5.pth")
    assert report["shape_mismatch"] == {"head.weight": {"checkpoint": [5, 32], "model": [10, 32]},
                                        "head.bias": {"checkpoint": [5], "model": [10]}}
    assert report["missing"] == [] and report["unexpected"] == []
    assert len(report["matched"]) == len(saved) - 2 and "blocks.0.attn.qkv.weight" in report["matched"]
    assert torch.equal(model.blocks[0].attn.qkv.weight, saved["blocks.0.attn.qkv.weight"])
    assert torch.equal(model.patch_embed.proj.weight, saved["patch_embed.proj.weight"])
    assert torch.equal(model.head.weight, fresh)  # skipped: keeps its own init
    results = train(TINY + [f"init_from={tmp_path / 'timm5.pth'}"], tmp_path / "run")  # the same through the app
    assert results["status"] == "finished"
    written = json.loads((tmp_path / "run" / "init_from.json").read_text())
    assert written["shape_mismatch"] == report["shape_mismatch"] and written["matched"] == report["matched"]


@pytest.mark.parametrize("wrap", ["model", "state_dict"])
def test_init_from_a_dict_holding_the_weights(tmp_path, wrap):
    saved = timm_state_dict(tmp_path / "plain.pth", num_classes=10)
    torch.save({wrap: saved, "epoch": 3}, tmp_path / "wrapped.pth")
    model = create_model(TINY_MODEL, num_classes=10, img_size=16)
    report = init_weights(model, tmp_path / "wrapped.pth")
    assert report["matched"] == list(saved) and not report["shape_mismatch"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


@pytest.mark.e2e
def test_init_from_a_vitstem_run(tiny_run, tmp_path):
    path = tiny_run / "checkpoints" / "last.ckpt"
    state = torch.load(path, weights_only=True)["state_dict"]
    model = create_model(TINY_MODEL, num_classes=10, img_size=16)
    report = init_weights(model, path)
    assert report["matched"] == list(model.state_dict()) and not (report["missing"] or report["unexpected"])
    assert all(torch.equal(v, state[f"model.{k}"]) for k, v in model.state_dict().items())
    results = train(TINY + [f"init_from={path}"], tmp_path)
    assert results["status"] == "finished" and results["steps"] == 2  # a new run: steps count from 0
    assert len(json.loads((tmp_path / "init_from.json").read_text())["matched"]) == len(state)


def test_init_from_refuses_a_checkpoint_of_another_model(tmp_path):
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match=r"none of its 1 tensors fits the model .*\['fc.weight'\]"):
        init_weights(create_model(TINY_MODEL, num_classes=10, img_size=16), tmp_path / "other.pth")


def test_resume_and_init_from_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="ckpt_path=a.ckpt and init_from=b.ckpt are both set"):
        train(TINY + ["ckpt_path=a.ckpt", "init_from=b.ckpt"], tmp_path)
