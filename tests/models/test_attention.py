"""Attention: softmax equals timm's Attention; point-wise attention equals its formula."""
import pytest
import torch
from timm.layers import Attention

from vitstem.models.attention import ACTIVATIONS, PointwiseAttention, ViTAttention, attention_layer


def twin(**options):
    torch.manual_seed(0)
    ours = attention_layer(**options)(64, num_heads=4, qkv_bias=True, norm_layer=torch.nn.LayerNorm)
    theirs = Attention(64, num_heads=4, qkv_bias=True)
    theirs.load_state_dict(ours.state_dict(), strict=False)
    return ours.eval(), theirs.eval()


def test_softmax_equals_timm_attention():
    ours, theirs = twin(activation="softmax")
    x = torch.randn(2, 17, 64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.0])
def test_relu_attention_equals_the_formula(alpha):
    """Wortsman et al. 2023: relu(q.k^T / sqrt(d)) / L**alpha @ v, with L = 17 tokens (16 patches + class)."""
    ours, _ = twin(activation="relu", alpha=alpha)
    x = torch.randn(2, 17, 64)
    B, N, C, H = 2, 17, 64, 4
    q, k, v = ours.qkv(x).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    weights = torch.relu(q @ k.transpose(-2, -1) / (C // H) ** 0.5) / N**alpha
    expected = ours.proj((weights @ v).transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_pointwise_activation_runs_and_trains(activation):
    layer = attention_layer(activation=activation, alpha=1.0, gate=True)(32, num_heads=2, qk_norm=True,
                                                                         norm_layer=torch.nn.LayerNorm)
    out = layer(torch.randn(2, 5, 32))
    out.pow(2).mean().backward()
    assert out.shape == (2, 5, 32) and layer.gate.weight.grad is not None
    assert isinstance(layer.q_norm, torch.nn.LayerNorm)


def test_unknown_activation_is_an_error():
    with pytest.raises(ValueError, match="activation='tanh' is not one of"):
        ViTAttention(32, 2, activation="tanh")


@pytest.mark.parametrize("activation", ["softmax", *sorted(ACTIVATIONS)])
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_every_attention_scripts(activation):
    """torch.jit.script: softmax is timm's own forward; a point-wise h is a module."""
    layer = attention_layer(activation=activation, alpha=0.5, gate=True)(32, num_heads=2, qk_norm=True,
                                                                        norm_layer=torch.nn.LayerNorm).eval()
    assert isinstance(layer, ViTAttention) and isinstance(layer, PointwiseAttention) == (activation != "softmax")
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(torch.jit.script(layer)(x), layer(x))
