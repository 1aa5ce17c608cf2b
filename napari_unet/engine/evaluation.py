"""Evaluation of a trained model on labelled data: the one ``evaluate`` that the CLI, the
widgets and the accuracy benchmark share.
"""
from __future__ import annotations

import numpy as np
import torch

from .checkpoint import Checkpoint
from .data.dataset import Dataset, split_folds
from .export.loader import load_checkpoint
from .metrics import DiceAccumulator, per_image_dice, pixel_error, soft_dice_reference
from .prediction.predict import predict_array


def evaluate(checkpoint, dataset: Dataset, *, fold=None, tile_size=None, overlap=0.25,
             tta=False, amp="bf16", device="auto", backend="torch") -> dict:
    """Dice per class and mean (and the references' metrics) of a run on labelled data."""
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    config = checkpoint.config
    if fold is not None:
        _, indices = split_folds(len(dataset.images), fold, config.folds, config.split_seed)
        dataset = dataset.subset(indices)
    num_classes = max(2, checkpoint.data_info.get("num_classes", 2), dataset.num_classes)
    accumulator = DiceAccumulator(num_classes)
    image_dice, errors, soft = [], [], []
    for image, mask in zip(dataset.images, dataset.masks):
        probabilities, labels = predict_array(checkpoint, image, tile_size=tile_size,
                                              overlap=overlap, tta=tta, amp=amp, device=device,
                                              backend=backend)
        accumulator.update(labels, mask)
        if num_classes == 2:
            image_dice += per_image_dice(labels[None], np.asarray(mask)[None])
            errors.append(pixel_error(labels, mask))
            soft.append(_soft_dice(probabilities, mask))
    metrics = {"samples": len(dataset.images), "mean_dice": accumulator.mean_dice(),
               "foreground_dice": accumulator.mean_dice(include_background=False),
               "dice_per_class": accumulator.dice_per_class()}
    head = checkpoint.head
    if head.regions:  # region models: the Dice of each region (BraTS WT, TC, ET)
        per_region = accumulator.region_dice(head.regions)
        metrics["region_dice"] = per_region
        metrics.update({f"{key}_dice": value for key, value in zip(head.keys, per_region)})
    if num_classes == 2:
        metrics.update(soft_dice=float(np.mean(soft)), pixel_error=float(np.mean(errors)),
                       per_image_dice=float(np.mean(image_dice)))
    return metrics


def _soft_dice(probabilities, mask):
    foreground = torch.as_tensor(np.asarray(probabilities, dtype=np.float32))
    probs = torch.stack([1 - foreground, foreground])[None]
    target = torch.as_tensor(np.asarray(mask, dtype=np.int64))
    onehot = torch.stack([target == 0, target == 1]).float()[None]
    return soft_dice_reference(probs, onehot)
