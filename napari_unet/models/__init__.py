"""The networks, and the one registry that lists them.

``build_model("tiny_unet", base_channels=16)`` builds a model; ``build_model(h["name"], **rest)``
(or ``build_model(**model.hparams)``) rebuilds one from its ``hparams``.
"""
from __future__ import annotations

import inspect

from torch import nn

from ..errors import ConfigError
from .tiny_unet import TinyUNet
from .unet import UNet
from .unet3d import UNet3D

MODELS: dict[str, type[nn.Module]] = {
    "unet": UNet,
    "tiny_unet": TinyUNet,
    "unet3d": UNet3D,
}

__all__ = ["MODELS", "TinyUNet", "UNet", "UNet3D", "available_models", "build_model",
           "model_options"]


def available_models() -> list[str]:
    return list(MODELS)


def _model_class(name: str) -> type[nn.Module]:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name]


def model_options(name: str) -> dict:
    """Every option of a model and its default, in constructor order."""
    signature = inspect.signature(_model_class(name).__init__)
    return {p.name: p.default for p in list(signature.parameters.values())[1:]}


def build_model(name: str, **options) -> nn.Module:
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} for model {name!r}: valid options "
                          f"are {', '.join(valid)}")
    return MODELS[name](**options)
