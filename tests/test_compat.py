"""The private APIs vitstem relies on (vitstem/_compat.py) are where we use them in the installed libraries, and the
code uses no private API that the list does not name."""
import re
from pathlib import Path

import pytest

from vitstem._compat import LISTED_NAMES, PRIVATE, Private, problem

ROOT = Path(__file__).resolve().parents[1]
# not another library's private API: Hydra's config keys, a documented standard-library module
NOT_PRIVATE = {"_target_", "_convert_", "_partial_", "_recursive_", "_args_", "_thread",
               "_vitstem_wrapped"}  # our own mark on Lightning's loop (vitstem/runs/checkpoint.py)


@pytest.mark.parametrize("entry", PRIVATE, ids=lambda p: p.path.split(":")[1])
def test_each_private_api_we_use_is_still_there(entry):
    assert problem(entry) is None, problem(entry)


def test_a_moved_api_fails_naming_the_library_its_version_and_our_use():
    from importlib.metadata import version

    gone = Private("lightning", "lightning.pytorch.trainer.trainer:Trainer._no_such_method", "vitstem/x.py", "none")
    assert problem(gone).startswith(f"lightning {version('lightning')}: lightning.pytorch.trainer.trainer:"
                                    "Trainer._no_such_method is gone (AttributeError")
    assert problem(gone).endswith("vitstem uses it in vitstem/x.py")
    unset = Private("hydra-core", "hydra.core.utils:JobReturn", "vitstem/y.py", "none", ("_no_such_field",))
    assert problem(unset) == (f"hydra-core {version('hydra-core')}: hydra.core.utils:JobReturn no longer sets "
                              "_no_such_field; vitstem uses it in vitstem/y.py")


def private_names_used(source: str) -> set[str]:
    """Names with one leading underscore that the code imports, or reads off an object other than self / cls."""
    names = set()
    for line in source.splitlines():
        code = line.split("  #")[0]
        names |= set(re.findall(r"(?<![\w.])(?!self\b|cls\b)\w+(?:\(\))?\.(_[a-zA-Z]\w*)", code))
        names |= {n.strip() for group in re.findall(r"^\s*from\s+[\w.]+\s+import\s+([\w, ]+)", code)
                  for n in group.split(",")}
        names |= {m for m in re.findall(r"^\s*(?:from|import)\s+([\w.]+)", code) for m in m.split(".")}
        names |= set(re.findall(r"[gs]etattr\([^,]+,\s*[\"'](_\w+)", code))
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_every_private_api_in_the_code_is_listed():
    files = [p for p in [*(ROOT / "vitstem").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")]
             if p.name != "_compat.py"]
    ours = set()  # vitstem's own private names
    for p in files:
        text = p.read_text()
        defined = r"(?:def|class)\s+(_\w+)|^(_\w+)\s*[:=]|self\.(_\w+)(?:\s*[:=,]|\)\s*=)"
        ours |= {n for found in re.findall(defined, text, re.M) for n in found if n}
    unlisted = {}
    for p in files:
        for name in private_names_used(p.read_text()) - ours - LISTED_NAMES - NOT_PRIVATE:
            unlisted.setdefault(name, []).append(str(p.relative_to(ROOT)))
    assert unlisted == {}, f"private APIs not in vitstem/_compat.py (add them with the public alternative): {unlisted}"
    assert private_names_used("x = trainer._signal_connector\nfrom a.b import _c, d\nimport e._f\nself._mine = 1") == {
        "_signal_connector", "_c", "_f"}
