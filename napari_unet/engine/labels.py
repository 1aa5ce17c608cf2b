"""Region training: overlapping sigmoid outputs, as nnU-Net and the BraTS winners train.

A region is a set of mask values (BraTS: whole tumour 1, 2, 3, 4; tumour core 1, 3, 4;
enhancing tumour 4). Regions are nested, each inside the one before (config.check_regions).
The network has one sigmoid output per region; its targets are built from the class-index mask
on the device (so the patch pipeline and the augmentation stay the same), and a prediction is
written back as labels in the data's own convention: every voxel gets the value of the
innermost region whose probability passes the threshold, where a region's value is the smallest
of its values that the next region leaves out (BraTS: whole tumour -> 2 (oedema), tumour core
-> 1, enhancing -> 4), so 2013's and 2021's label files read the same.
"""
from __future__ import annotations

import numpy as np
import torch


def model_regions(model):
    """A model's regions (set by the trainer and load_checkpoint), or None for softmax and
    sigmoid models, stand-ins and foreign models without the attribute."""
    return getattr(model, "regions", None)


def region_values(regions) -> list[int]:
    """The label written for each region (see the module docstring)."""
    values = []
    for index, region in enumerate(regions):
        inner = set(regions[index + 1]) if index + 1 < len(regions) else set()
        values.append(min(set(region) - inner))
    return values


def region_targets(target: torch.Tensor, regions) -> torch.Tensor:
    """(B, R, *S) float32 region masks of a (B, *S) class-index target."""
    lookup = torch.zeros((len(regions), 256), dtype=torch.float32, device=target.device)
    for index, region in enumerate(regions):
        lookup[index, list(region)] = 1.0
    flat = target.long().clamp(0, 255)
    return torch.stack([lookup[index][flat] for index in range(len(regions))], dim=1)


def labels_from_regions(probabilities, regions, threshold: float = 0.5) -> np.ndarray:
    """uint8 labels (*S) from region probabilities (R, *S) (numpy or tensor)."""
    probs = probabilities.cpu().numpy() if isinstance(probabilities, torch.Tensor) \
        else np.asarray(probabilities)
    labels = np.zeros(probs.shape[1:], np.uint8)
    for value, region_probs in zip(region_values(regions), probs):
        labels[region_probs >= threshold] = value
    return labels
