"""vitstem: experiments on why Vision Transformers are hard to train (stems, attention, recipes).

Importing vitstem registers its models with timm: ``timm.create_model("vit_c_4gf")``.
"""
from vitstem import resolvers  # noqa: F401  (registers the config resolvers; before the models: light)
from vitstem import models  # noqa: F401  (registers the model zoo with timm)

__version__ = "0.1.0"
