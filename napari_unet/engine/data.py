"""Training data: data sets on disk, mask conventions, folds, normalisation and patch batches.

Samples are channel-first arrays (C, Y, X) or (C, Z, Y, X), often views of memory-mapped TIFs,
so a stack bigger than RAM costs nothing until a patch is read from it. Masks are class-index
arrays (0 = background). Batches are a pure function of (seed, step): a resumed run and every
DDP rank draw exactly what a single uninterrupted process would.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..choices import MAX_CHANNELS, NORMALIZATIONS
from ..errors import ConfigError, DataError
from ..io import image_files as _image_files
from ..io import input_files, is_glob, read_image, sample_step, strided_sample
from ..training_set import mask_classes

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
            _check_same_shape(image.shape[1:], mask.shape, name)
        channels = sorted({image.shape[0] for image in self.images})
        if len(channels) > 1:
            raise DataError(
                f"images have different channel counts {channels}: use one count per data set"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        """Largest class index + 1, at least 2 (a binary problem with no foreground yet)."""
        return max([2] + [int(mask.max()) + 1 for mask in self.masks])

    @property
    def in_channels(self) -> int:
        return int(self.images[0].shape[0]) if self.images else 0

    def subset(self, indices) -> Dataset:
        indices = [int(i) for i in indices]
        return Dataset(
            [self.images[i] for i in indices],
            [self.masks[i] for i in indices],
            [self.names[i] for i in indices],
            self.spatial_dims,
        )


def _check_same_shape(image_shape, mask_shape, name) -> None:
    if tuple(image_shape) != tuple(mask_shape):
        raise DataError(
            f"{name}: image shape {tuple(image_shape)} and mask shape {tuple(mask_shape)} "
            "differ: give each image a mask of the same size"
        )


def load_dataset(
    data_dir=None, *, images=None, masks=None, foreground_value=None, spatial_dims=None
) -> Dataset:
    """Load a training set from a folder of a known layout, or from image and mask paths.

    `data_dir` layouts: ISBI 2012, DAGM 2007, BraTS and generic (see LAYOUTS). The ISBI files
    mark the class of interest (membrane) with 0, so for that layout `foreground_value`
    defaults to 0 (membrane becomes class 1); for the others masks keep their convention
    (see `masks_to_classes`). DAGM images without a mask file get an empty mask.

    `images` / `masks`: a file each or a folder each (paired by file name). A multi-page
    (Z, Y, X) stack is a stack of 2D samples unless `spatial_dims` is 3; with `spatial_dims`
    None, 4D (C, Z, Y, X) images are 3D volumes and everything else 2D.
    """
    if spatial_dims not in (None, 2, 3):
        raise ConfigError(f"spatial_dims must be 2, 3 or None, not {spatial_dims!r}")
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

    samples = []
    for image_path, mask_path in pairs:
        samples += _load_pair(image_path, mask_path, foreground_value, spatial_dims)
    if not samples:
        raise DataError("no samples found: check the image and mask paths")
    dims = {image.ndim - 1 for image, _, _ in samples}
    if len(dims) > 1:
        raise DataError("the data mix 2D images and 3D volumes: pass spatial_dims=2 or 3")
    images_, masks_, names = (list(column) for column in zip(*samples))
    return Dataset(images_, masks_, names, dims.pop())


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
        return _dagm_pairs(root), None
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




def _dagm_pairs(root: Path):
    labels = {path.stem.lower(): path for path in _image_files(root / "Label")}
    images = _image_files(root)
    if not images:
        raise DataError(f"{root} has a Label folder but no images: expected NNNN.PNG files")
    return [(path, labels.get(f"{path.stem.lower()}_label")) for path in images]


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
    if (images.is_dir() or is_glob(images)) and masks.is_dir():
        return _pair_folders(images, masks)
    if images.is_dir() or masks.is_dir():
        raise DataError("images and masks must both be files or both be folders")
    return [(images, masks)]


def _load_pair(image_path: Path, mask_path, foreground_value, spatial_dims):
    """[(image (C, *spatial), mask (*spatial), name)] from one image file and its mask file."""
    image = read_image(image_path)
    if mask_path is None:  # DAGM: no defect, no mask file
        channel_first = as_channel_first(image, spatial_dims or 2)
        return [(channel_first, np.zeros(channel_first.shape[1:], np.uint8), image_path.stem)]
    mask = masks_to_classes(read_image(mask_path), foreground_value)
    return _split_samples(image, mask, spatial_dims, image_path.stem.removesuffix("_image"))


def _split_samples(image, mask, spatial_dims, name):
    # the mask fixes the spatial shape; the image adds at most a channel axis
    dims = spatial_dims or (3 if image.ndim == 4 else 2)
    if mask.ndim == dims:
        sample = as_channel_first(image, dims)
        _check_same_shape(sample.shape[1:], mask.shape, name)
        return [(sample, mask, name)]
    if mask.ndim == 3 and dims == 2:  # a stack of 2D samples
        samples = []
        for z, image_slice in enumerate(_stack_slices(image, mask, name)):
            sample = as_channel_first(image_slice, 2)
            _check_same_shape(sample.shape[1:], mask[z].shape, name)
            samples.append((sample, mask[z], f"{name}[{z}]"))
        return samples
    raise DataError(
        f"{name}: a {mask.ndim}D mask cannot label {dims}D samples (image {image.shape}, "
        f"mask {mask.shape}): pass spatial_dims=2 or 3 to match the mask"
    )


def _stack_slices(image, mask, name):
    depth = mask.shape[0]
    if image.shape[0] == depth and image.ndim in (3, 4):  # (Z, Y, X), (Z, C, Y, X), (Z, Y, X, C)
        return [image[z] for z in range(depth)]
    if image.ndim == 4 and image.shape[1] == depth:  # (C, Z, Y, X)
        return [image[:, z] for z in range(depth)]
    raise DataError(
        f"{name}: image shape {image.shape} and mask shape {mask.shape} differ: "
        "give each image a mask of the same size"
    )


# ------------------------------------------------------------------------- conventions
def masks_to_classes(mask, foreground_value=None) -> np.ndarray:
    """A mask file's values as class indices (uint8; 0 = background), by the rule that the
    widgets use too (:func:`napari_unet.training_set.mask_classes`; instance ids refused)."""
    return mask_classes(mask, foreground_value)[0]


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
@dataclass
class NormStats:
    """Per-channel intensity statistics; saved with the checkpoint so prediction matches."""

    mode: str
    low: list
    high: list
    mean: list
    std: list

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> NormStats:
        if values.get("mode") not in NORMALIZATIONS:
            raise ConfigError(
                f"normalisation {values.get('mode')!r} is unknown: use one of {NORMALIZATIONS}"
            )
        return cls(**{f.name: values.get(f.name, []) for f in dataclasses.fields(cls)})


def compute_norm_stats(images, mode: str) -> NormStats:
    """Statistics for `normalize`, per channel over all `images` (from strided samples).

    minus_one_one: uint8 uses 0..255, other types the 0.5 and 99.5 percentiles.
    zscore: mean and standard deviation, leaving out a constant background (a single value
    covering a quarter of the voxels or more: zeros around skull-stripped MRI, or BraTS'
    z-scored zero at the channel minimum) so that the brain, not the air, sets the scale.
    """
    if mode not in NORMALIZATIONS:
        raise ConfigError(f"normalisation {mode!r} is unknown: use one of {NORMALIZATIONS}")
    stats = NormStats(mode, [], [], [], [])
    if mode in ("none", "zscore_case") or not images:
        return stats  # zscore_case: each image brings its own (stats_for_image)
    budget = max(10_000, 2_000_000 // len(images))
    # zscore: each volume has its own background value (BraTS: a different floor per case)
    select = _without_background if mode == "zscore" else (lambda values: values)
    for channel in range(images[0].shape[0]):
        values = np.concatenate(
            [select(_finite_sample(image[channel], budget)) for image in images]
        )
        if mode == "minus_one_one":
            low, high = _intensity_range(values, all(image.dtype == np.uint8 for image in images))
            stats.low.append(low)
            stats.high.append(high)
        else:
            std = float(values.std()) if values.size else 0.0
            stats.mean.append(float(values.mean()) if values.size else 0.0)
            stats.std.append(std if std > 0 else 1.0)
    return stats


def stats_for_image(image, stats: NormStats) -> NormStats:
    """The statistics that normalise `image`: `stats` itself, or for zscore_case the image's
    own mean and std per channel without its constant background (zscore over one case)."""
    if stats.mode != "zscore_case":
        return stats
    return compute_norm_stats([image], "zscore")


def _finite_sample(array, budget: int) -> np.ndarray:
    values = strided_sample(array, budget).ravel().astype(np.float64)
    return values[np.isfinite(values)]


def _intensity_range(values: np.ndarray, uint8: bool) -> tuple[float, float]:
    if uint8:  # the full 8-bit range: the same scaling for every picture, as the reference
        return 0.0, 255.0
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    return low, high if high > low else low + 1.0  # a constant image must not divide by 0


def _without_background(values: np.ndarray) -> np.ndarray:
    if values.size == 0:
        return values
    unique, counts = np.unique(values, return_counts=True)
    if counts.max() * 4 >= values.size and counts.size > 1:
        return values[values != unique[counts.argmax()]]
    return values


def normalize(array, stats: NormStats) -> np.ndarray:
    """A float32 copy of a channel-first array, scaled with `stats`; NaN and Inf become 0.

    minus_one_one maps [low, high] to [-1, 1] and clips to [-1.5, 1.5], so outliers stay
    bounded without flattening everything just outside the percentile range.
    """
    x = torch.from_numpy(np.array(array, dtype=np.float32))
    return normalize_tensor(x, stats, channel_dim=0).numpy()


def normalize_tensor(x: torch.Tensor, stats: NormStats, channel_dim: int = 1) -> torch.Tensor:
    """`normalize` for a tensor on any device in any stored dtype (channels on `channel_dim`;
    a batch by default): float32, bit for bit what `normalize` gives on the CPU. A float32
    input is scaled in place. No step reads a value back, so a GPU never waits for the host."""
    x = x.to(torch.float32)
    if stats.mode == "zscore_case":
        raise DataError("zscore_case statistics belong to one image: normalise with "
                        "stats_for_image(image, stats)")
    if stats.mode == "minus_one_one":
        low, high = _per_channel(stats.low, x, channel_dim), _per_channel(stats.high, x, channel_dim)
        x -= low
        x *= 2.0 / (high - low)
        x -= 1.0
    elif stats.mode == "zscore":
        x -= _per_channel(stats.mean, x, channel_dim)
        x /= _per_channel(stats.std, x, channel_dim)
    x = torch.where(torch.isfinite(x), x, 0.0)
    if stats.mode == "minus_one_one":
        x.clamp_(-1.5, 1.5)
    return x


def _per_channel(values, x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    if len(values) != x.shape[channel_dim]:
        raise DataError(
            f"the image has {x.shape[channel_dim]} channels but the normalisation has "
            f"{len(values)}: use images with the channels the model was trained on"
        )
    shape = [1] * x.ndim
    shape[channel_dim] = -1
    return torch.tensor(values, dtype=torch.float32).view(shape).to(x.device, non_blocking=True)


# ------------------------------------------------------------------------- patch batches
class PatchSampler:
    """Random training windows, the same for a given (seed, step) on every run and rank.

    Each item is a random window of a random sample. The image window (`input_size`) and the
    mask window (`output_size`) are concentric: the unpadded UNet sees a 572 input around the
    388 region it labels. Where a window leaves the image (the margin at a border, or an image
    smaller than the window) both image and mask are mirrored: a mirrored image with a zero
    mask would teach the network that mirrored structures are background.
    With probability `foreground_oversample` the window is centred on a foreground voxel,
    which matters when defects cover 2 % of an image.
    """

    def __init__(self, images, masks, input_size, output_size, batch_size, norm_stats,
                 seed=0, foreground_oversample=0.0, rank=0, world_size=1):
        self.images, self.masks = list(images), list(masks)
        self.input_size = tuple(int(s) for s in input_size)
        self.output_size = tuple(int(s) for s in output_size)
        self.batch_size, self.norm_stats, self.seed = int(batch_size), norm_stats, int(seed)
        self.foreground_oversample = float(foreground_oversample)
        self.rank, self.world_size = int(rank), int(world_size)
        self._check()
        self.margin = tuple((i - o) // 2 for i, o in zip(self.input_size, self.output_size))
        self._foreground = {}  # sample index -> strided foreground coordinates, filled lazily

    def _check(self) -> None:
        dims = len(self.input_size)
        if len(self.output_size) != dims or any(
            i < o or (i - o) % 2 for i, o in zip(self.input_size, self.output_size)
        ):
            raise ConfigError(
                f"input size {self.input_size} must contain output size {self.output_size} "
                "with an even margin on every axis"
            )
        if not self.images or len(self.images) != len(self.masks):
            raise DataError(
                f"{len(self.images)} images and {len(self.masks)} masks: give one mask per image"
            )
        for image, mask in zip(self.images, self.masks):
            if image.ndim != dims + 1:
                raise ConfigError(
                    f"{dims}D windows cannot be cut from images of shape {image.shape}"
                )
            _check_same_shape(image.shape[1:], mask.shape, "sample")
        if self.batch_size < 1 or not 0 <= self.rank < self.world_size:
            raise ConfigError(
                f"batch size {self.batch_size}, rank {self.rank} of {self.world_size}: "
                "need batch size >= 1 and 0 <= rank < world size"
            )
        if not 0.0 <= self.foreground_oversample <= 1.0:
            raise ConfigError("foreground_oversample is a probability: use 0..1")

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def batch(self, step: int):
        """(x float32 (B, C, *input_size), y int64 (B, *output_size)) for this rank,
        normalised on the host (training normalises on the device: engine.pipeline)."""
        images, masks = zip(*(self.read_window(index, start) for index, start in self.plan(step)))
        x = torch.from_numpy(np.stack([normalize(image, self.norm_stats) for image in images]))
        return x, torch.from_numpy(np.stack(masks).astype(np.int64))

    def plan(self, step: int) -> list:
        """This rank's windows of a step: [(sample index, start of the output window)]."""
        rng = np.random.default_rng([self.seed, int(step)])
        # every rank draws the whole global batch so that all ranks consume the same stream
        plan = [self._draw_window(rng) for _ in range(self.global_batch_size)]
        return plan[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def _draw_window(self, rng: np.random.Generator):
        """(sample index, start of the output window in the sample; may be negative)."""
        index = int(rng.integers(len(self.images)))
        shape = self.masks[index].shape
        lowest = [min(0, s - o) for s, o in zip(shape, self.output_size)]
        highest = [max(0, s - o) for s, o in zip(shape, self.output_size)]
        if rng.random() < self.foreground_oversample:
            coords = self._foreground_coords(index)
            if len(coords):
                centre = coords[rng.integers(len(coords))]
                start = np.clip(centre - np.asarray(self.output_size) // 2, lowest, highest)
                return index, tuple(int(s) for s in start)
        return index, tuple(int(rng.integers(lo, hi + 1)) for lo, hi in zip(lowest, highest))

    def _foreground_coords(self, index: int) -> np.ndarray:
        if index not in self._foreground:
            mask = self.masks[index]
            step = sample_step(mask.shape)
            self._foreground[index] = np.argwhere(strided_sample(mask) > 0) * step
        return self._foreground[index]

    def read_window(self, index: int, start, image_out=None, mask_out=None):
        """The image and mask windows at `start` in their stored dtypes, or written into
        `image_out` (C, *input_size) and `mask_out` (*output_size) (any dtypes)."""
        image_start = [s - m for s, m in zip(start, self.margin)]
        image = crop_mirrored(self.images[index], image_start, self.input_size, out=image_out)
        mask = crop_mirrored(self.masks[index], start, self.output_size, out=mask_out)
        return image, mask


def crop_mirrored(array, start, size, out=None) -> np.ndarray:
    """The window [start, start + size) of the last len(size) axes, mirrored where it leaves
    the array, as a new array or written into `out`. Mirrored or not, every axis is a few
    runs of consecutive (or reversed) indices, so the window is copied as a few blocks of
    basic slices: cheap on memory maps, and no gather of every pixel."""
    lead = array.ndim - len(size)
    runs = [_runs(int(b), int(n), int(s)) for b, n, s in zip(start, size, array.shape[lead:])]
    if out is None:
        out = np.empty(tuple(array.shape[:lead]) + tuple(size), array.dtype)
    for block in itertools.product(*runs):
        target = (Ellipsis,) + tuple(slice(at, at + n) for at, n, _ in block)
        out[target] = array[(Ellipsis,) + tuple(source for _, _, source in block)]
    return out


def _runs(start: int, length: int, size: int) -> list:
    """[(position, length, source slice)] covering [start, start + length) mirrored into
    [0, size): between two reflections (multiples of size - 1) the mirrored index runs with
    step +1 or -1, so each stretch is one slice."""
    if size == 1:
        return [(0, length, slice(0, 1))]  # broadcast along the axis
    runs, position, period = [], start, size - 1
    while position < start + length:
        stop = min(start + length, (position // period + 1) * period)
        first, last = (int(i) for i in _mirror(np.array([position, stop - 1]), size))
        if last >= first:
            source = slice(first, last + 1)
        else:
            source = slice(first, last - 1 if last > 0 else None, -1)
        runs.append((position - start, stop - position, source))
        position = stop
    return runs


def _mirror(index: np.ndarray, size: int) -> np.ndarray:
    """Indices reflected into [0, size) like numpy's 'reflect' padding, for any distance."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    index = np.abs(index) % period
    return np.where(index >= size, period - index, index)
