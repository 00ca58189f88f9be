"""vitstem: experiments on why Vision Transformers are hard to train (stems, attention, recipes).

Importing vitstem registers its models with timm, ``timm.create_model("vit_c_4gf")``, as soon as timm is
imported (before or after vitstem): timm takes seconds to import, so ``import vitstem`` alone does not import
it, and the command-line tools answer ``--help`` or a configuration error at once. When Lightning is imported,
:func:`vitstem.console.quiet_lightning` leaves its messages to the app's logging (each printed once).
"""
import importlib.util
import sys
from importlib.abc import MetaPathFinder

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


for _module, _then in (("timm", _register_models), ("lightning", _quiet_lightning)):
    if _module in sys.modules:
        _then()
    elif not any(isinstance(f, _AfterImport) and f.name == _module for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(_module, _then))
