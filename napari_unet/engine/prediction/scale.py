"""Objects of another size than the model's (Cellpose's diameter): a model that knows the size
of its training objects (``data_info["object_diameter"]``, the built-in models) predicts an
image at the scale that brings the image's objects to that size, and its probabilities back.

The image's object size is given (``diameter``, pixels) or measured: a first pass over the
middle of the image, its objects' median equivalent diameter. Objects within MATCH of the
model's size are predicted as they are (no second pass).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from ...errors import ConfigError

MATCH = 2.0
SCALES = (0.25, 4.0)
PREVIEW = 512  # the measuring pass sees at most this much of the image per axis (Z: 32)
PREVIEW_DEPTH = 32


def trained_diameter(checkpoint) -> float | None:
    value = checkpoint.data_info.get("object_diameter")
    return float(value) if value else None


def check_diameter(diameter):
    """None/'auto' (measure where the model knows its size), 'off', or pixels > 0."""
    if diameter in (None, "auto", "off"):
        return diameter
    try:
        value = float(diameter)
    except (TypeError, ValueError):
        value = -1.0
    if not value > 0 or not math.isfinite(value):
        raise ConfigError(f"--diameter {diameter}: give the objects' diameter in pixels (e.g. "
                          f"30), auto (measured) or off (the image's own scale)")
    return value


def preview(image: np.ndarray) -> np.ndarray:
    """The middle of a channel-first image, at most PREVIEW pixels per in-plane axis."""
    region = [slice(None)]
    for axis, size in enumerate(image.shape[1:]):
        want = PREVIEW_DEPTH if image.ndim == 4 and axis == 0 else PREVIEW
        start = max(0, (size - want) // 2)
        region.append(slice(start, start + want))
    return np.asarray(image[tuple(region)])


def median_diameter(objects: np.ndarray) -> float | None:
    """Equivalent diameter of the median object by area across the image plane (a volume's:
    each object's widest slice); None without objects."""
    objects = np.asarray(objects)
    if objects.ndim == 2:
        areas = np.bincount(objects.ravel())[1:]
    else:
        per_slice = [np.bincount(plane.ravel(), minlength=int(objects.max()) + 1)[1:]
                     for plane in objects]
        areas = np.max(per_slice, axis=0)
    areas = np.sort(areas[areas > 0])
    if areas.size == 0:
        return None
    # weighted by area: the object the median foreground pixel lies in (specks weigh nothing)
    middle = areas[np.searchsorted(np.cumsum(areas), areas.sum() / 2)]
    return float(2 * np.sqrt(middle / np.pi))


def objects_of(labels, objects) -> np.ndarray:
    return objects if objects is not None else ndimage.label(np.asarray(labels) > 0)[0]


def scale_for(measured: float | None, trained: float, given: bool) -> tuple[float, str]:
    """(scale, the line that says why): >1 enlarges the image."""
    if measured is None:
        return 1.0, (f"no objects found to measure their size: predicting at the image's "
                     f"scale (give --diameter if the objects are not about {trained:.0f} px)")
    how = "given" if given else "measured"
    if not given and trained / MATCH <= measured <= trained * MATCH:
        return 1.0, (f"objects {how} at {measured:.0f} px, the model's are {trained:.0f} px: "
                     f"predicting at the image's scale")
    scale = min(max(trained / measured, SCALES[0]), SCALES[1])
    return scale, (f"objects {how} at {measured:.0f} px, the model's are {trained:.0f} px: "
                   f"predicting at scale {scale:.2f} (--diameter D to set it)")


def resized(image: np.ndarray, scale: float) -> np.ndarray:
    """A float32 channel-first image scaled by `scale` across the image plane (Y, X)."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    size = [*x.shape[2:-2], *(max(1, round(n * scale)) for n in x.shape[-2:])]
    mode = "area" if scale < 1 else ("bilinear" if x.ndim == 4 else "trilinear")
    kwargs = {} if mode == "area" else dict(align_corners=False)
    return torch.nn.functional.interpolate(x, size=size, mode=mode, **kwargs)[0].numpy()


def back_to(probabilities, shape) -> np.ndarray:
    """Probabilities ((*s) or (K, *s)) of the scaled image at the image's `shape`."""
    probs = torch.from_numpy(np.ascontiguousarray(probabilities, dtype=np.float32))
    one = probs.ndim == len(shape)
    probs = probs[None] if one else probs
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    full = torch.nn.functional.interpolate(probs[None], size=tuple(shape), mode=mode,
                                           align_corners=False)[0]
    return (full[0] if one else full).numpy()
