"""Evaluation of a trained model on labelled data: the one ``evaluate`` that the CLI, the
widgets and the accuracy benchmark share.
"""
from __future__ import annotations

import numpy as np
import torch

from ..choices import IGNORE_CLASS
from ..errors import ConfigError
from .data.dataset import Dataset, split_folds
from .events import Message
from .instance_metrics import InstanceScores, connected_objects, rand_scores
from .metrics import DiceAccumulator, per_image_dice, pixel_error, soft_dice_reference
from .prediction.ensemble import load_models
from .prediction.predict import PredictionDone, objects_wanted, predict


def evaluate(checkpoint, dataset: Dataset, *, fold=None, tile_size=None, overlap=0.25,
             tta=False, amp="auto", device="auto", backend="torch", batch_size=4,
             threshold=None, per_image=False, keep_labels=False, instances=None) -> dict:
    """Dice per class and mean (and the references' metrics) of a run on labelled data.

    ``threshold`` None: the run's own. ``per_image``: also ``metrics["images"]``, one dict per
    image (name, whether its mask has foreground, its own Dice: ``dice`` of a binary model,
    ``<region>_dice`` of a region model), for benchmarks that average over images or cases;
    ``keep_labels`` adds each image's predicted labels there (pictures; not for JSON).
    ``instances`` (None: the run's own, as ``predict``): ``metrics["objects"]`` (_ObjectScorer).
    """
    checkpoint = load_models(checkpoint)  # one model, or several: their ensemble
    if fold is not None:
        dataset = _fold_of(dataset, fold, checkpoint.config)
    head = checkpoint.head
    dataset, notes = _as_the_run_reads(dataset, head)
    num_classes = max(2, checkpoint.data_info.get("num_classes", 2), dataset.num_classes)
    accumulator = DiceAccumulator(num_classes)
    image_dice, errors, soft, images = [], [], [], []
    objects = objects_wanted(head, instances)
    scorer = _ObjectScorer(objects, dataset) if objects else None
    for index, (image, mask, name) in enumerate(zip(dataset.images, dataset.masks,
                                                    dataset.names)):
        done = _predicted(predict(checkpoint, image, tile_size=tile_size, overlap=overlap,
                                  tta=tta, amp=amp, device=device, backend=backend,
                                  batch_size=batch_size, threshold=threshold,
                                  instances=objects or "off", spacing=dataset.spacing), notes)
        probabilities, labels = done.probabilities, done.labels
        accumulator.update(labels, mask)
        if scorer is not None:
            scorer.update(index, mask, done.objects)
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
    metrics = _dice_summary(accumulator, head, num_classes, len(dataset.images))
    if head.regions:  # region models: the Dice of each region (BraTS WT, TC, ET)
        metrics["region_dice"] = accumulator.region_dice(head.regions)
        metrics.update(_region_scores(None, None, num_classes, head, accumulator))
    if num_classes == 2:
        metrics.update(soft_dice=float(np.mean(soft)), pixel_error=float(np.mean(errors)),
                       per_image_dice=float(np.mean(image_dice)))
    if scorer is not None:
        metrics["objects"] = scorer.result()
    if per_image or keep_labels:
        metrics["images"] = images
    if notes:
        metrics["notes"] = notes
    return metrics


def _dice_summary(accumulator, head, num_classes: int, samples: int) -> dict:
    foreground = accumulator.mean_dice(include_background=False)
    if head.objects:  # background / interior / boundary: the objects' whole area, as the
        # masks' objects (not the mean of interior and boundary Dice: 0.66 for a 0.89 model)
        foreground = accumulator.region_dice([range(1, num_classes)])[0]
    return {"samples": samples, "mean_dice": accumulator.mean_dice(),
            "foreground_dice": foreground, "dice_per_class": accumulator.dice_per_class()}


def _fold_of(dataset: Dataset, fold: int, config) -> Dataset:
    """The validation part of fold `fold` of the run's split, or a one-line error."""
    if not 0 <= fold < config.folds:
        raise ConfigError(f"--fold {fold} does not exist: the run has folds "
                          f"0..{config.folds - 1}")
    if len(dataset.images) < config.folds:
        raise ConfigError(
            f"--fold {fold}: these data have {len(dataset.images)} sample(s), fewer than "
            f"the run's {config.folds} folds: score the data the run trained on with "
            f"--fold, or these data without --fold")
    _, indices = split_folds(len(dataset.images), fold, config.folds, config.split_seed)
    return dataset.subset(indices)


def _predicted(events, notes) -> PredictionDone:
    """A prediction's end; its warnings (e.g. objects made in a mode that does not fit the
    model) added to `notes`, once each."""
    done = None
    for event in events:
        if isinstance(event, PredictionDone):
            done = event
        elif isinstance(event, Message) and event.level == "warning" \
                and event.text not in notes:
            notes.append(event.text)
    return done


def _as_the_run_reads(dataset: Dataset, head) -> tuple[Dataset, list[str]]:
    """(the data set as scored, warnings): masks of more classes than a run of one foreground
    predicts hold object ids (instance masks of few objects are read as class indices): their
    objects are its foreground, and each id an object to score. A run of several classes
    scored on masks of classes it never predicts is said."""
    found = dataset.num_classes
    if head.regions or head.objects or found <= head.num_classes:
        return dataset, []
    if head.num_classes > 2:
        note = (f"the masks hold classes up to {found - 1} but the run predicts "
                f"{head.num_classes} (0..{head.num_classes - 1}): the classes above are never "
                "predicted and score 0")
        return dataset, [note]
    scored = dataset.merged()
    note = (f"the masks hold values up to {found - 1} and the run predicts one foreground: "
            "each value is read as an object id, every object as the foreground")
    return scored, [note]


class _ObjectScorer:
    """The object scores of an evaluation, image by image: the field's scores of the predicted
    objects against the data's (instance_metrics: AP at IoU 0.5 and its mean over 0.5-0.95
    per image as the Data Science Bowl, pooled as StarDist, merges, splits) and the
    foreground-restricted Rand and information scores (means over images). The true objects
    are the instance ids of the masks where the files held them, else the connected
    components of the true foreground (for "membranes": of the true cells between the
    membranes)."""

    def __init__(self, how: str, dataset: Dataset):
        self.how, self.truth = how, dataset.objects
        self.scores, self.rand = InstanceScores(), []

    def update(self, index, mask, predicted):
        mask = np.asarray(mask)
        unlabelled = mask == IGNORE_CLASS
        if self.truth is not None:
            true = np.asarray(self.truth[index])
        elif self.how == "membranes":  # the cells: the true background between membranes
            true = connected_objects((mask == 0) & ~unlabelled)
        else:
            true = connected_objects((mask > 0) & ~unlabelled)
        predicted = np.asarray(predicted)
        self.scores.update(true, predicted, ignore=unlabelled if unlabelled.any() else None)
        self.rand.append(rand_scores(true, predicted,
                                     ignore=unlabelled if unlabelled.any() else None))

    def result(self) -> dict:
        result = self.scores.result()
        for key in self.rand[0] if self.rand else ():
            result[key] = float(np.mean([scores[key] for scores in self.rand]))
        result["instances"] = self.how
        return result


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
