"""Modules that moved into their packages keep their old import paths and config ``_target_``s, with a warning that
names the new spelling."""
import importlib
import sys

import hydra.utils
import pytest

import vitstem


@pytest.mark.parametrize("old", sorted(vitstem.MOVED))
def test_an_old_module_path_imports_the_new_module_and_names_it(old):
    sys.modules.pop(old, None)
    with pytest.warns(FutureWarning, match=f"{old} is now {vitstem.MOVED[old]}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(vitstem.MOVED[old])


def test_the_old_callbacks_targets_still_instantiate():
    with pytest.warns(FutureWarning, match="vitstem.callbacks.PreciseBN is now vitstem.models.precise_bn.PreciseBN"):
        bn = hydra.utils.instantiate({"_target_": "vitstem.callbacks.PreciseBN", "num_images": 8})
    assert type(bn).__module__ == "vitstem.models.precise_bn" and bn.num_images == 8
    with pytest.warns(FutureWarning, match="vitstem.runs.progress.ProgressBar"):
        assert hydra.utils.get_class("vitstem.callbacks.ProgressBar").__module__ == "vitstem.runs.progress"
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        importlib.import_module("vitstem.callbacks").Nothing
