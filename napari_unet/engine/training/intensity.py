"""Intensity augmentations for images from other scanners (issue 25): nnU-Net's gamma change
and simulated low resolution, per item and channel, on batch tensors of any device.

Both keep each channel's statistics where they would otherwise drift (gamma restores the
channel's mean and standard deviation, nnU-Net's ``retain_stats``), so a z-scored input stays
z-scored. The random numbers are drawn by the Augmenter (a CPU generator) and passed in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

GAMMA_RANGE = (0.7, 1.5)  # nnU-Net's
LOW_RESOLUTION_ZOOM = (0.5, 1.0)  # nnU-Net's: down to half the resolution


def gamma(x: torch.Tensor, chosen: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """x (B, C, *S) with a gamma change on the chosen (B, C) item-channels: each rescaled to
    [0, 1] by its own range, raised to gamma (from `draws` in [0, 1): half of them below 1,
    half above, as nnU-Net draws), mapped back and given its mean and std again."""
    if not bool(chosen.any()):
        return x
    low, high = GAMMA_RANGE
    below = draws < 0.5  # gamma < 1 brightens dark parts, > 1 darkens them
    value = torch.where(below, low + (1 - low) * draws * 2, 1 + (high - 1) * (draws * 2 - 1))
    dims = tuple(range(2, x.ndim))
    work = x.float()
    lo, hi = work.amin(dim=dims, keepdim=True), work.amax(dim=dims, keepdim=True)
    mean, std = work.mean(dim=dims, keepdim=True), work.std(dim=dims, keepdim=True)
    span = (hi - lo).clamp_min(1e-6)
    power = value.to(x.device, torch.float32).view(*x.shape[:2], *([1] * len(dims)))
    changed = ((work - lo) / span).clamp(0, 1) ** power * span + lo
    changed = (changed - changed.mean(dim=dims, keepdim=True)) \
        / changed.std(dim=dims, keepdim=True).clamp_min(1e-6) * std + mean
    mask = chosen.to(x.device).view(*x.shape[:2], *([1] * len(dims)))
    return torch.where(mask, changed, work).to(x.dtype)


def low_resolution(x: torch.Tensor, chosen: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """x (B, C, *S) with the chosen (B, C) item-channels seen at a lower resolution: sampled
    down by a zoom from LOW_RESOLUTION_ZOOM (`draws` in [0, 1)), nearest, and back up
    (bilinear or trilinear), as a thicker-sliced or coarser scan would give them."""
    pairs = chosen.nonzero().tolist()
    if not pairs:
        return x
    low, high = LOW_RESOLUTION_ZOOM
    size = tuple(x.shape[2:])
    mode = "bilinear" if len(size) == 2 else "trilinear"
    x = x.clone()
    for item, channel in pairs:
        zoom = low + (high - low) * float(draws[item, channel])
        small = tuple(max(1, round(n * zoom)) for n in size)
        plane = x[item:item + 1, channel:channel + 1].float()
        coarse = F.interpolate(plane, size=small, mode="nearest")
        x[item, channel] = F.interpolate(coarse, size=size, mode=mode,
                                         align_corners=False)[0, 0].to(x.dtype)
    return x
