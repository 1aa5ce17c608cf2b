"""Prediction with a trained model: the engine's `predict`, `predict_array`, `predict_file`.

Tiling, blending and TTA live in :mod:`.sliding_window`; this module adds what a run knows
(normalisation, tile size, threshold, its label head) and the files.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage  # a dependency of scikit-image

from ...choices import OBJECT_MODES
from ...errors import ConfigError, OutOfMemory, OutputExistsError
from ...io import TIF_SUFFIXES, TifMemmapWriter, read_image, read_spacing
from ...zarr_files import ZARR_SUFFIX, write_prediction
from ..checkpoint import Checkpoint
from ..data.layout import prepare_image
from ..data.normalization import NormStats, normalize, stats_for_image
from ..data.resolution import downsample_image, upsample_probabilities
from ..events import Message, TilesDone
from ..labels import LabelHead
from ..runtime import resolve_amp, resolve_device
from .backends import backend_model
from .ensemble import Ensemble, load_models
from .instances import cells_from_membranes, label_blocks, objects_from_probabilities
from .sliding_window import iter_sliding_window

BLOCK_VOXELS = 1 << 25   # objects of larger images are made block by block
BLOCK_SIDE, BLOCK_HALO = 256, 32


@dataclass(frozen=True)
class PredictionDone:
    """The last item `predict` yields: arrays (or memory maps) of the result; ``objects``:
    the instance labels (uint32, one id per object) where objects were made."""

    probabilities: np.ndarray
    labels: np.ndarray
    objects: np.ndarray | None = None


def _tile_size(checkpoint: Checkpoint, tile_size):
    if tile_size:
        sizes = list(tile_size)
        dims = checkpoint.model.spatial_dims
        return sizes * dims if len(sizes) == 1 else sizes
    return checkpoint.data_info.get("input_size") or checkpoint.config.patch_size


def predict(checkpoint, image, *, tile_size=None, overlap=0.25, batch_size=4, tta=False,
            amp="auto", device="auto", threshold=None, out=None, labels_out=None,
            channels_last=True, backend="torch", keep_largest=None, axes=None, instances=None,
            spacing=None, objects_out=None):
    """Yield TilesDone events, then one PredictionDone. Closing the generator cancels.
    ``threshold`` and ``keep_largest`` None: the run's own. ``axes``: the image's axes
    letters where known (napari_unet.layouts), e.g. "CZYX" for a channel group.
    ``backend``: torch, onnxruntime, openvino or auto (engine.backends).
    ``instances`` (:func:`make_objects`): None = the run's own (objects for a model trained
    with ``--instances boundary``, none otherwise), "off", "auto" or "membranes"; ``spacing``:
    the voxel size per spatial axis (anisotropic volumes), ``objects_out``: where they go.
    ``checkpoint``: one model, or several (a list of runs, an :class:`Ensemble`) whose
    probabilities are averaged."""
    checkpoint = load_models(checkpoint)
    amp, note = resolve_amp(resolve_device(device), amp)
    if note:
        yield Message("warning", note)
    if isinstance(checkpoint, Ensemble):
        yield from _predict_ensemble(
            checkpoint, image, out=out, labels_out=labels_out, axes=axes,
            threshold=checkpoint.config.threshold if threshold is None else threshold,
            keep_largest=checkpoint.config.keep_largest if keep_largest is None else keep_largest,
            instances=objects_wanted(checkpoint.head, instances), spacing=spacing,
            objects_out=objects_out, tile_size=tile_size, overlap=overlap,
            batch_size=batch_size, tta=tta, amp=amp, device=device,
            channels_last=channels_last, backend=backend)
        return
    device = resolve_device(device)
    model = backend_model(checkpoint.model, backend, device, amp)
    channels_last = channels_last and model is checkpoint.model
    yield from predict_with_model(
        model, prepare_image(image, checkpoint.model.spatial_dims, checkpoint.model.in_channels,
                             axes),
        NormStats.from_dict(checkpoint.norm_stats), head=checkpoint.head,
        tile_size=_tile_size(checkpoint, tile_size),
        overlap=overlap, batch_size=batch_size, tta=tta, amp=amp, device=device,
        threshold=checkpoint.config.threshold if threshold is None else threshold,
        out=out, labels_out=labels_out, resample=checkpoint.config.resample,
        keep_largest=checkpoint.config.keep_largest if keep_largest is None else keep_largest,
        channels_last=channels_last and checkpoint.model.spatial_dims == 2,
        instances=objects_wanted(checkpoint.head, instances), spacing=spacing,
        objects_out=objects_out)


def _predict_ensemble(ensemble: Ensemble, image, *, out, labels_out, threshold, keep_largest,
                      instances, spacing, objects_out, axes, **options):
    """predict() of several models: their probabilities averaged, then the labels, the
    largest object and the objects, once (the first model's head and settings)."""
    total, count = None, len(ensemble.members)
    for index, member in enumerate(ensemble.members):
        yield Message("info", f"model {index + 1} of {count}: {member.path}")
        for event in predict(member, image, axes=axes, keep_largest=False, instances="off",
                             **options):
            if isinstance(event, PredictionDone):
                probabilities = np.asarray(event.probabilities, np.float32)
                total = probabilities.copy() if total is None else total + probabilities
            elif isinstance(event, TilesDone):  # one bar over all the models
                yield TilesDone(index * event.total + event.done, count * event.total)
            else:
                yield event
    total /= count
    if out is not None:
        out[...] = total
        total = out
    if labels_out is not None:
        labels_out[...] = ensemble.head.labels(total, threshold)
    yield from _finish(total, labels_out, ensemble.head, threshold, keep_largest, instances,
                       spacing, objects_out, ensemble.model.spatial_dims)


def output_shapes(checkpoint: Checkpoint, image, axes=None, instances=None) -> dict:
    """What a prediction of `image` fills, by :func:`predict`'s keywords, each (shape, dtype):
    ``out`` (the probabilities), ``labels_out`` (the classes) and, where objects are made,
    ``objects_out``; for callers that give their own arrays (memory maps, scratch files)."""
    spatial = tuple(prepare_image(image, checkpoint.model.spatial_dims,
                                  checkpoint.model.in_channels, axes).shape[1:])
    k = checkpoint.head.blended_channels
    shapes = {"out": ((k, *spatial) if k > 1 else spatial, np.dtype(np.float32)),
              "labels_out": (spatial, np.dtype(np.uint8))}
    if objects_wanted(checkpoint.head, instances):
        shapes["objects_out"] = (spatial, np.dtype(np.uint32))
    return shapes


def objects_wanted(head: LabelHead, instances) -> str | None:
    """The objects a prediction makes: None (none), "auto" or "membranes" (make_objects)."""
    if instances is None:
        return "auto" if head.objects else None
    if instances not in OBJECT_MODES:
        raise ConfigError(f"instances={instances!r}: choose one of {', '.join(OBJECT_MODES)}")
    if instances == "membranes" and head.blended_channels != 1:
        raise ConfigError("--instances membranes needs a model of one foreground (the "
                          "membrane): this model has several outputs")
    return None if instances == "off" else instances


def predict_with_model(model, image, stats: NormStats, *, head: LabelHead, tile_size,
                       overlap=0.25, batch_size=4, tta=False, amp="auto", device="cpu",
                       threshold=0.5, out=None, labels_out=None, channels_last=True,
                       resample: int = 1, keep_largest: bool = False, instances=None,
                       spacing=None, objects_out=None):
    """Sliding-window prediction of a channel-first image, normalised tile by tile (zscore_case:
    with the image's own statistics); ``head`` says what the outputs mean. ``resample`` > 1: the model was trained at 1/resample of
    the resolution; the normalised image is averaged down (in memory), predicted, and the
    probabilities are interpolated back to the image's grid before the labels are taken.
    ``instances`` "auto" or "membranes": objects are made too (:func:`make_objects`)."""
    device = torch.device(device)
    model = model.to(device)
    stats = stats_for_image(image, stats)
    options = dict(tile_size=tile_size, overlap=overlap, tta=tta, amp=amp, device=device,
                   channels_last=channels_last, threshold=threshold, head=head)
    if resample > 1:
        small = downsample_image(normalize(image, stats), resample)
        probabilities = yield from _window_with_retries(
            model, small, batch_size, preprocess=None, out=None, labels_out=None, **options)
        probabilities = _upsampled(probabilities, head, resample, image.shape[1:], out)
        if labels_out is not None:
            labels_out[...] = head.labels(probabilities, threshold)
    else:
        probabilities = yield from _window_with_retries(
            model, image, batch_size, preprocess=lambda region: normalize(region, stats),
            out=out, labels_out=labels_out, **options)
    yield from _finish(probabilities, labels_out, head, threshold, keep_largest, instances,
                       spacing, objects_out, getattr(model, "spatial_dims", None))


def _finish(probabilities, labels_out, head: LabelHead, threshold, keep_largest, instances,
            spacing, objects_out, dims):
    """The end of a prediction (one model's or an ensemble's): the labels (``labels_out``
    where already filled), the largest object, the objects; then PredictionDone."""
    labels = labels_out if labels_out is not None else head.labels(probabilities, threshold)
    if keep_largest:
        keep_largest_object(labels)
    objects = None
    if instances:
        yield Message("info", f"making objects ({instances})")
        objects = make_objects(probabilities, labels, head, instances, spacing, objects_out,
                               dims=dims or np.ndim(labels))
        note = objects_note(labels, objects, head, instances)
        if note:
            yield Message("warning", note)
    yield PredictionDone(probabilities=probabilities, labels=labels, objects=objects)


def make_objects(probabilities, labels, head: LabelHead, how="auto", spacing=None, out=None,
                 dims=None):
    """uint32 instance labels (into ``out`` where given) of a prediction:

    - a model of background / interior / boundary (``--instances boundary``): seeded watershed
      of its probabilities (prediction.instances.objects_from_probabilities);
    - "membranes", a model of one foreground that is a membrane (ISBI 2012's EM): the cells
      between the membranes (prediction.instances.cells_from_membranes);
    - any other model: the connected components of its foreground (labels > 0; faces only).

    ``dims``: the model's (2 for a 2D model over a stack: each slice's objects on their own,
    numbered on from the slice before). Images larger than BLOCK_VOXELS are made block by
    block with halos (objects that cross blocks keep one id): the memory of a few blocks."""
    shape = tuple(np.shape(labels))
    dims = dims or len(shape)
    spacing = tuple(spacing[-dims:]) if spacing is not None and len(spacing) >= dims else None
    if out is None:
        out = np.zeros(shape, np.uint32)
    objects_wanted(head, how)  # a membrane model for "membranes"
    many = head.blended_channels > 1
    if len(shape) > dims:  # a stack under a 2D model
        offset = 0
        for z in range(shape[0]):
            probs = probabilities[:, z] if many else probabilities[z]
            part = _objects_of(probs, labels[z], head, how, spacing)
            out[z] = np.where(part > 0, part + np.uint32(offset), 0)
            offset += int(part.max(initial=0))
        return out
    return _objects_of(probabilities, labels, head, how, spacing, out)


def objects_note(labels, objects, head: LabelHead, how) -> str | None:
    """A warning when the objects show that the mode does not fit the model: "membranes" of
    a model whose foreground is objects (no cell, or more foreground regions than cells:
    membranes are a network that divides the image into cells), or the connected components
    of a membrane model (one object, a network around many regions). Images of up to
    BLOCK_VOXELS only (a look at the whole costs a labelling of it)."""
    if head.objects or int(np.prod(np.shape(labels))) > BLOCK_VOXELS:
        return None
    foreground = np.asarray(labels) > 0
    count = len(np.unique(np.asarray(objects))) - int(np.any(np.asarray(objects) == 0))
    if how == "membranes":
        regions = ndimage.label(foreground)[1]
        if count == 0 or (count <= 1 < regions) or regions > count:
            return (f"--instances membranes found {count} cell(s) between {regions} separate "
                    "foreground region(s): this model's foreground looks like objects, not "
                    "membranes (a membrane network divides the image into cells); for objects "
                    "of the foreground, use --instances auto")
    elif count == 1:
        enclosed = ndimage.label(~foreground)[1]
        if enclosed >= 3:
            return (f"--instances auto found one object, a network around {enclosed} regions: "
                    "if the model's foreground is membranes (EM), use --instances membranes "
                    "for the cells between them")
    return None


def _objects_of(probabilities, labels, head, how, spacing, out=None):
    """make_objects of one image or volume of the model's dimensions."""
    blocks = {}
    if int(np.prod(np.shape(labels))) > BLOCK_VOXELS:
        blocks = dict(block_shape=(BLOCK_SIDE,) * np.ndim(labels), halo=BLOCK_HALO)
    if how == "membranes":
        return cells_from_membranes(probabilities, spacing=spacing, out=out, **blocks)
    if head.objects:
        return objects_from_probabilities(probabilities, spacing=spacing, out=out, **blocks)
    return label_blocks(lambda core: np.asarray(labels[core]) > 0, np.shape(labels),
                        blocks.get("block_shape"), out)[0]


def keep_largest_object(labels, core_values=()) -> None:
    """Clear, in place, every foreground voxel outside the largest connected object of
    ``labels > 0`` (full connectivity: 8 in 2D, 26 in 3D). With `core_values` (a region
    model's inner labels, e.g. the tumour core's), every object that holds a voxel of them is
    kept instead (the largest where none does): a whole tumour is the parts around a core."""
    foreground = np.asarray(labels) > 0
    components, count = ndimage.label(foreground, np.ones((3,) * foreground.ndim, bool))
    if count <= 1:
        return
    if len(core_values):
        cored = np.unique(components[np.isin(labels, core_values)])
        cored = cored[cored > 0]
        if cored.size:
            labels[foreground & ~np.isin(components, cored)] = 0
            return
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    labels[(components != int(sizes.argmax())) & foreground] = 0


def _window_with_retries(model, image, batch_size, *, tile_size, device, **options):
    while True:
        try:
            return (yield from iter_sliding_window(model, image, tile_size=tile_size,
                                                   batch_size=batch_size, device=device,
                                                   **options))
        except torch.OutOfMemoryError:
            # fewer tiles per batch need less memory: retry by itself before giving up
            if batch_size == 1:
                raise OutOfMemory(f"out of {device.type.upper()} memory with one tile of "
                                  f"{'x'.join(map(str, tile_size))}: lower --tile-size or use "
                                  f"--amp bf16") from None
            batch_size //= 2
            if device.type == "cuda":
                torch.cuda.empty_cache()
            yield Message("warning", f"out of memory: retrying with {batch_size} tile(s) "
                                     f"per batch")


def _upsampled(probabilities, head: LabelHead, factor, shape, out):
    """Low-resolution probabilities ((*s) or (K, *s)) at the full `shape`, into `out` if given."""
    many = head.blended_channels > 1
    probs = torch.from_numpy(np.asarray(probabilities))
    full = upsample_probabilities(probs if many else probs[None], factor, shape).numpy()
    full = full if many else full[0]
    if out is None:
        return full
    out[...] = full
    return out


def run_to_end(events) -> PredictionDone:
    done = None
    for event in events:
        if isinstance(event, PredictionDone):
            done = event
    return done


def predict_array(checkpoint, image, **options):
    """(probabilities, labels) of one image; the blocking form of :func:`predict`."""
    done = run_to_end(predict(checkpoint, image, **options))
    return done.probabilities, done.labels


def predict_file(run, input_path, labels_path, *, probabilities=None, overwrite=False,
                 **options):
    """Predict a TIF from disk into TIF files, streaming through memory maps; yields events.
    Where objects are made (``instances``, or a model of objects), `labels_path` gets them
    (uint32, one id per object) instead of the classes. ``run``: a run folder, checkpoint,
    package or an already loaded :class:`Checkpoint`; a list of them: their ensemble."""
    labels_path = Path(labels_path)
    check_output_paths(input_path, labels_path, probabilities)
    checkpoint = load_models(run)
    if labels_path.suffix.lower() == ZARR_SUFFIX:
        yield from _predict_to_zarr(checkpoint, input_path, labels_path, probabilities,
                                    overwrite, options)
        return
    for path in (labels_path, probabilities):
        if path is not None and Path(path).exists() and not overwrite:
            raise OutputExistsError(f"{path} exists: pass --overwrite to replace it")
    image = read_image(input_path, mmap=True)
    objects = objects_wanted(checkpoint.head, options.pop("instances", None))
    shapes = output_shapes(checkpoint, image, instances=objects or "off")
    spatial, prob_shape = shapes["labels_out"][0], shapes["out"][0]
    prob_target = probabilities or labels_path.with_name(labels_path.name + ".probabilities.tmp")
    if objects and options.get("spacing") is None:
        options["spacing"] = _spacing(input_path, len(spatial))
    # objects: the classes go to a scratch file beside them (streamed as the tiles are)
    classes_target = labels_path.with_name(labels_path.name + ".classes.tmp")
    try:
        with TifMemmapWriter(labels_path, spatial, np.uint32 if objects else np.uint8,
                             overwrite=overwrite) as labels_out, \
                TifMemmapWriter(prob_target, prob_shape, np.float32, overwrite=True) as prob_out, \
                (TifMemmapWriter(classes_target, spatial, np.uint8, overwrite=True) if objects
                 else nullcontext()) as classes_out:
            outputs = dict(objects_out=labels_out, labels_out=classes_out) if objects else \
                dict(labels_out=labels_out)
            for event in predict(checkpoint, image, out=prob_out, instances=objects or "off",
                                 **outputs, **options):
                if not isinstance(event, PredictionDone):
                    yield event
    finally:  # the scratch files, also when a write failed
        for scratch in ((prob_target,) if probabilities is None else ()) + (classes_target,):
            Path(scratch).unlink(missing_ok=True)


def check_output_paths(input_path, labels_path, probabilities=None) -> None:
    """One line, before anything is read or written, for outputs that cannot be what was
    meant: a file type other than TIF (or OME-Zarr for the labels), the input image itself,
    or the labels and the probabilities in one file."""
    labels_path = Path(labels_path)
    allowed = {"labels": TIF_SUFFIXES + (ZARR_SUFFIX,), "probabilities": TIF_SUFFIXES}
    for what, path in (("labels", labels_path), ("probabilities", probabilities)):
        if path is None:
            continue
        path = Path(path)
        if path.is_dir() and path.suffix.lower() != ZARR_SUFFIX:
            raise ConfigError(f"{path} is a folder: for one input image, name the {what} "
                              f"file, e.g. {path / ('image' + TIF_SUFFIXES[0])}")
        if path.suffix.lower() not in allowed[what]:
            raise ConfigError(f"{path}: the {what} are written as "
                              f"{'TIF or OME-Zarr' if what == 'labels' else 'TIF'}: "
                              f"name the file {path.stem}{allowed[what][0]}"
                              + (" (or .zarr)" if what == "labels" else ""))
        if _same_file(path, input_path):
            raise ConfigError(f"{path} is the input image: write the {what} to another file")
    if probabilities is not None and _same_file(labels_path, probabilities):
        raise ConfigError(f"the labels and the probabilities would both be {labels_path}: give "
                          f"--probabilities another file")


def _same_file(a, b) -> bool:
    a, b = Path(a), Path(b)
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _spacing(path, dims):
    """The voxel size a file states for its last `dims` axes, else None."""
    spacing = read_spacing(path)
    return tuple(spacing[-dims:]) if spacing is not None and len(spacing) >= dims else None


def _predict_to_zarr(checkpoint, input_path, target: Path, probabilities, overwrite, options):
    """predict_file into an OME-Zarr group (napari_unet.zarr_files): through scratch TIFs
    beside it (streamed as the tiles are), then chunk by chunk into the group."""
    if probabilities is not None:
        raise ConfigError(f"{target} (OME-Zarr) holds the probabilities and the labels: drop "
                          f"--probabilities")
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} exists: pass --overwrite to replace it")
    stem = target.with_name(f".{target.name}.{os.getpid()}")
    labels, probs = Path(f"{stem}.labels.tif"), Path(f"{stem}.probabilities.tif")
    try:
        yield from predict_file(checkpoint, input_path, labels, probabilities=probs,
                                overwrite=True, **options)
        labels_map = read_image(labels, mmap=True)
        write_prediction(target, read_image(probs, mmap=True), labels_map,
                         spacing=_spacing(input_path, labels_map.ndim), overwrite=overwrite)
    finally:
        for scratch in (labels, probs):
            scratch.unlink(missing_ok=True)
