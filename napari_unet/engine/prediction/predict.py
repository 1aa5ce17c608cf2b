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
from .objects import keep_largest_object, make_objects, objects_note, objects_wanted  # noqa: F401 (public here too)
from .scale import (
    back_to,
    check_diameter,
    median_diameter,
    objects_of,
    preview,
    resized,
    scale_for,
    trained_diameter,
)
from .sliding_window import iter_sliding_window


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
            spacing=None, objects_out=None, diameter=None):
    """Yield TilesDone events, then one PredictionDone. Closing the generator cancels.
    ``threshold`` and ``keep_largest`` None: the run's own. ``axes``: the image's axes
    letters where known (napari_unet.layouts), e.g. "CZYX" for a channel group.
    ``backend``: torch, onnxruntime, openvino or auto (engine.backends).
    ``instances`` (:func:`make_objects`): None = the run's own (objects for a model trained
    with ``--instances boundary``, the cells for a model whose data_info says objects:
    membranes, none otherwise), "off", "auto" or "membranes"; ``spacing``:
    the voxel size per spatial axis (anisotropic volumes), ``objects_out``: where they go.
    ``checkpoint``: one model, or several (a list of runs, an :class:`Ensemble`) whose
    probabilities are averaged. ``diameter`` (a model that knows its objects' size, the
    built-in ones): None or "auto" measures the image's objects and predicts at the scale
    that matches them (:mod:`.scale`), pixels give their size, "off" keeps the image's scale."""
    checkpoint = load_models(checkpoint)
    diameter = check_diameter(diameter)
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
    image = prepare_image(image, checkpoint.model.spatial_dims, checkpoint.model.in_channels,
                          axes, luminance=reads_luminance(checkpoint))
    stats = NormStats.from_dict(checkpoint.norm_stats)
    common = dict(head=checkpoint.head, tile_size=_tile_size(checkpoint, tile_size),
                  overlap=overlap, batch_size=batch_size, tta=tta, amp=amp, device=device,
                  threshold=checkpoint.config.threshold if threshold is None else threshold,
                  channels_last=channels_last and checkpoint.model.spatial_dims == 2)
    scale = 1.0
    if trained_diameter(checkpoint) and diameter != "off":
        scale = yield from _choose_scale(model, image, stats, trained_diameter(checkpoint),
                                         diameter, common)
    yield from predict_with_model(
        model, image, stats, **common,
        out=out, labels_out=labels_out, resample=checkpoint.config.resample, scale=scale,
        keep_largest=checkpoint.config.keep_largest if keep_largest is None else keep_largest,
        instances=objects_wanted(checkpoint.head, instances, own_objects(checkpoint)),
        spacing=spacing, objects_out=objects_out)


def reads_luminance(checkpoint) -> bool:
    """Whether a one-channel model reads colour images by their luminance (its data_info says
    so: the built-in nuclei)."""
    return getattr(checkpoint, "data_info", {}).get("colour") == "luminance"


def own_objects(checkpoint) -> str | None:
    """The objects a model makes unless asked otherwise, where its data_info names them (the
    built-in membranes: the cells between the membranes)."""
    return getattr(checkpoint, "data_info", {}).get("objects")


def _choose_scale(model, image, stats, trained: float, diameter, common):
    """The scale to predict `image` at (a generator: yields the line that says why): from the
    given `diameter`, else from the objects of a first pass over the image's middle."""
    if isinstance(diameter, float):
        scale, note = scale_for(diameter, trained, given=True)
    else:
        # the foreground's connected parts: a model splits objects larger than its own into
        # pieces, but not their foreground
        done = run_to_end(predict_with_model(model, preview(image), stats, **common))
        measured = median_diameter(objects_of(done.labels, None))
        scale, note = scale_for(measured, trained, given=False)
    yield Message("info", note)
    return scale


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
                                  checkpoint.model.in_channels, axes,
                                  luminance=reads_luminance(checkpoint)).shape[1:])
    k = checkpoint.head.blended_channels
    shapes = {"out": ((k, *spatial) if k > 1 else spatial, np.dtype(np.float32)),
              "labels_out": (spatial, np.dtype(np.uint8))}
    if objects_wanted(checkpoint.head, instances, own_objects(checkpoint)):
        shapes["objects_out"] = (spatial, np.dtype(np.uint32))
    return shapes


def predict_with_model(model, image, stats: NormStats, *, head: LabelHead, tile_size,
                       overlap=0.25, batch_size=4, tta=False, amp="auto", device="cpu",
                       threshold=0.5, out=None, labels_out=None, channels_last=True,
                       resample: int = 1, keep_largest: bool = False, instances=None,
                       spacing=None, objects_out=None, scale: float = 1.0):
    """Sliding-window prediction of a channel-first image, normalised tile by tile (zscore_case:
    with the image's own statistics); ``head`` says what the outputs mean. ``resample`` > 1: the model was trained at 1/resample of
    the resolution; the normalised image is averaged down (in memory), predicted, and the
    probabilities are interpolated back to the image's grid before the labels are taken.
    ``instances`` "auto" or "membranes": objects are made too (:func:`make_objects`).
    ``scale`` (not with ``resample``): the normalised image is resized by it across the image
    plane, predicted, and the probabilities resized back (objects of another size)."""
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
    elif scale != 1.0:
        scaled = resized(normalize(image, stats), scale)
        probabilities = yield from _window_with_retries(
            model, scaled, batch_size, preprocess=None, out=None, labels_out=None, **options)
        probabilities = _into(back_to(probabilities, image.shape[1:]), out)
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
    return _into(full if many else full[0], out)


def _into(array, out):
    if out is None:
        return array
    out[...] = array
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
    objects = objects_wanted(checkpoint.head, options.pop("instances", None),
                             own_objects(checkpoint))
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
