"""vitstem: experiments on why Vision Transformers are hard to train (stems, attention, recipes).

Importing vitstem registers its models with timm, ``timm.create_model("vit_c_4gf")``, as soon as timm is
imported (before or after vitstem): timm takes seconds to import, so ``import vitstem`` alone does not import
it, and the command-line tools answer ``--help`` or a configuration error at once. When Lightning is imported,
:func:`vitstem.console.quiet_lightning` leaves its messages to the app's logging (each printed once).
"""
import functools
import importlib
import importlib.util
import sys
import warnings
from importlib.abc import Loader, MetaPathFinder

from vitstem import resolvers  # noqa: F401  (registers the config resolvers: light)

__version__ = "0.1.0"


def _register_models() -> None:
    import vitstem.models  # noqa: F401  (registers the model zoo with timm)


def _quiet_lightning() -> None:
    from vitstem.console import quiet_lightning

    quiet_lightning()


class _AfterImport(MetaPathFinder):
    """A one-shot import hook: when module ``name`` is first imported, run it, then ``then()`` (timm: register the
    zoo; lightning: :func:`_quiet_lightning`)."""

    def __init__(self, name: str = "timm", then=_register_models):
        self.name, self.then = name, then

    def find_spec(self, name, path, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            self.then()

        spec.loader.exec_module = exec_module
        return spec


# Modules that moved into the package that owns them: the old spelling (a user's config ``_target_``, a script's
# import) keeps working, with a warning that names the new one.
MOVED = {
    "vitstem.module": "vitstem.models.classifier",
    "vitstem.loss": "vitstem.models.loss",
    "vitstem.loggers": "vitstem.runs.loggers",
    "vitstem.checkpoints": "vitstem.runs.restore",
}
MOVED_NAMES = {  # vitstem.callbacks held two callbacks that now live apart
    "vitstem.callbacks": {"PreciseBN": "vitstem.models.precise_bn", "ProgressBar": "vitstem.runs.progress"},
}


class _Moved(MetaPathFinder, Loader):
    """Imports a module of :data:`MOVED` / :data:`MOVED_NAMES` under its old name."""

    def find_spec(self, name, path, target=None):
        if name not in MOVED and name not in MOVED_NAMES:
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        if spec.name in MOVED:
            warnings.warn(f"{spec.name} is now {MOVED[spec.name]}: import it from there", FutureWarning, stacklevel=2)
            return importlib.import_module(MOVED[spec.name])
        return None  # a plain module, filled by exec_module

    def exec_module(self, module):
        if module.__name__ in MOVED_NAMES:
            module.__getattr__ = functools.partial(_moved_name, module.__name__)


def _moved_name(old: str, attr: str):
    home = MOVED_NAMES[old].get(attr)
    if home is None:
        raise AttributeError(f"module {old!r} has no attribute {attr!r}")
    warnings.warn(f"{old}.{attr} is now {home}.{attr}: import it from there", FutureWarning, stacklevel=2)
    return getattr(importlib.import_module(home), attr)


if not any(isinstance(f, _Moved) for f in sys.meta_path):
    sys.meta_path.append(_Moved())

for _module, _then in (("timm", _register_models), ("lightning", _quiet_lightning)):
    if _module in sys.modules:
        _then()
    elif not any(isinstance(f, _AfterImport) and f.name == _module for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(_module, _then))
