"""Validation during training: whole images through the sliding window, Dice over the set.

Each process scores its share of the validation images; the confusion matrices are summed
over processes, so the Dice is that of the whole set whatever the world size.
"""
from __future__ import annotations

from ..labels import LabelHead
from ..metrics import DiceAccumulator
from ..prediction.predict import predict_with_model, run_to_end


def validate(model, val_set, norm, config, input_size, device, dist, head: LabelHead) -> dict:
    """``dice``: the mean foreground Dice (region models: the mean Dice of the regions, which
    ``head`` says; a model of objects taught by their area, ``--instances foreground``: the
    Dice of that area)."""
    area = head.objects and config.instances == "foreground"
    num_classes = 2 if area else max(2, val_set.num_classes, head.outputs)
    accumulator = DiceAccumulator(num_classes)
    tile_size = config.val_tile_size or list(input_size)
    was_training = model.training
    model.eval()
    for index in range(dist.rank, len(val_set.images), dist.world_size):
        done = run_to_end(predict_with_model(
            model, val_set.images[index], norm, head=head, tile_size=tile_size,
            overlap=config.val_overlap,
            batch_size=max(1, config.batch_size), amp=config.amp, device=device,
            threshold=config.threshold, resample=config.resample,
            keep_largest=config.keep_largest,
            channels_last=config.channels_last and model.spatial_dims == 2))
        labels = (done.labels > 0).astype("uint8") if area else done.labels
        accumulator.update(labels, val_set.masks[index])
    confusion = accumulator.confusion.to(device)
    accumulator.confusion = dist.sum_(confusion).cpu()
    model.train(was_training)
    if head.regions:
        per_region = accumulator.region_dice(head.regions)
        return {"dice": sum(per_region) / len(per_region), "dice_per_class": per_region,
                "mean_dice": accumulator.mean_dice()}
    return {"dice": accumulator.mean_dice(include_background=False),
            "dice_per_class": accumulator.dice_per_class(),
            "mean_dice": accumulator.mean_dice()}
