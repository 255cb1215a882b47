"""Weight initialisation schemes (the reference's ``weights_init``)."""

from __future__ import annotations

from torch import nn

INIT_SCHEMES = ("xavier", "kaiming")


def _init_layer(layer: nn.Module, scheme: str) -> None:
    if scheme == "xavier":
        nn.init.xavier_uniform_(layer.weight)
    else:
        nn.init.kaiming_normal_(layer.weight, a=0.01, nonlinearity="leaky_relu")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def init_weights(model: nn.Module, scheme: str = "xavier") -> nn.Module:
    """Initialise every convolution and transposed convolution of ``model``: ``"xavier"`` (uniform, the
    reference's default) or ``"kaiming"`` (normal, for LeakyReLU); biases to zero.

    A submodule with an ``init_scheme`` attribute (the K11S10 downsampler: Kaiming) keeps its own scheme.
    Attention's ``gamma`` stays 0, so attention blocks start as the identity. Returns ``model``.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown initialisation {scheme!r}; expected one of {list(INIT_SCHEMES)}")

    def visit(module: nn.Module, current: str) -> None:
        current = getattr(module, "init_scheme", current)
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            _init_layer(module, current)
        for child in module.children():
            visit(child, current)

    visit(model, scheme)
    return model
