"""vitstem's model zoo: stems, attention and the registered timm models (see :mod:`vitstem.models.zoo`)."""
from vitstem.models.attention import ViTAttention
from vitstem.models.stems import ConvStem
from vitstem.models.zoo import MODEL_NAMES, build_vit, model_config

__all__ = ["ConvStem", "ViTAttention", "MODEL_NAMES", "build_vit", "model_config"]
