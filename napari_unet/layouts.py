"""The input-layout rule: which axis of a user's array is channels or colour, whether it is RGB,
whether a 3D array is a volume or a stack of 2D images, and the channel-first view the engine
wants. Every face asks this module (the reader, the TIF writer, the widgets, training and
prediction), so an array is read the same way wherever it enters.

numpy only: the reader and the widgets use it without torch.

The rule, in order:
- hints first: tifffile's axes letters ('C' channels, 'S' samples = colour, 'Z'/'T'/'I' a stack
  or depth, 'Q' unknown), napari's rgb flag, the channel group's (C, ...) order;
- then the shape: a last axis of at most 4 is colour or modalities (no image is 4 pixels
  wide); else a first axis of at most MAX_CHANNELS is channels. Under a 2D model a last axis
  of 3 or 4 is RGB(A) and the alpha is dropped.
- a 3D array under a 2D model is a stack of 2D images where one is allowed (prediction, a
  training set held in memory): (Z, Y, X) unless its first axis is the model's channels;
  (Z, C, Y, X) when its second axis is; a channel group's (C, Z, Y, X) by its hint.
- without a model, a 3D layer is a volume (not a stack of unrelated 2D images) when it is at
  least 16 deep and not much thinner than wide: :func:`looks_like_volume`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .choices import MAX_CHANNELS
from .errors import ConfigError, DataError

COLOUR = (3, 4)  # RGB, RGBA
LUMINANCE = np.array([0.2125, 0.7154, 0.0721], np.float32)
MAX_LAST_CHANNELS = 4  # a last axis this short is colour or modalities, never pixels
VOLUME_DEPTH = 16  # a layer at least this deep (and not too thin) is a volume
SPATIAL_LETTERS = "ZYX"


# -- without a model: the napari layers and the files ------------------------------------------
def looks_like_volume(shape) -> bool:
    """A 3D layer that is a volume rather than a stack of unrelated 2D images: at least 16
    deep, and its depth at least a quarter of its smaller side."""
    if len(shape) != 3:
        return False
    depth, height, width = shape
    return depth >= VOLUME_DEPTH and depth * 4 >= min(height, width)


def guess_spatial_dims(shape) -> int:
    """3 for a layer that looks like a volume, else 2 (a picture, or a stack of them)."""
    return 3 if looks_like_volume(shape) else 2


def writes_as_rgb(shape, dtype) -> bool:
    """An array that a TIF stores as an RGB(A) picture: 8-bit (Y, X, 3|4)."""
    return np.dtype(dtype) == np.uint8 and len(shape) == 3 and shape[-1] in COLOUR


def file_channels(axes: str, shape) -> tuple[bool, int | None]:
    """(rgb, channel axis) of a TIF from tifffile's axes letters and shape: RGB(A) when the
    last axis is samples ('S') of 3 or 4; the axis marked 'C' (2..MAX_CHANNELS of them); a 4D
    file without axis names is (C, Z, Y, X). (False, None): one grey image."""
    shape = tuple(shape)
    if axes.endswith("S") and shape[-1] in COLOUR:
        return True, None
    if "C" in axes:
        index = axes.index("C")
        return False, index if 1 < shape[index] <= MAX_CHANNELS and len(shape) >= 3 else None
    if len(shape) == 4 and set(axes) <= {"Q", "Y", "X"} and 1 < shape[0] <= MAX_CHANNELS:
        return False, 0
    return False, None


def layer_axes(ndim: int, rgb: bool = False, channels_first: bool = False) -> str:
    """The axes letters of a napari layer's data: spatial axes, a last colour axis ('S') for
    an RGB layer, a first channel axis ('C') for a channel group's stacked channels."""
    spatial = ndim - (rgb or channels_first)
    letters = SPATIAL_LETTERS[-spatial:] if 0 < spatial <= 3 else "Q" * max(spatial, 0)
    return ("C" if channels_first else "") + letters + ("S" if rgb else "")


def channels_of(shape, axes: str) -> int:
    """The channels an array of named axes gives a model: its 'C' axis, 3 for colour ('S' of
    3 or 4: the alpha is dropped), else 1."""
    for n, letter in zip(shape, axes):
        if letter == "C" or (letter == "S" and n not in COLOUR):
            return int(n)
        if letter == "S":
            return 3
    return 1


def spatial_shape(shape, axes: str) -> tuple:
    """The pixel grid: `shape` without its channel ('C') or colour ('S') axis."""
    return tuple(n for n, letter in zip(shape, axes) if letter not in "CS")


# -- under a model: the interpretation -----------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """How an array of `shape` is read by a model of `spatial_dims`: its channel (or colour)
    axis, its stack axis (a 2D model over a stack of 2D images), whether it is RGB(A)."""

    shape: tuple
    spatial_dims: int
    channel_axis: int | None = None  # None: one channel, added in front
    stack_axis: int | None = None  # None: one image or one volume
    rgb: bool = False  # the channel axis is colour: the last, of 3 or 4 (alpha is dropped)
    gray: bool = False  # colour seen by a one-channel model: its luminance (built-in models)

    @property
    def kind(self) -> str:
        """'image' (2D), 'volume' (3D) or 'stack' (of 2D images)."""
        if self.stack_axis is not None:
            return "stack"
        return "volume" if self.spatial_dims == 3 else "image"

    @property
    def channels(self) -> int:
        """The channels the model sees (RGBA: 3)."""
        if self.channel_axis is None or self.gray:
            return 1
        return 3 if self.rgb else self.shape[self.channel_axis]

    @property
    def spatial_shape(self) -> tuple:
        """The pixel grid: the shape without the channel axis (a stack keeps its depth)."""
        return tuple(n for axis, n in enumerate(self.shape) if axis != self.channel_axis)

    @property
    def channel_first_shape(self) -> tuple:
        """(C, Y, X), (C, Z, Y, X), or for a stack (C, Z, Y, X): the engine's view."""
        return (self.channels, *self.spatial_shape)

    def channel_first(self, array) -> np.ndarray:
        """The engine's channel-first view of `array` (a view: memory maps stay lazy)."""
        if self.channel_axis is None:
            return array[None]
        if self.rgb and array.shape[-1] == 4:
            array = array[..., :3]  # RGBA: the alpha channel is not signal
        if self.gray:  # a copy: ITU-R 709 luminance, as scikit-image's rgb2gray
            return np.tensordot(np.asarray(array, np.float32), LUMINANCE, axes=([-1], [0]))[None]
        return np.moveaxis(array, self.channel_axis, 0)

    def stack_first(self, array):
        """`array` with the stack axis first, each page one 2D image in its own layout (a
        channel group's (C, Z, Y, X) -> (Z, C, Y, X)); `array` itself when that is so already."""
        if self.stack_axis in (None, 0):
            return array
        return np.moveaxis(array, self.stack_axis, 0)


def interpret(shape, spatial_dims: int, in_channels: int | None = None, *, axes: str | None = None,
              rgb: bool | None = None, stack: bool = False, depth: int | None = None,
              luminance: bool = False) -> Layout:
    """The :class:`Layout` of an array of `shape` for a model of `spatial_dims` (and
    `in_channels`, checked when given), or a one-line DataError that says what to do.

    `axes`: tifffile letters, or :func:`layer_axes` of a layer; `rgb`: napari's flag;
    `stack`: a 2D model may take a stack of 2D images (prediction, a training set in memory);
    `depth`: a stack's known depth (its mask's), which tells the stack axis."""
    shape = tuple(int(n) for n in shape)
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, not {spatial_dims!r}")
    if rgb:
        axes = layer_axes(len(shape), rgb=True)
    layout = _from_axes(shape, spatial_dims, axes, stack) if _is_hint(axes, shape) else None
    if layout is None:
        layout = _from_shape(shape, spatial_dims, in_channels, stack, depth)
    if luminance and in_channels == 1 and layout.rgb:  # a model that reads colour so
        layout = replace(layout, gray=True)
    if in_channels is not None and layout.channels != in_channels:
        raise DataError(f"the image has {layout.channels} channel(s) but the model expects "
                        f"{in_channels}: give an image like the training images")
    return layout


def _is_hint(axes, shape) -> bool:
    """Axes letters that say something: one per axis, and not all unknown ('Q')."""
    return bool(axes) and len(axes) == len(shape) and set(axes) - {"Q", "Y", "X"} != set()


def _from_axes(shape, spatial_dims, axes, stack) -> Layout | None:
    """The layout the axes letters name; None when they leave it open (unknown letters)."""
    channel = next((i for i, a in enumerate(axes) if a in "CS"), None)
    rgb = channel == len(shape) - 1 and axes[channel] == "S" and shape[-1] in COLOUR \
        and spatial_dims == 2
    others = [i for i in range(len(shape)) if i != channel]
    if "Q" in axes or len([a for a in axes if a in "CS"]) > 1:
        return None
    if len(others) == spatial_dims:
        return _checked(Layout(shape, spatial_dims, channel, None, rgb))
    if spatial_dims == 2 and len(others) == 3 and stack:
        return _checked(Layout(shape, 2, channel, others[0], rgb))
    raise _wrong_dims(shape, spatial_dims, axes)


def _from_shape(shape, spatial_dims, in_channels, stack, depth) -> Layout:
    ndim = len(shape)
    if spatial_dims == 2 and stack and ndim in (3, 4):
        layout = _stack_from_shape(shape, in_channels, depth)
        if layout is not None:
            return layout
    if ndim == spatial_dims:
        return Layout(shape, spatial_dims)
    if ndim == spatial_dims + 1:
        if shape[-1] <= MAX_LAST_CHANNELS < shape[0]:
            rgb = spatial_dims == 2 and shape[-1] in COLOUR
            return Layout(shape, spatial_dims, ndim - 1, None, rgb)
        if shape[0] <= MAX_CHANNELS:
            return Layout(shape, spatial_dims, 0)
        raise _too_many_channels(shape, spatial_dims)
    raise _wrong_dims(shape, spatial_dims)


def _stack_from_shape(shape, in_channels, depth) -> Layout | None:
    """A stack of 2D images under a 2D model, from the shape alone (None: not a stack)."""
    if depth is not None:  # the mask's depth tells the stack axis; each page by the 2D rule
        if shape[0] == depth:  # (Z, Y, X), (Z, C, Y, X), (Z, Y, X, C)
            return _stack_of(shape, 0)
        if len(shape) == 4 and shape[1] == depth:  # (C, Z, Y, X)
            return _stack_of(shape, 1)
        return None
    if len(shape) == 3 and shape[-1] not in COLOUR and shape[0] != in_channels:
        return Layout(shape, 2, None, 0)  # (Z, Y, X): each page one 2D image
    if len(shape) == 4 and in_channels is not None and shape[1] == in_channels:
        return Layout(shape, 2, 1, 0)  # (Z, C, Y, X)
    return None


def _stack_of(shape, stack_axis) -> Layout:
    """A stack along `stack_axis` whose pages are read by the 2D rule."""
    page = _from_shape(shape[:stack_axis] + shape[stack_axis + 1:], 2, None, False, None)
    channel = page.channel_axis
    if channel is not None and channel >= stack_axis:
        channel += 1
    return Layout(shape, 2, channel, stack_axis, page.rgb)


def _checked(layout: Layout) -> Layout:
    if layout.channel_axis is not None and layout.channels > MAX_CHANNELS:
        raise _too_many_channels(layout.shape, layout.spatial_dims, layout.channels)
    return layout


def _too_many_channels(shape, spatial_dims, channels=None) -> DataError:
    channels = shape[0] if channels is None else channels
    hint = "if it is a volume, train it with --set spatial_dims=3" if spatial_dims == 2 else \
        "split the extra axis (time, positions) into one file each"
    return DataError(f"an image of shape {shape} has {channels} channels, more than "
                     f"{MAX_CHANNELS}: expected {_expected(spatial_dims)} with C <= "
                     f"{MAX_CHANNELS}; {hint}")


def _wrong_dims(shape, spatial_dims, axes=None) -> DataError:
    named = f" (axes {axes})" if axes else ""
    if len(shape) < spatial_dims:
        hint = "if it is a 2D image, train it with --set spatial_dims=2"
    elif spatial_dims == 2 and len(shape) == 4:
        hint = "if it is a volume with channels, train it with --set spatial_dims=3"
    else:
        hint = f"split the extra axes first (spatial_dims={spatial_dims} takes {spatial_dims}D)"
    return DataError(f"an image of shape {shape}{named} is not a {spatial_dims}D image: "
                     f"expected {_expected(spatial_dims)}; {hint}")


def _expected(spatial_dims) -> str:
    return "(Y, X), (Y, X, RGB) or (C, Y, X)" if spatial_dims == 2 else \
        "(Z, Y, X), (C, Z, Y, X) or (Z, Y, X, C)"


# -- the engine's view ----------------------------------------------------------------------------
def channel_first(image, spatial_dims: int, in_channels: int | None = None, **hints) -> np.ndarray:
    """The engine's channel-first view of a user's image by the rule (:func:`interpret`; the
    keywords are its hints): (C, Y, X), (C, Z, Y, X), or a stack's (C, Z, Y, X). Signed,
    16-bit and float images are kept as they are (normalisation comes later); bool -> uint8."""
    image = image if hasattr(image, "ndim") and hasattr(image, "dtype") else np.asarray(image)
    if image.dtype == bool:
        image = np.asarray(image).astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise DataError(f"images of type {image.dtype} are not supported: use integers or floats")
    return interpret(image.shape, spatial_dims, in_channels, **hints).channel_first(image)
