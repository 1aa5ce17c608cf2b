"""Evaluation of a trained model on labelled data: the one ``evaluate`` that the CLI, the
widgets and the accuracy benchmark share.
"""
from __future__ import annotations

import numpy as np
import torch

from ..choices import IGNORE_CLASS
from .checkpoint import Checkpoint
from .data.dataset import Dataset, split_folds
from .export.loader import load_checkpoint
from .metrics import DiceAccumulator, per_image_dice, pixel_error, soft_dice_reference
from .prediction.predict import predict_array


def evaluate(checkpoint, dataset: Dataset, *, fold=None, tile_size=None, overlap=0.25,
             tta=False, amp="bf16", device="auto", backend="torch", batch_size=4,
             threshold=None, per_image=False, keep_labels=False) -> dict:
    """Dice per class and mean (and the references' metrics) of a run on labelled data.

    ``threshold`` None: the run's own. ``per_image``: also ``metrics["images"]``, one dict per
    image (name, whether its mask has foreground, its own Dice: ``dice`` of a binary model,
    ``<region>_dice`` of a region model), for benchmarks that average over images or cases;
    ``keep_labels`` adds each image's predicted labels there (pictures; not for JSON).
    """
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    config = checkpoint.config
    if fold is not None:
        _, indices = split_folds(len(dataset.images), fold, config.folds, config.split_seed)
        dataset = dataset.subset(indices)
    num_classes = max(2, checkpoint.data_info.get("num_classes", 2), dataset.num_classes)
    head = checkpoint.head
    accumulator = DiceAccumulator(num_classes)
    image_dice, errors, soft, images = [], [], [], []
    for image, mask, name in zip(dataset.images, dataset.masks, dataset.names):
        probabilities, labels = predict_array(checkpoint, image, tile_size=tile_size,
                                              overlap=overlap, tta=tta, amp=amp, device=device,
                                              backend=backend, batch_size=batch_size,
                                              threshold=threshold)
        accumulator.update(labels, mask)
        scored, scored_labels, scored_probs = _labelled_pixels(mask, labels, probabilities,
                                                               num_classes == 2)
        scores = {"name": name, "foreground": bool(np.any(scored))}
        if num_classes == 2:
            image_dice += per_image_dice(scored_labels[None], scored[None])
            errors.append(pixel_error(scored_labels, scored))
            soft.append(_soft_dice(scored_probs, scored))
            scores["dice"] = image_dice[-1]
        if head.regions and per_image:
            scores.update(_region_scores(labels, mask, num_classes, head))
        images.append(dict(scores, labels=labels) if keep_labels else scores)
    metrics = {"samples": len(dataset.images), "mean_dice": accumulator.mean_dice(),
               "foreground_dice": accumulator.mean_dice(include_background=False),
               "dice_per_class": accumulator.dice_per_class()}
    if head.regions:  # region models: the Dice of each region (BraTS WT, TC, ET)
        metrics["region_dice"] = accumulator.region_dice(head.regions)
        metrics.update(_region_scores(None, None, num_classes, head, accumulator))
    if num_classes == 2:
        metrics.update(soft_dice=float(np.mean(soft)), pixel_error=float(np.mean(errors)),
                       per_image_dice=float(np.mean(image_dice)))
    if per_image or keep_labels:
        metrics["images"] = images
    return metrics


def _labelled_pixels(mask, labels, probabilities, binary):
    """(mask, labels, probabilities) at the labelled pixels only (sparse masks: flattened)."""
    mask = np.asarray(mask)
    if not binary or int(mask.max(initial=0)) != IGNORE_CLASS:
        return mask, np.asarray(labels), probabilities
    keep = mask != IGNORE_CLASS
    return mask[keep], np.asarray(labels)[keep], np.asarray(probabilities)[keep]


def _region_scores(labels, mask, num_classes, head, accumulator=None) -> dict:
    """{"<region>_dice": Dice} over the counts of `accumulator`, or of one image's labels."""
    if accumulator is None:
        accumulator = DiceAccumulator(num_classes)
        accumulator.update(labels, mask)
    return {f"{key}_dice": value
            for key, value in zip(head.keys, accumulator.region_dice(head.regions))}


def _soft_dice(probabilities, mask):
    foreground = torch.as_tensor(np.asarray(probabilities, dtype=np.float32))
    probs = torch.stack([1 - foreground, foreground])[None]
    target = torch.as_tensor(np.asarray(mask, dtype=np.int64))
    onehot = torch.stack([target == 0, target == 1]).float()[None]
    return soft_dice_reference(probs, onehot)
