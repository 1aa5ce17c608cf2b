"""The training set of a run (RUN/data/images + RUN/data/masks) and the one rule that turns
mask values into classes, for files (the CLI, ``load_dataset``) and layers (the widgets) alike.

numpy and tifffile only: a test of this needs neither torch nor a viewer.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from .choices import MAX_CLASS_VALUES
from .errors import DataError
from .runs import DATA

IMAGES, MASKS = "images", "masks"


# -- mask values -> classes ---------------------------------------------------------------------
def mask_classes(mask, foreground_value=None, *, invert: bool = False,
                 instances: str = "refuse") -> tuple[np.ndarray, bool]:
    """(uint8 class mask, whether instance ids were merged into one class).

    - `foreground_value` given: that value is class 1, everything else 0 (ISBI: 0 = membrane).
    - values within {0, 255}: 255 is class 1 (masks saved as 8-bit pictures).
    - more than MAX_CLASS_VALUES non-zero values, or values over 255, are instance ids:
      with ``instances="merge"`` (napari's painted labels) every object is class 1; with
      "refuse" (files) values over 255 are an error and up to 255 stay class indices.
    - other small integer sets are class indices as they are (0/1, BraTS 0..4).
    - float masks: integral values are class indices, other values probabilities cut at 0.5.
    - `invert` swaps object and background of a binary result (ISBI's 0-valued membranes).
    """
    classes, merged = _classes(np.asarray(mask), foreground_value, instances)
    if invert:
        if classes.size and classes.max() > 1:
            raise DataError("invert needs a mask of one object class (0/1 after the rule): "
                            "choose the object's value instead")
        classes = (classes == 0).astype(np.uint8)
    return classes, merged


def _classes(mask, foreground_value, instances):
    if foreground_value is not None:
        return (mask == foreground_value).astype(np.uint8), False
    if mask.dtype == bool:
        return mask.astype(np.uint8), False
    if np.issubdtype(mask.dtype, np.floating):
        if not np.all(mask == np.round(mask)):
            return (mask > 0.5).astype(np.uint8), False
        mask = mask.astype(np.int64)
    if not np.issubdtype(mask.dtype, np.integer):
        raise DataError(f"mask of type {mask.dtype} is not a class mask: save it as integers")
    values = distinct_values(mask)
    if values.size == 0:
        return mask.astype(np.uint8), False
    nonzero = values[values != 0]
    if instances == "merge" and (len(nonzero) > MAX_CLASS_VALUES or values[-1] > 255
                                 or values[0] < 0):
        return (mask != 0).astype(np.uint8), True
    if values[0] < 0:
        raise DataError(f"mask has negative values (down to {values[0]}): use 0 for background "
                        "and 1, 2, ... for the classes")
    if values[-1] == 255 and set(values.tolist()) <= {0, 255}:
        return (mask == 255).astype(np.uint8), False
    if values[-1] > 255:
        raise DataError(f"mask has {values.size} distinct values up to {values[-1]}: classes "
                        "must be 0..255 (for instance labels pass foreground_value or save "
                        "mask > 0)")
    return mask.astype(np.uint8, copy=False), False


def distinct_values(mask: np.ndarray, chunk_items: int = 1 << 24) -> np.ndarray:
    """Every value in the mask, sorted, read in slabs so memory-mapped masks stay small."""
    flat = mask.reshape(mask.shape[0], -1) if mask.ndim > 1 else mask.reshape(1, -1)
    rows = max(1, chunk_items // max(flat.shape[1], 1))
    found = np.zeros(0, mask.dtype)
    for start in range(0, flat.shape[0], rows):
        chunk = np.asarray(flat[start:start + rows]).ravel()
        if mask.dtype in (np.uint8, np.uint16):  # counting is much faster than sorting
            chunk = np.flatnonzero(np.bincount(chunk)).astype(mask.dtype)
        found = np.union1d(found, chunk)
    return found


def _share(percent: float) -> str:
    """A share as a percentage, with the digits that keep a small class from reading 0%."""
    if percent >= 9.5:
        return f"{percent:.0f}%"
    return f"{percent:.2g}%"


def describe_classes(labels, foreground_value=None, invert=False) -> str:
    """One line on what training will learn from `labels` under the rule (for the widget)."""
    try:
        classes, merged = mask_classes(labels, foreground_value, invert=invert,
                                       instances="merge")
    except DataError as exc:
        return f"cannot train on these labels: {exc}"
    counts = np.bincount(classes.ravel(), minlength=2)
    percent = [(k, 100 * n / max(classes.size, 1)) for k, n in enumerate(counts) if k and n]
    if len(percent) == 1 and percent[0][0] == 1:
        shares = f"{_share(percent[0][1])} of the pixels"
    else:
        shares = ", ".join(f"class {k} {_share(p)}" for k, p in percent)
    if foreground_value is not None:
        source = f"value {foreground_value}"
    elif merged:
        source = "every labelled object (instances merged)"
    else:
        values = distinct_values(np.asarray(labels))
        shown = ", ".join(str(v) for v in values[values != 0][:8])
        source = f"value(s) {shown}" if shown else "nothing"
    source = f"everything but {source}" if invert else source
    return f"learns {source}: {shares or 'no object pixels'}"


# -- the files ----------------------------------------------------------------------------------
def looks_like_volume(shape) -> bool:
    """A 3D layer that is a volume rather than a stack of unrelated 2D images."""
    if len(shape) != 3:
        return False
    depth, height, width = shape
    return depth >= 16 and depth * 4 >= min(height, width)


def safe_name(name: str) -> str:
    """A file-name-safe form of a layer name."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "layer"


def _unique_stem(data_dir: Path, stem: str) -> str:
    """`stem`, or `stem_2`, `stem_3`, ... so that neither images/ nor masks/ has it yet."""
    candidate, n = stem, 1
    while any((data_dir / sub / f"{candidate}{suffix}").exists()
              for sub in (IMAGES, MASKS) for suffix in (".tif", ".tiff")):
        n += 1
        candidate = f"{stem}_{n}"
    return candidate


def _already_there(data_dir: Path, stem: str, image, classes) -> bool:
    """Whether `stem` (or `stem_N`) already holds exactly this image and mask."""
    from .io import read_image

    for candidate in [stem] + [f"{stem}_{n}" for n in range(2, 1000)]:
        image_path = data_dir / IMAGES / f"{candidate}.tif"
        mask_path = data_dir / MASKS / f"{candidate}.tif"
        if not image_path.exists():
            return False
        try:
            if mask_path.exists() \
                    and np.array_equal(read_image(mask_path, mmap=False), classes) \
                    and np.array_equal(read_image(image_path, mmap=False), image):
                return True
        except Exception:  # noqa: BLE001 - an unreadable file is not the same pair
            continue
    return False


def _make_folders(data_dir: Path) -> None:
    (data_dir / IMAGES).mkdir(parents=True, exist_ok=True)
    (data_dir / MASKS).mkdir(parents=True, exist_ok=True)


def _samples(name, image, labels, spatial_dims):
    """[(file stem, image, labels)] of one pair: painted slices of a 2D stack, or the pair."""
    if spatial_dims == 2 and labels.ndim == 3:
        return [(f"{safe_name(name)}_z{z:04d}", image[z], labels[z])
                for z in range(labels.shape[0]) if np.any(labels[z])], labels.shape[0]
    return ([(safe_name(name), image, labels)] if np.any(labels) else []), 1


def write_training_pairs(data_dir, pairs, spatial_dims: int, foreground_value=None,
                         invert: bool = False) -> dict:
    """Write (name, image array, labels array) pairs as RUN/data/images + masks TIFs.

    Masks are written as classes (:func:`mask_classes`, instances merged). 2D
    (`spatial_dims` 2): a 2D image is one sample; a (Z, Y, X) stack gives one file per
    painted slice (unpainted slices are not training data). 3D: each volume is one sample.
    Existing files are never replaced: new names are chosen; a pair already saved with the
    same pixels is not saved twice. Returns what happened, for the notice:
    ``{"written": [...], "kept": k, "total": n, "merged": [names], "duplicates": d}``.
    """
    from .io import write_tif

    data_dir = Path(data_dir)
    _make_folders(data_dir)
    report = {"written": [], "kept": 0, "total": 0, "merged": [], "duplicates": 0}
    for name, image, labels in pairs:
        # "painted" is what napari shows: a slice with any non-zero label
        samples, total = _samples(name, image, np.asarray(labels), spatial_dims)
        report["total"] += total
        for stem, image_part, labels_part in samples:
            classes, merged = mask_classes(np.asarray(labels_part), foreground_value,
                                           invert=invert, instances="merge")
            if merged and name not in report["merged"]:
                report["merged"].append(name)
            image_part = np.asarray(image_part)
            if _already_there(data_dir, stem, image_part, classes):
                report["duplicates"] += 1
                continue
            stem = _unique_stem(data_dir, stem)
            write_tif(data_dir / IMAGES / f"{stem}.tif", image_part)
            write_tif(data_dir / MASKS / f"{stem}.tif", classes)
            report["written"].append(stem)
        report["kept"] += len(samples)
    return report


def copy_training_set(source_run, data_dir) -> int:
    """Copy another run's RUN/data/images + masks pairs (fine-tuning keeps what it learnt
    from, plus what was added with "Add to training set"). Returns the number of pairs."""
    source = Path(source_run) / DATA
    if not (source / IMAGES).is_dir() or not (source / MASKS).is_dir():
        return 0
    data_dir = Path(data_dir)
    _make_folders(data_dir)
    copied = 0
    for image in sorted((source / IMAGES).glob("*.tif*")):
        mask = source / MASKS / image.name
        if not mask.is_file() or image.name.startswith("."):
            continue
        stem = _unique_stem(data_dir, image.stem)
        shutil.copy2(image, data_dir / IMAGES / f"{stem}{image.suffix}")
        shutil.copy2(mask, data_dir / MASKS / f"{stem}{image.suffix}")
        copied += 1
    return copied


def pair_count(data_dir) -> int:
    """How many training pairs RUN/data holds."""
    folder = Path(data_dir) / IMAGES
    return len([p for p in folder.glob("*.tif*") if not p.name.startswith(".")]) \
        if folder.is_dir() else 0
