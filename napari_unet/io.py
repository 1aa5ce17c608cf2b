"""Reading and writing images: TIF stacks (memory-mapped when possible), PNG/JPG/BMP,
OME-Zarr (lazily, napari_unet.zarr_files), atomic writes and memory-mapped TIF outputs bigger
than RAM.

numpy, tifffile and imageio only: the napari reader/writer and the engine share this module,
so it imports neither torch nor Qt.
"""
from __future__ import annotations

import contextlib
import glob
import math
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from napari_unet.errors import DataError, OutputExistsError
from napari_unet.layouts import writes_as_rgb
from napari_unet.zarr_files import is_zarr, open_zarr

TIF_SUFFIXES = (".tif", ".tiff")
OTHER_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
IMAGE_SUFFIXES = TIF_SUFFIXES + OTHER_IMAGE_SUFFIXES
MAX_LABEL_VALUES = 64
LABEL_WORDS = ("label", "mask", "seg")  # a file or layer named so holds a mask


# ---------------------------------------------------------------------------------- reading
def read_image(path, mmap: bool = True) -> np.ndarray:
    """Read a TIF (a read-only memory map when its pixels are stored uncompressed and in one
    piece, so stacks bigger than RAM open at once) or a PNG/JPG/BMP image.

    Raises DataError with a one-line message for a missing, empty, truncated or unsupported file.
    """
    path = Path(path)
    if is_zarr(path):  # OME-Zarr: a lazy (dask) array of its first level, read as sliced
        return open_zarr(path).array
    _check_readable(path)
    try:
        if path.suffix.lower() in TIF_SUFFIXES:
            return _read_tif(path, mmap)
        return np.asarray(iio.imread(path))
    except DataError:
        raise
    except Exception as exc:  # each library has its own exceptions; the user needs one message
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"cannot read {path} ({reason}): the file is damaged or not a "
            f"{path.suffix.lstrip('.').upper()} image; export it again"
        ) from exc


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path} does not exist: check the path")
    if path.is_dir():
        raise DataError(f"{path} is a folder: give an image file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(
            f"{path} is not a supported image ('{path.suffix}'): "
            f"use one of {', '.join(IMAGE_SUFFIXES)}"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes): copy or export it again")


def _read_tif(path: Path, mmap: bool) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        # dataoffset is only set when the pixels are uncompressed and contiguous
        offset = series.dataoffset
        if offset is not None and offset + series.nbytes > path.stat().st_size:
            raise DataError(f"{path} is truncated (shorter than its pixels): copy it again")
        if mmap and offset is not None:
            return tifffile.memmap(path, series=0, mode="r")
        return series.asarray()


def read_spacing(path) -> tuple | None:
    """The voxel spacing (Z, Y, X) a TIF states, slowest axis first, or None where it says
    nothing: tifffile's own metadata (``spacing``/``spacing_um``), else ImageJ's Z
    ``spacing`` with the X and Y resolution tags (pixels per unit)."""
    path = Path(path)
    if is_zarr(path):
        return open_zarr(path).spacing
    if path.suffix.lower() not in TIF_SUFFIXES:
        return None
    with tifffile.TiffFile(path) as tif:
        for shaped in tif.shaped_metadata or ():
            values = shaped.get("spacing_um") or shaped.get("spacing")
            if values and all(float(v) > 0 for v in values):
                return tuple(float(v) for v in values)
        imagej = tif.imagej_metadata or {}
        z_spacing = imagej.get("spacing")
        tags = tif.pages[0].tags
        if z_spacing and "XResolution" in tags and "YResolution" in tags:
            y, x = (_per_pixel(tags[name].value) for name in ("YResolution", "XResolution"))
            if y and x and float(z_spacing) > 0:
                return float(z_spacing), y, x
    return None


def _per_pixel(resolution) -> float | None:
    """A TIF resolution tag (pixels per unit, a fraction) as units per pixel."""
    numerator, denominator = resolution
    return denominator / numerator if numerator > 0 and denominator > 0 else None


def image_files(folder) -> list[Path]:
    """The images directly in a folder (hidden files left out), sorted by name."""
    return sorted(
        path for path in Path(folder).iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def is_glob(pattern) -> bool:
    return any(char in str(pattern) for char in "*?[")


def input_files(source) -> list[Path]:
    """The image files a user means by a file, a folder or a glob (``'scans/*.png'``, sorted);
    a clear error when there are none."""
    source = str(source)
    if is_glob(source):
        matches = [Path(p) for p in sorted(glob.glob(source, recursive=True))]
        files = [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise DataError(f"{source} matches no image ({', '.join(IMAGE_SUFFIXES)}): check "
                            f"the pattern (quote it so the shell does not expand it)")
        return files
    path = Path(source)
    if is_zarr(path):
        return [path]
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise DataError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return files
    _check_readable(path)
    return [path]


def sample_step(shape, max_items: int = 1_000_000) -> int:
    """The stride, the same on every axis, that leaves at most about `max_items` elements."""
    size = math.prod(shape)
    return max(1, math.ceil((size / max_items) ** (1.0 / max(len(shape), 1))))


def strided_sample(array: np.ndarray, max_items: int = 1_000_000) -> np.ndarray:
    """An evenly strided sub-grid of `array` with at most about `max_items` elements.

    Statistics of big (memory-mapped) arrays from a sample: reading a strided grid touches far
    fewer pages than the whole file, and a regular grid is deterministic.
    """
    step = sample_step(array.shape, max_items)
    return np.asarray(array[tuple(slice(None, None, step) for _ in range(array.ndim))])


def named_like_labels(name: str) -> bool:
    """Whether a file or layer name says it holds a mask ("scan_labels", "masks", "seg")."""
    return any(word in name.lower() for word in LABEL_WORDS)


def looks_like_labels(array: np.ndarray, name: str = "") -> bool:
    """Whether an array is more likely a mask (napari Labels layer) than an image."""
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        return False
    if named_like_labels(name):
        return True
    return len(np.unique(strided_sample(array))) <= MAX_LABEL_VALUES


# ---------------------------------------------------------------------------------- writing
@contextlib.contextmanager
def atomic_write(path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the same folder as `path`; on success it is flushed to disk
    and renamed to `path`, on error removed. Readers never see a half-written file, and an
    interrupted run never destroys the previous one.
    """
    path = Path(path)
    _refuse_existing(path, overwrite)
    if not path.parent.is_dir():
        raise DataError(f"folder {path.parent} does not exist: create it first")
    # same folder: os.replace is atomic only within one file system; keep the suffix so that
    # writers that choose the format from it still do the right thing
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        _fsync(tmp)
        _commit(tmp, path, overwrite)
    finally:
        if tmp.exists():
            tmp.unlink()


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists: pass --overwrite (overwrite=True) to replace it")


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _commit(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
    else:
        # a hard link fails if `path` appeared meanwhile: never overwrite someone else's file
        try:
            os.link(tmp, path)
        except FileExistsError:
            _refuse_existing(path, overwrite)
        except OSError:  # file systems without hard links
            _refuse_existing(path, overwrite)
            os.replace(tmp, path)
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX only)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def write_tif(path, array: np.ndarray, overwrite: bool = False, compression=None) -> Path:
    """Write `array` as a TIF atomically; `compression` as tifffile takes it (e.g. "zlib")."""
    array = np.asarray(array)
    rgb = writes_as_rgb(array.shape, array.dtype)  # the input-layout rule
    with atomic_write(path, overwrite) as tmp:
        tifffile.imwrite(
            tmp, array, compression=compression, photometric="rgb" if rgb else "minisblack"
        )
    return Path(path)


class TifMemmapWriter:
    """Context manager for outputs bigger than RAM: yields a writable memory-mapped TIF.

    The file is created under a temporary name, flushed and renamed to `path` on a clean exit
    and removed if the block raises, so a crash never leaves a half-written prediction.
    """

    def __init__(self, path, shape, dtype, overwrite: bool = False):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.overwrite = overwrite
        self._atomic = None
        self._array = None

    def __enter__(self) -> np.memmap:
        self._atomic = atomic_write(self.path, self.overwrite)
        tmp = self._atomic.__enter__()
        try:
            self._array = tifffile.memmap(
                tmp, shape=self.shape, dtype=self.dtype, photometric="minisblack"
            )
        except BaseException as exc:
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self._array

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self._array.flush()
        self._array = None  # drop our reference so the mapping can close
        return self._atomic.__exit__(exc_type, exc, traceback)
