"""vitstem: experiments on why Vision Transformers are hard to train (stems, attention, recipes).

Importing vitstem registers its models with timm, ``timm.create_model("vit_c_4gf")``, as soon as timm is
imported (before or after vitstem): timm takes seconds to import, so ``import vitstem`` alone does not import
it, and the command-line tools answer ``--help`` or a configuration error at once.
"""
import importlib.util
import sys
from importlib.abc import MetaPathFinder

from vitstem import resolvers  # noqa: F401  (registers the config resolvers: light)

__version__ = "0.1.0"


def _register_models() -> None:
    import vitstem.models  # noqa: F401  (registers the model zoo with timm)


class _RegisterAfterTimm(MetaPathFinder):
    """A one-shot import hook: when ``timm`` is first imported, run its module, then register the zoo."""

    def find_spec(self, name, path, target=None):
        if name != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run_timm = spec.loader.exec_module

        def exec_module(module):
            run_timm(module)
            _register_models()

        spec.loader.exec_module = exec_module
        return spec


if "timm" in sys.modules:
    _register_models()
elif not any(isinstance(f, _RegisterAfterTimm) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTimm())
