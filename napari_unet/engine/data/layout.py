"""The input-layout rule: which axes of a user's array are channels, colour, a stack or a volume.

Every face (training, prediction, the reader, the widgets) asks this module, so an array is read
the same way wherever it enters.
"""
from __future__ import annotations

import numpy as np

from ...choices import MAX_CHANNELS
from ...errors import ConfigError, DataError


def as_channel_first(image, spatial_dims: int) -> np.ndarray:
    """(C, Y, X) or (C, Z, Y, X) from the usual layouts, as a view where possible.

    2D: (Y, X) -> (1, Y, X); (Y, X, 3|4) RGB(A) -> (3, Y, X), alpha dropped; (C, Y, X) with
    C <= 16 kept. 3D: (Z, Y, X) -> (1, Z, Y, X); (C, Z, Y, X) kept; (Z, Y, X, C <= 4) moved.
    Signed, 16-bit and float images are kept as they are; normalisation comes later.
    """
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise DataError(f"images of type {image.dtype} are not supported: use integers or floats")
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, not {spatial_dims!r}")
    if image.ndim == spatial_dims:
        return image[None]
    if image.ndim == spatial_dims + 1:
        # a last axis of at most 4 is colour or modalities: no image is 4 pixels wide
        if image.shape[-1] <= 4 < image.shape[0]:
            if spatial_dims == 2 and image.shape[-1] == 4:
                image = image[..., :3]  # RGBA: the alpha channel is not signal
            return np.moveaxis(image, -1, 0)
        if image.shape[0] <= MAX_CHANNELS:
            return image
    expected = "(Y, X), (Y, X, RGB) or (C, Y, X)" if spatial_dims == 2 else "(C, Z, Y, X)"
    other = "a volume" if spatial_dims == 2 else "a 2D image"
    raise DataError(
        f"an image of shape {image.shape} is not a {spatial_dims}D image: expected {expected} "
        f"with C <= {MAX_CHANNELS}; pass spatial_dims={5 - spatial_dims} if it is {other}"
    )


def prepare_image(image, spatial_dims: int, in_channels: int) -> np.ndarray:
    """A channel-first view of a user's image for a model of `spatial_dims` and `in_channels`,
    or a clear error."""
    image = np.asarray(image) if not hasattr(image, "ndim") else image
    # a 2D model over a (Z, Y, X) stack: each page is one 2D image
    if spatial_dims == 2 and image.ndim == 3 and image.shape[-1] not in (3, 4) \
            and image.shape[0] != in_channels:
        return image[None]
    if spatial_dims == 2 and image.ndim == 4 and image.shape[1] == in_channels:
        return np.moveaxis(image, 1, 0) if in_channels > 1 else image[:, 0][None]
    prepared = as_channel_first(image, spatial_dims)
    if prepared.shape[0] != in_channels:
        raise DataError(f"the image has {prepared.shape[0]} channel(s) but the model expects "
                        f"{in_channels}: give an image like the training images")
    return prepared
