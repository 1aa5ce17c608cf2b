"""The training set of a run (RUN/data/images + RUN/data/masks): writing painted pairs as
files by the mask rule (:mod:`napari_unet.masks`), copying another run's pairs.

numpy and tifffile only: a test of this needs neither torch nor a viewer.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from .errors import DataError
from .io import read_image, write_tif
from .lazy import is_lazy, painted_box
from .masks import describe_classes, distinct_values, mask_classes  # noqa: F401 - re-exported
from .runs import DATA

IMAGES, MASKS = "images", "masks"
# pixels of context kept on each side of the painted part of a lazy (not in memory) image
CONTEXT = 32


# -- the files ----------------------------------------------------------------------------------
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
    """([(file stem, image, labels)], total, box) of one pair: painted slices of a 2D stack,
    else the pair; of a lazy image (or labels) only its painted box with CONTEXT pixels around
    (`box`, else None), read from the store without loading the rest."""
    if spatial_dims == 2 and labels.ndim == 3:
        return [(f"{safe_name(name)}_z{z:04d}", image[z], labels[z])
                for z in range(labels.shape[0]) if np.any(np.asarray(labels[z]))], \
            labels.shape[0], None
    if is_lazy(image) or is_lazy(labels):
        box = painted_box(labels, CONTEXT)
        if box is None:
            return [], 1, None
        spatial = tuple(labels.shape)
        key = (slice(None),) + box if tuple(image.shape[1:]) == spatial and \
            image.ndim > labels.ndim else box  # channels first (a group) or last (RGB)
        return [(safe_name(name), image[key], np.asarray(labels[box]))], 1, box
    return ([(safe_name(name), image, labels)] if np.any(labels) else []), 1, None


def write_training_pairs(data_dir, pairs, spatial_dims: int, foreground_value=None,
                         invert: bool = False, **rule) -> dict:
    """Write (name, image array, labels array) pairs as RUN/data/images + masks TIFs.

    Masks are written as classes (:func:`mask_classes`, instances merged; `rule`: its sparse
    settings, unlabelled pixels written as IGNORE_CLASS). 2D
    (`spatial_dims` 2): a 2D image is one sample; a (Z, Y, X) stack gives one file per
    painted slice (unpainted slices are not training data). 3D: each volume is one sample.
    Existing files are never replaced: new names are chosen; a pair already saved with the
    same pixels is not saved twice. Returns what happened, for the notice:
    ``{"written": [...], "kept": k, "total": n, "merged": [names], "duplicates": d}``.
    """
    data_dir = Path(data_dir)
    _make_folders(data_dir)
    report = {"written": [], "kept": 0, "total": 0, "merged": [], "duplicates": 0,
              "cropped": []}
    for name, image, labels in pairs:
        # "painted" is what napari shows: a slice with any non-zero label
        samples, total, box = _samples(name, image, labels if is_lazy(labels)
                                       else np.asarray(labels), spatial_dims)
        report["total"] += total
        if box is not None:
            report["cropped"].append(f"{name} [{', '.join(f'{s.start}:{s.stop}' for s in box)}]")
        for stem, image_part, labels_part in samples:
            if rule.get("instances") == "boundary":  # objects: the ids are the mask
                classes, merged = _object_ids(labels_part), False
            else:
                classes, merged = mask_classes(np.asarray(labels_part), foreground_value,
                                               invert=invert, **{"instances": "merge", **rule})
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


def _object_ids(labels) -> np.ndarray:
    """An instance mask as saved for a run that learns objects: its ids, in the smallest
    unsigned type that holds them."""
    ids = np.asarray(labels)
    top = int(ids.max(initial=0))
    if int(ids.min(initial=0)) < 0:
        raise DataError("object ids are non-negative integers (0 = background)")
    return ids.astype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32)
