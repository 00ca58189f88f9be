"""vitstem's model zoo: stems, attention, the ViT and the registered timm models (see :mod:`vitstem.models.zoo`)."""
from vitstem.models.attention import PointwiseAttention, ViTAttention
from vitstem.models.stems import ConvStem
from vitstem.models.vit import ViT
from vitstem.models.zoo import MODEL_NAMES, build_vit, model_config

__all__ = ["ConvStem", "PointwiseAttention", "ViT", "ViTAttention", "MODEL_NAMES", "build_vit", "model_config"]
