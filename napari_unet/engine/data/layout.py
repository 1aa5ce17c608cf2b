"""The engine's two questions to the input-layout rule (:mod:`napari_unet.layouts`, which
owns it): one sample's channel-first view, and a model's input (a sample or a stack of 2D
images) checked against the model's channels."""
from __future__ import annotations

import numpy as np

from ...layouts import channel_first


def as_channel_first(image, spatial_dims: int) -> np.ndarray:
    """One sample as (C, Y, X) or (C, Z, Y, X), a view where possible.

    2D: (Y, X) -> (1, Y, X); (Y, X, 3|4) RGB(A) -> (3, Y, X), alpha dropped; (C, Y, X) with
    C <= 16 kept. 3D: (Z, Y, X) -> (1, Z, Y, X); (C, Z, Y, X) kept; (Z, Y, X, C <= 4) moved.
    """
    return channel_first(np.asarray(image), spatial_dims)


def prepare_image(image, spatial_dims: int, in_channels: int, axes: str | None = None,
                  luminance: bool = False):
    """A channel-first view of a user's image for a model of `spatial_dims` and `in_channels`
    (a 2D model also takes a stack: (Z, Y, X), (Z, C, Y, X), or by `axes` a (C, Z, Y, X)
    channel group), or a clear error. `luminance`: a one-channel model that reads a colour
    image by its luminance (data_info["colour"] == "luminance": the built-in models)."""
    image = np.asarray(image) if not hasattr(image, "ndim") else image
    return channel_first(image, spatial_dims, in_channels, axes=axes, stack=True,
                         luminance=luminance)
