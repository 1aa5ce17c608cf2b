"""The hooks napari.yaml points to: the reader (TIF, PNG, JPEG, BMP, folders of them), the
TIF writers and the sample data.

They turn files and the synthetic data sets into napari LayerData tuples
``(data, kwargs, layer_type)`` and back. numpy, tifffile and :mod:`napari_unet.io` only:
opening a file never imports torch, Qt or the engine.
"""
from __future__ import annotations

import math
import uuid
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from napari_unet.errors import NapariUnetError
from napari_unet.io import (
    IMAGE_SUFFIXES,
    TIF_SUFFIXES,
    image_files,
    looks_like_labels,
    named_like_labels,
    read_image,
    strided_sample,
    write_tif,
)
from napari_unet.layouts import file_channels

# Files bigger than this stay memory-mapped (napari then reads only the planes it shows);
# smaller ones are read into RAM, where they are faster to browse and Labels are editable.
LAZY_BYTES = 1 << 30
# The metadata key that marks the channel layers of one image (one file, one sample):
# {"id": unique per opening, "name": the image's name, "index": the channel}. The Train and
# Predict widgets offer such a group as one (C, ...) input.
CHANNEL_GROUP = "napari_unet_channels"
# The modalities of a 4-channel BraTS volume, in the order every BraTS distribution we know
# stores them (BraTS 2021 as in ../shared, the Medical Segmentation Decathlon's Task01,
# nnU-Net's Dataset001): FLAIR, T1, T1 with contrast, T2.
BRATS_CHANNELS = ("FLAIR", "T1", "T1c", "T2")
# Display range of an image with a zero background (MRI outside the head, padding): these
# percentiles of the non-zero values, so that a few hot voxels do not make the tissue dark.
CONTRAST_PERCENTILES = (0.5, 99.5)
BACKGROUND_SHARE = 0.1  # at least this share of zeros counts as a background


# ------------------------------------------------------------------------------------ reader
# What the CLI reads, the reader opens: TIF files, PNG/JPEG/BMP files, a folder of them (a
# stack when they share a shape, else a layer per file) and a training folder with images/
# and masks/ (or labels/) beside each other. A file or folder it cannot read is declined
# (None): napari then tries its other readers.
MASK_FOLDERS = ("masks", "labels")  # the training layout's mask folders (the CLI's --data)
DAGM_LABELS = "Label"  # DAGM 2007's folder of NNNN_label.PNG masks


def get_reader(path):
    """The reader for TIF/PNG/JPEG/BMP files and folders of them, else None."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(_is_readable(p) for p in paths):
        return None
    return read_paths


def _is_readable(path) -> bool:
    path = Path(path)
    if path.is_dir():
        return bool(_folder_parts(path))
    return _is_readable_file(path)


def _is_readable_file(path: Path) -> bool:
    if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
        return False
    try:
        _file_layout(path)
    except Exception:  # noqa: BLE001 - any failure means "not for us": let other readers try
        return False
    return True


def _file_layout(path: Path) -> tuple[str, tuple]:
    """The axes letters of the file's metadata ('Q' = unknown; a colour PNG/JPEG: 'YXS') and
    its shape, from the header only."""
    axes, shape, _ = _file_props(path)
    return axes, shape


def _file_props(path: Path) -> tuple[str, tuple, np.dtype]:
    """(axes, shape, dtype) from the file's header (:func:`_file_layout`)."""
    if path.suffix.lower() in TIF_SUFFIXES:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return series.axes, tuple(series.shape), np.dtype(series.dtype)
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty")
    props = iio.improps(path)
    shape = tuple(props.shape)
    colour = len(shape) == 3 and shape[-1] in (3, 4)
    axes = ("Q" * (len(shape) - 1) + "S") if colour else "Q" * len(shape)
    return axes, shape, np.dtype(props.dtype)


def _folder_parts(folder: Path) -> list[tuple[str, list, bool | None]]:
    """(layer name, files, kind) of a folder, as the CLI reads its layouts: images/ beside
    masks/ (or labels/); DAGM's NNNN.PNG beside Label/NNNN_label.PNG (None where an image has
    no defect); else the images directly in it, those named as labels (label, mask, seg) apart
    from the others. kind: True for masks, None to guess (names and values). [] when the
    folder holds no readable image (its files are checked by size, the first by its header:
    opening a folder of thousands reads no more before napari asks for the layers)."""
    images, dagm = folder / "images", folder / DAGM_LABELS
    masks = next((folder / name for name in MASK_FOLDERS if (folder / name).is_dir()), None)
    if images.is_dir() and masks is not None:
        parts = [(f"{folder.name} images", image_files(images), None),
                 (f"{folder.name} {masks.name}", image_files(masks), True)]
    elif dagm.is_dir():
        files = image_files(folder)
        labels = {path.stem.lower(): path for path in image_files(dagm)}
        parts = [(folder.name, files, None),
                 (f"{folder.name} labels", [labels.get(f"{path.stem.lower()}_label")
                                            or labels.get(path.stem.lower()) for path in files],
                  True)]
    else:
        files = image_files(folder)
        named = [path for path in files if named_like_labels(path.stem)]
        parts = [(folder.name, [path for path in files if path not in named], None),
                 (f"{folder.name} labels", named, None)]
    parts = [(name, files, kind) for name, files, kind in parts
             if any(path is not None for path in files)]
    present = [path for _, files, _ in parts for path in files if path is not None]
    if not present or any(path.stat().st_size == 0 for path in present) \
            or not _is_readable_file(present[0]):
        return []
    return parts


def read_paths(path) -> list[tuple]:
    """LayerData of the files and folders napari was asked to open."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    layers = []
    for item in map(Path, paths):
        layers += read_folder(item) if item.is_dir() else read_file(item)
    return layers



def read_folder(folder) -> list[tuple]:
    """One layer per part of the folder (:func:`_folder_parts`): its 2D images stacked when
    their headers give one shape and type (an (N, Y, X[, 3]) stack; a DAGM image without a
    defect gets an empty mask; above LAZY_BYTES a dask stack that reads an image when napari
    shows it), else a layer per file (volumes are never stacked)."""
    layers = []
    for name, files, kind in _folder_parts(Path(folder)):
        present = [path for path in files if path is not None]
        props = {path: _file_props(path) for path in present}
        axes, shape, dtype = props[present[0]]
        flat = len(shape) - axes.endswith("S") == 2
        if len(files) > 1 and flat and len({prop[1:] for prop in props.values()}) == 1:
            # 'I': a sequence of images, not channels
            layers += _layers(_stack(files, shape, dtype), "I" + axes, name, labels=kind)
        else:
            for path in present:
                layers += read_file(path, labels=kind)
    return layers


def _stack(files, shape, dtype):
    """The images of `files` (None: zeros) stacked first; lazily (dask, which napari brings)
    when the stack is bigger than LAZY_BYTES."""
    if len(files) * math.prod(shape) * dtype.itemsize <= LAZY_BYTES:
        return np.stack([read_image(path) if path is not None else np.zeros(shape, dtype)
                         for path in files])
    import dask
    import dask.array as da

    return da.stack([da.from_delayed(dask.delayed(read_image)(path, mmap=False), shape, dtype)
                     if path is not None else da.zeros(shape, dtype=dtype) for path in files])


def read_file(path, labels=None) -> list[tuple]:
    """LayerData for one image file: Labels for masks, Image otherwise (RGB, channels or
    plain). `labels` True/False decides the kind; None: it is guessed (name and values)."""
    path = Path(path)
    axes, shape = _file_layout(path)
    data = read_image(path, mmap=True)
    if tuple(data.shape) != shape:  # the reader squeezed or reshaped: the metadata no longer fits
        axes = "Q" * data.ndim
    return _layers(data, axes, path.stem, labels)


def _layers(data, axes: str, name: str, labels=None) -> list[tuple]:
    rgb, channel_axis = file_channels(axes, data.shape)  # the input-layout rule
    if rgb and not labels:
        return [(_in_memory_if_small(data), {"name": name, "rgb": True}, "image")]
    if labels or (labels is None and looks_like_labels(data, name)):
        labels_data = data.astype(np.uint8) if data.dtype == bool else data
        # half see-through, as the plugin's other labels: the tissue under them stays readable
        return [(_in_memory_if_small(labels_data), {"name": name, "opacity": 0.5}, "labels")]
    data = _in_memory_if_small(data)
    if channel_axis is None:
        kwargs = {"name": name, "rgb": False}
        limits = contrast_limits(data)
        if limits is not None:
            kwargs["contrast_limits"] = limits
        return [(data, kwargs, "image")]
    return [channel_layers(data, channel_axis, name)]


def channel_layers(data, channel_axis: int, name: str) -> tuple:
    """One LayerData tuple that napari splits into a layer per channel, marked as one group.

    Channels are named "<name> ch0", "<name> ch1", ...; a 4-channel file named like BraTS
    gets the modality names, grey colour maps, opaque blending and only FLAIR shown (four MRI
    contrasts added in four colours hide the tumour; a radiologist reads one at a time, and
    ticking another one's eye shows it instead). Each channel gets its own display range."""
    count = data.shape[channel_axis]
    brats = looks_like_brats(name, count)
    suffixes = BRATS_CHANNELS if brats else [f"ch{c}" for c in range(count)]
    group = uuid.uuid4().hex[:12]
    kwargs = {"name": [f"{name} {suffix}" for suffix in suffixes],
              "channel_axis": channel_axis,
              "metadata": [{CHANNEL_GROUP: {"id": group, "name": name, "index": c}}
                           for c in range(count)]}
    limits = [contrast_limits(np.take(data, c, axis=channel_axis), fallback=True)
              for c in range(count)]
    if all(limit is not None for limit in limits):
        kwargs["contrast_limits"] = limits
    if brats:
        kwargs["colormap"] = ["gray"] * count
        kwargs["blending"] = ["translucent_no_depth"] * count
        kwargs["visible"] = [c == 0 for c in range(count)]
    return data, kwargs, "image"


def looks_like_brats(name: str, channels: int) -> bool:
    """A BraTS volume: four channels, "brats" in the name (as every BraTS release names its
    cases)."""
    return channels == len(BRATS_CHANNELS) and "brats" in name.lower()


def contrast_limits(data, fallback: bool = False):
    """(low, high) for an image with a zero background: percentiles of its non-zero values
    (napari's default, the minimum and maximum, shows a brain MRI almost black). Without
    such a background: None (napari's default), or with `fallback` the sample's min and max.
    From a strided sample, so a memory-mapped file is not read whole."""
    sample = strided_sample(data)
    if sample.size == 0 or not (np.issubdtype(sample.dtype, np.integer)
                                or np.issubdtype(sample.dtype, np.floating)):
        return None
    nonzero = sample[sample != 0]
    if nonzero.size and sample.size - nonzero.size >= BACKGROUND_SHARE * sample.size:
        low, high = (float(v) for v in np.percentile(nonzero, CONTRAST_PERCENTILES))
    elif fallback:
        low, high = float(np.nanmin(sample)), float(np.nanmax(sample))
    else:
        return None
    if not (np.isfinite(low) and np.isfinite(high)):
        return None
    if high <= low:
        high = low + 1.0
    return low, high


def _in_memory_if_small(data: np.ndarray) -> np.ndarray:
    if isinstance(data, np.memmap) and data.nbytes <= LAZY_BYTES:
        return np.array(data)
    return data


# ----------------------------------------------------------------------------------- writers
def write_labels(path: str, data, attributes: dict) -> list[str]:
    """A Labels layer as an integer TIF (the smallest unsigned type that holds its values)."""
    array = np.asarray(_first_scale(data, attributes))
    if array.size and array.min() >= 0:
        array = array.astype(np.min_scalar_type(int(array.max())), copy=False)
    return [_write(path, array)]


def write_image(path: str, data, attributes: dict) -> list[str]:
    """An Image layer as a TIF in its own data type (RGB stays RGB)."""
    return [_write(path, np.asarray(_first_scale(data, attributes)))]


def _first_scale(data, attributes):
    return data[0] if attributes.get("multiscale") else data


def _write(path: str, array: np.ndarray) -> str:
    # napari's Save dialog has already asked before replacing an existing file
    try:
        write_tif(path, array, overwrite=True)
    except NapariUnetError as exc:
        raise OSError(str(exc)) from None
    return str(path)


# ------------------------------------------------------------------------------- sample data
def _pair(name: str, images: np.ndarray, masks: np.ndarray) -> list[tuple]:
    return [(images, {"name": name}, "image"),
            (masks.astype(np.uint8), {"name": f"{name} labels", "opacity": 0.5}, "labels")]


def sample_dagm() -> list[tuple]:
    from napari_unet.sample_data import SAMPLES

    return _pair("dagm", *SAMPLES["dagm"]())


def sample_em() -> list[tuple]:
    from napari_unet.sample_data import SAMPLES

    return _pair("em", *SAMPLES["em"](size=256))


def sample_blobs3d() -> list[tuple]:
    """The first synthetic volume: one Image layer per channel, and its labels."""
    from napari_unet.sample_data import SAMPLES

    images, labels = SAMPLES["blobs3d"](n=1)
    volume = images[0]  # (C, Z, Y, X)
    return [channel_layers(volume, 0, "blobs3d"),
            (labels[0].astype(np.uint8), {"name": "blobs3d labels", "opacity": 0.5}, "labels")]
