"""Data sets: training pairs from folders of known layouts or from files, mask conventions, folds.

Samples are channel-first arrays (C, Y, X) or (C, Z, Y, X), often views of memory-mapped TIFs,
so a stack bigger than RAM costs nothing until a patch is read from it. Masks are class-index
arrays (0 = background). Batches are a pure function of (seed, step): a resumed run and every
DDP rank draw exactly what a single uninterrupted process would.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...choices import IGNORE_CLASS
from ...errors import ConfigError, DataError
from ...io import image_files as _image_files
from ...io import input_files, is_glob, read_image, read_spacing
from ...layouts import channel_first, interpret, looks_like_volume
from ...masks import check_mask_values, distinct_values, mask_classes, object_ids
from ...zarr_files import is_zarr
from .layout import as_channel_first

LAYOUTS = (
    "ISBI 2012 (train-volume.tif + train-labels.tif)",
    "DAGM 2007 (NNNN.PNG + Label/NNNN_label.PNG)",
    "BraTS (NAME_image.tif + NAME_labels.tif)",
    "generic (images/ + masks/ or labels/ holding the same file names)",
)


# ------------------------------------------------------------------------------ the data set
@dataclass
class Dataset:
    """Images (C, *spatial), class-index masks (*spatial) and a name per sample."""

    images: list
    masks: list
    names: list
    spatial_dims: int
    spacing: tuple | None = None  # voxel size per spatial axis, where the files state it
    objects: list | None = None  # the instance ids per sample, where the masks held objects
    notes: list = field(default_factory=list)  # warnings about the masks, said when used

    def __post_init__(self):
        if not len(self.images) == len(self.masks) == len(self.names):
            raise DataError(
                f"{len(self.images)} images, {len(self.masks)} masks and {len(self.names)} "
                "names: give one mask per image"
            )
        for image, mask, name in zip(self.images, self.masks, self.names):
            if image.ndim != self.spatial_dims + 1:
                raise DataError(
                    f"{name}: image shape {image.shape} is not channel-first "
                    f"{self.spatial_dims}D: convert it with as_channel_first"
                )
            check_same_shape(image.shape[1:], mask.shape, name)
        channels = sorted({image.shape[0] for image in self.images})
        if len(channels) > 1:
            raise DataError(
                f"images have different channel counts {channels}: use one count per data set"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        """Largest class index + 1, at least 2 (a binary problem with no foreground yet);
        unlabelled pixels (IGNORE_CLASS) are no class."""
        return max([2] + [int(_labelled_max(mask)) + 1 for mask in self.masks])

    @property
    def sparse(self) -> bool:
        """Whether some pixels are unlabelled (IGNORE_CLASS): training and scores then
        leave them out."""
        return any(int(np.asarray(mask).max(initial=0)) == IGNORE_CLASS for mask in self.masks)

    @property
    def in_channels(self) -> int:
        return int(self.images[0].shape[0]) if self.images else 0

    def merged(self) -> Dataset:
        """The data set with every labelled object as class 1 and its values kept as the object
        ids to score (``objects``): instance masks of few ids, which the rule reads as class
        indices, read as instances. Unlabelled pixels stay unlabelled."""
        ids = self.objects if self.objects is not None else \
            [np.where(np.asarray(mask) == IGNORE_CLASS, 0, np.asarray(mask)) for mask in self.masks]
        return Dataset(self.images, [_objects(np.asarray(mask)) for mask in self.masks],
                       self.names, self.spatial_dims, self.spacing, list(ids), list(self.notes))

    def subset(self, indices) -> Dataset:
        indices = [int(i) for i in indices]
        return Dataset(
            [self.images[i] for i in indices],
            [self.masks[i] for i in indices],
            [self.names[i] for i in indices],
            self.spatial_dims,
            self.spacing,
            [self.objects[i] for i in indices] if self.objects is not None else None,
            self.notes,
        )


def check_same_shape(image_shape, mask_shape, name) -> None:
    if tuple(image_shape) != tuple(mask_shape):
        raise DataError(
            f"{name}: image shape {tuple(image_shape)} and mask shape {tuple(mask_shape)} "
            "differ: give each image a mask of the same size"
        )


def load_dataset(
    data_dir=None, *, images=None, masks=None, foreground_value=None, spatial_dims=None,
    unpainted_ok: bool = False, **rule,
) -> Dataset:
    """Load a training set from a folder of a known layout, or from image and mask paths.

    `data_dir` layouts: ISBI 2012, DAGM 2007, BraTS and generic (see LAYOUTS). The ISBI files
    mark the class of interest (membrane) with 0, so for that layout `foreground_value`
    defaults to 0 (membrane becomes class 1); for the others masks keep their convention
    (see `masks_to_classes`). DAGM images without a mask file get an empty mask.

    `images` / `masks`: a file each or a folder each (paired by file name). A multi-page
    (Z, Y, X) stack is a stack of 2D samples unless `spatial_dims` is 3; with `spatial_dims`
    None, 4D (C, Z, Y, X) images are 3D volumes and everything else 2D.

    `rule`: the mask rule's settings for sparse labels (unlabeled, background_value,
    ignore_value: napari_unet.masks.mask_classes); unlabelled pixels become IGNORE_CLASS.
    """
    if spatial_dims not in (None, "auto", 2, 3):
        raise ConfigError(f"spatial_dims must be 2, 3, 'auto' or None, not {spatial_dims!r}")
    if data_dir is not None:
        if images is not None or masks is not None:
            raise ConfigError("give either a data folder or images and masks, not both")
        pairs, layout_foreground = _detect_layout(Path(data_dir))
        if foreground_value is None:
            foreground_value = layout_foreground
    elif images is None or masks is None:
        raise ConfigError("give a data folder, or both images and masks")
    else:
        pairs = _pair_paths(Path(images), Path(masks))
    if spatial_dims == "auto":
        spatial_dims = data_dims(pairs)
    return dataset_from_pairs(pairs, foreground_value, spatial_dims,
                              unpainted_ok=unpainted_ok, **rule)


def data_dims(pairs) -> int:
    """2 or 3: what the first pair is, by the input-layout rule. A 4D image is a volume of
    channels; a 3D mask labels a volume when the file states a Z spacing or when the stack
    is deep for its size (``looks_like_volume``), else a stack of 2D images."""
    image_path, mask_path = pairs[0]
    image = read_image(image_path)
    if mask_path is None:
        return 2
    mask = read_image(mask_path)
    if image.ndim == 4 and mask.ndim == 3:
        return 3
    spacing = read_spacing(image_path)
    if mask.ndim == 3 and (looks_like_volume(mask.shape) or (spacing and len(spacing) == 3)):
        return 3
    return 2


def dataset_from_pairs(pairs, foreground_value=None, spatial_dims=None,
                       unpainted_ok: bool = False, **rule) -> Dataset:
    """A Dataset from [(image path, mask path or None)] (None: DAGM's image without a defect;
    `unpainted_ok`: sparse masks with nothing painted yet pass, check_mask_values)."""
    samples, instances, found, failed = [], False, [], None
    for image_path, mask_path in pairs:
        raw = read_image(mask_path) if mask_path is not None else None
        found.append(distinct_values(raw) if raw is not None else np.zeros(1, np.uint8))
        if failed is not None:  # the values of the rest, for check_mask_values
            continue
        try:
            loaded, merged = _load_pair(image_path, raw, foreground_value, spatial_dims, rule)
        except DataError as exc:  # the whole set's values may tell what was meant
            failed = exc
            continue
        samples += loaded
        instances |= merged
    notes = check_mask_values(np.unique(np.concatenate(found)) if found else [],
                              foreground_value, unpainted_ok=unpainted_ok,
                              **rule) if pairs else []
    if failed is not None:
        raise failed
    if instances:  # instance maps: every object is foreground, in every mask of the set;
        # a mask of few objects was read as classes: its values are its ids
        samples = [(image, _objects(mask), name, mask if ids is None else ids)
                   for image, mask, name, ids in samples]
    if not samples:
        raise DataError("no samples found: check the image and mask paths")
    dims = {image.ndim - 1 for image, *_ in samples}
    if len(dims) > 1:
        raise DataError("the data mix 2D images and 3D volumes: train the volumes as stacks "
                        "of 2D slices with --set spatial_dims=2, or keep the 2D images out")
    images_, masks_, names, ids = (list(column) for column in zip(*samples))
    dims = dims.pop()
    spacing = read_spacing(pairs[0][0])
    spacing = spacing[-dims:] if spacing is not None and len(spacing) >= dims else None
    objects = ids if all(sample_ids is not None for sample_ids in ids) else None
    return Dataset(images_, masks_, names, dims, spacing, objects, notes)


def _detect_layout(root: Path):
    """[(image path, mask path or None)] and the layout's default foreground value."""
    if not root.exists():
        raise DataError(f"{root} does not exist: check the data folder's path")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give the folder that holds the data")
    isbi = (root / "train-volume.tif", root / "train-labels.tif")
    if all(path.is_file() for path in isbi):
        return [isbi], 0
    if (root / "Label").is_dir():
        return dagm_pairs(root, root / "Label"), None
    brats = sorted(root.glob("*_image.tif"))
    if brats:
        return [(path, _required(path.with_name(path.name.replace("_image.tif", "_labels.tif"))))
                for path in brats], None
    for mask_folder in ("masks", "labels"):
        if (root / "images").is_dir() and (root / mask_folder).is_dir():
            return _pair_folders(root / "images", root / mask_folder), None
    raise DataError(f"{root}: unknown data layout; use one of: {'; '.join(LAYOUTS)}")


def _required(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path} is missing: every image needs its mask file")
    return path



def dagm_pairs(image_folder: Path, label_folder: Path):
    """DAGM 2007's pairs: NNNN.PNG with LABELS/NNNN_label.PNG (or a same-name mask); an image
    without a mask file has no defect (mask None)."""
    labels = {path.stem.lower(): path for path in _image_files(label_folder)}
    images = _image_files(image_folder)
    if not images:
        raise DataError(f"{image_folder} holds no images: expected NNNN.PNG files")
    return [(path, labels.get(f"{path.stem.lower()}_label") or labels.get(path.stem.lower()))
            for path in images]


def _pair_folders(image_source: Path, mask_dir: Path):
    """Images (a folder or a glob) paired with the masks of the same name in ``mask_dir``."""
    masks = {path.name: path for path in _image_files(mask_dir)}
    masks_by_stem = {path.stem: path for path in masks.values()}
    images = input_files(image_source)
    pairs = []
    for path in images:
        mask = masks.get(path.name) or masks_by_stem.get(path.stem)
        if mask is None:
            raise DataError(f"no mask for {path.name} in {mask_dir}: add one with the same name")
        pairs.append((path, mask))
    return pairs


def _pair_paths(images: Path, masks: Path):
    if is_zarr(images) and (is_zarr(masks) or masks.is_file()):  # OME-Zarr groups are one file
        return [(images, masks)]
    if (images.is_dir() or is_glob(images)) and masks.is_dir():
        return _pair_folders(images, masks)
    if images.is_dir() or masks.is_dir():
        raise DataError("images and masks must both be files or both be folders")
    return [(images, masks)]


def _objects(mask):
    """Every labelled object as class 1; unlabelled pixels stay unlabelled."""
    objects = (mask > 0).astype(np.uint8)
    return np.where(mask == IGNORE_CLASS, np.uint8(IGNORE_CLASS), objects)


def _labelled_max(mask) -> int:
    mask = np.asarray(mask)
    top = int(mask.max(initial=0))
    if top != IGNORE_CLASS:
        return top
    return int(mask[mask != IGNORE_CLASS].max(initial=0))


def _load_pair(image_path: Path, raw, foreground_value, spatial_dims, rule):
    """([(image (C, *spatial), mask (*spatial), name, instance ids or None)], whether the
    mask file held instance ids) from one image file and its mask file's array `raw` (None:
    no mask file). The ids are kept
    where the file held objects (``instances="boundary"``, or ids merged into one class), so
    that ``evaluate`` can score objects."""
    image = read_image(image_path)
    if raw is None:  # DAGM: no defect, no mask file
        channel_first = as_channel_first(image, spatial_dims or 2)
        empty = np.zeros(channel_first.shape[1:], np.uint8)
        return [(channel_first, empty, image_path.stem, empty)], False
    name = image_path.stem.removesuffix("_image")
    if rule.get("instances") == "boundary":  # outlines in each sample's own dimensions
        samples = _split_samples(image, raw, spatial_dims, name)
        return [(sample, mask_classes(np.asarray(ids), foreground_value, **rule)[0],
                 sample_name, _ids(ids, rule)) for sample, ids, sample_name in samples], False
    mask, merged = mask_classes(raw, foreground_value, **{"instances": "merge", **rule})
    samples = _split_samples(image, mask, spatial_dims, name)
    if not merged:
        return [(*sample, None) for sample in samples], False
    kept = [ids for _, ids, _ in _split_samples(image, raw, spatial_dims, name)]
    return [(*sample, _ids(ids, rule)) for sample, ids in zip(samples, kept)], True


def _ids(ids, rule):
    """Instance ids as scored: unlabelled pixels (``ignore_value``) are 0; a binary mask's
    objects are its connected components (object_ids)."""
    ids = np.asarray(ids)
    if rule.get("ignore_value") is not None:
        ids = np.where(ids == rule["ignore_value"], 0, ids)
    return object_ids(ids)


def _split_samples(image, mask, spatial_dims, name):
    # the mask fixes the spatial shape; the image adds at most a channel axis
    dims = spatial_dims or (3 if image.ndim == 4 else 2)
    if mask.ndim == dims:
        sample = as_channel_first(image, dims)
        check_same_shape(sample.shape[1:], mask.shape, name)
        return [(sample, mask, name)]
    if mask.ndim == 3 and dims == 2:  # a stack of 2D samples: the rule finds its axis
        stack = _stack(image, mask, name)
        samples = []
        for z in range(mask.shape[0]):
            check_same_shape(stack.shape[2:], mask[z].shape, name)
            samples.append((stack[:, z], mask[z], f"{name}[{z}]"))
        return samples
    if mask.ndim == 2:  # dims == 3: a 3D model asked for 2D data
        raise DataError(f"{name}: a 2D mask {mask.shape} cannot label a 3D volume: train "
                        f"2D images with --set spatial_dims=2 (or a 2D --preset)")
    raise DataError(
        f"{name}: a {mask.ndim}D mask {mask.shape} (image {image.shape}): a mask is 2D (an "
        f"image) or 3D (a volume, or a stack of 2D masks); save each volume and its mask as "
        f"3D files in images/ and masks/ folders and give --images DIR --masks DIR"
    )


def _stack(image, mask, name):
    """(C, Z, Y, X): a stack of 2D images as deep as its mask, by the input-layout rule."""
    try:
        stacked = interpret(image.shape, 2, stack=True, depth=mask.shape[0]).kind == "stack"
    except DataError:
        stacked = False
    if not stacked:
        raise DataError(
            f"{name}: image shape {image.shape} and mask shape {mask.shape} differ: "
            "give each image a mask of the same size"
        )
    return channel_first(image, 2, stack=True, depth=mask.shape[0])


# ------------------------------------------------------------------------- conventions
def masks_to_classes(mask, foreground_value=None, **rule) -> np.ndarray:
    """A mask file's values as class indices (uint8; 0 = background; IGNORE_CLASS:
    unlabelled), by the rule that the widgets use too
    (:func:`napari_unet.masks.mask_classes`; instance ids refused)."""
    return mask_classes(mask, foreground_value, **rule)[0]


def split_folds(n_samples: int, fold, folds: int = 5, seed: int = 0):
    """(train indices, validation indices) of cross-validation fold `fold`.

    The samples are shuffled once with `seed` and cut into `folds` parts; fold k validates on
    part k (as the reference does). fold None trains on everything and validates on nothing.
    """
    everything = np.arange(n_samples)
    if fold is None:
        return everything, np.zeros(0, dtype=int)
    if folds < 2 or folds > n_samples:
        raise ConfigError(
            f"cannot cut {n_samples} samples into {folds} folds: use 2..{max(n_samples, 2)} folds"
        )
    if not 0 <= fold < folds:
        raise ConfigError(f"fold {fold} does not exist: use 0..{folds - 1} (or no fold)")
    parts = np.array_split(np.random.default_rng(seed).permutation(n_samples), folds)
    validation = np.sort(parts[fold])
    return np.setdiff1d(everything, validation), validation


# ------------------------------------------------------------------------- normalisation
