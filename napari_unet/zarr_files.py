"""OME-Zarr in and out (OME-NGFF 0.4 and 0.5), lazily: the `[zarr]` extra (zarr, ome-zarr).

In: a local ``.zarr`` image group (its ``multiscales`` metadata: the axes, each level's path
and scale) opens as a dask array of one resolution level, read chunk by chunk as the engine
slices it (patches, tiles), never whole; a labels group (``image.zarr/labels/NAME``) is an
image group of its own and opens the same way, as a mask. The spatial scale of the level is
the voxel spacing. A time axis of length 1 is dropped; longer ones are refused.

Out: a prediction as an OME-Zarr image of the probabilities (channels first) with a pyramid,
and its labels (classes or objects) in the group's ``labels/prediction``, as napari-ome-zarr
opens them. The group is written under a temporary name beside the target and renamed at the
end, so a killed run leaves a ``.partial`` folder that no reader takes for the result.
"""
from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError, OutputExistsError

ZARR_SUFFIX = ".zarr"
SPATIAL = "zyx"


def blocks_store(output) -> Path:
    """The scratch store of a prediction of `output` over workers (its finished blocks, kept
    for ``--resume``): ``.NAME.zarr.blocks`` beside it. Any finished write of `output`
    removes it (write_prediction): its blocks are stale then."""
    output = Path(output)
    return output.with_name(f".{output.name}.blocks")


def is_zarr(path) -> bool:
    """Whether `path` names a Zarr group: a ``.zarr`` folder, or a folder with Zarr metadata."""
    path = Path(path)
    if path.suffix.lower() == ZARR_SUFFIX:
        return True
    return path.is_dir() and any((path / name).is_file()
                                 for name in ("zarr.json", ".zattrs", ".zgroup"))


@dataclass(frozen=True)
class ZarrImage:
    """One resolution level of an OME-Zarr image: a lazy array, its axes and scale."""

    array: object  # dask array
    axes: str      # lower-case axis names, e.g. "czyx"
    scale: tuple   # per axis
    levels: int    # resolution levels in the group
    labels: tuple  # names of the group's label images

    @property
    def spacing(self) -> tuple | None:
        """The voxel size of the spatial axes (slowest first)."""
        values = [s for a, s in zip(self.axes, self.scale) if a in SPATIAL]
        return tuple(float(v) for v in values) if values else None


def _require():
    try:
        import dask.array as da
        import zarr
    except ImportError:
        raise DataError("OME-Zarr needs the [zarr] extra: pip install 'napari-unet-torch[zarr]'"
                        ) from None
    return zarr, da


def _ome(attrs) -> dict:
    """NGFF 0.5 keeps its metadata under "ome", 0.4 at the top."""
    attrs = dict(attrs)
    return dict(attrs.get("ome", attrs))


def open_zarr(path, level: int = 0) -> ZarrImage:
    """A level of the OME-Zarr image group at `path` (module docstring), or a one-line error."""
    zarr, da = _require()
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist: check the path")
    own_level = _level_of(zarr, path)  # a level's own folder: image.zarr/s1
    if own_level is not None:
        return open_zarr(path.parent, own_level)
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr's errors vary; the user needs one line
        raise DataError(f"cannot open {path} as a Zarr group ({str(exc)[:100]})") from None
    multiscales = _ome(group.attrs).get("multiscales")
    if not multiscales:
        raise DataError(f"{path} has no OME-NGFF multiscales metadata: give an OME-Zarr image "
                        f"group (e.g. image.zarr or image.zarr/labels/NAME)")
    found = multiscales[0]
    datasets = found["datasets"]
    if not 0 <= level < len(datasets):
        raise DataError(f"{path} has {len(datasets)} resolution level(s): choose 0.."
                        f"{len(datasets) - 1}")
    axes = "".join((a["name"] if isinstance(a, dict) else str(a))[0] for a in found["axes"])
    axes = axes.lower()
    scale = _scale(datasets[level], len(axes))
    array = da.from_zarr(group[datasets[level]["path"]])
    if "t" in axes:
        t = axes.index("t")
        if array.shape[t] != 1:
            raise DataError(f"{path} has {array.shape[t]} time points: napari-unet segments "
                            f"one at a time; write each as its own image")
        array = array[(slice(None),) * t + (0,)]
        axes, scale = axes.replace("t", ""), scale[:t] + scale[t + 1:]
    labels = ()
    if "labels" in group:
        labels = tuple(_ome(group["labels"].attrs).get("labels", ()))
    return ZarrImage(array, axes, scale, len(datasets), labels)


def _level_of(zarr, path: Path):
    """The level whose dataset is the folder `path` of its parent image group, else None."""
    try:
        parent = zarr.open_group(str(path.parent), mode="r")
    except Exception:  # noqa: BLE001 - not a group: no level
        return None
    for found in _ome(parent.attrs).get("multiscales") or ():
        for level, dataset in enumerate(found.get("datasets", ())):
            if dataset.get("path") == path.name:
                return level
    return None


def _scale(dataset: dict, ndim: int) -> tuple:
    for transform in dataset.get("coordinateTransformations", ()):
        if transform.get("type") == "scale":
            return tuple(float(v) for v in transform["scale"])
    return (1.0,) * ndim


def write_prediction(path, probabilities, labels, *, spacing=None, overwrite=False,
                     chunk: int = 64) -> Path:
    """Write `probabilities` ((C, *spatial) or (*spatial)) and `labels` (*spatial; classes or
    objects) as an OME-Zarr image group with a pyramid and ``labels/prediction``, chunk by
    chunk from the arrays given (memory maps stay on disk), atomically (module docstring)."""
    zarr, da = _require()
    from ome_zarr.writer import write_image, write_labels

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists: pass --overwrite to replace it")
    spatial = np.shape(labels)
    dims = len(spatial)
    many = len(np.shape(probabilities)) == dims + 1
    image = da.from_array(probabilities, chunks=((1,) if many else ()) + (chunk,) * dims)
    image = image if many else image[None]
    mask = da.from_array(labels, chunks=(chunk,) * dims)
    axes = "c" + SPATIAL[-dims:]
    step = tuple(float(s) for s in (spacing or (1.0,) * dims))
    factors = _factors(spatial, chunk)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        group = zarr.open_group(str(partial), mode="w")
        write_image(image, group, axes=axes, scale_factors=factors,
                    scale={"c": 1.0, **dict(zip(axes[1:], step))}, name="prediction")
        write_labels(mask, group, name="prediction", axes=axes[1:], scale_factors=factors,
                     scale=dict(zip(axes[1:], step)))
        _commit(partial, path, overwrite)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(blocks_store(path), ignore_errors=True)  # a cancelled run's, now stale
    return path


def _factors(spatial, chunk: int) -> list[dict]:
    """The pyramid's downscaling per level: halve Y and X (and Z while it stays deep) until
    the plane's smaller side would go under a chunk, at most 4 levels below the full one."""
    names = SPATIAL[-len(spatial):]
    factors, k, z = [], 1, 1
    while min(spatial[-2:]) // 2 ** k >= chunk and k <= 4:
        if len(spatial) == 3 and spatial[0] // (2 * z) >= chunk:
            z *= 2  # Z halves with the plane while it stays deep; a level never regains it
        factors.append({name: (z if name == "z" else 2 ** k) for name in names})
        k += 1
    return factors


def _commit(partial: Path, path: Path, overwrite: bool) -> None:
    """Rename the finished group into place; an old one (overwrite) is moved aside first."""
    old = None
    if path.exists():
        if not overwrite:
            raise OutputExistsError(f"{path} exists: pass --overwrite to replace it")
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(path, old)
    os.replace(partial, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
