"""Training losses: soft Dice, Dice + cross-entropy, and the industrial adaptive loss.

Every loss takes ``logits (B, K, *spatial)`` and ``target (B, *spatial)`` (int64 class
indices), 2D and 3D alike. ``K == 1`` is a binary problem with a sigmoid head (target in
{0, 1}); ``K >= 2`` uses a softmax. A binary sigmoid output is treated as the two classes
(background ``1 - p``, foreground ``p``), so ``include_background`` means the same thing
for both heads.

The sums are computed in float32 even under ``torch.autocast``: over a 128^3 crop a bf16
sum loses the small classes entirely (SPEC's pitfall "compute Dice sums in fp32").

Sparse labels: a loss built with ``masked=True`` (the trainer does so when some mask pixels
are unlabelled) leaves out the pixels whose target is IGNORE_CLASS: they count in neither the
Dice sums nor the cross-entropy, whose mean is over the labelled pixels. Built without it, a
loss is the dense one, operation for operation.

Each loss module keeps ``last_terms``: the parts of the last value it returned, as
detached 0-d tensors (reading them with ``float()`` is left to the trainer, so that a
training step does not wait on the GPU just to log).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...choices import IGNORE_CLASS, REGION_LOSSES
from ...errors import ConfigError
from ..labels import region_targets

__all__ = [
    "soft_dice_loss",
    "cross_entropy",
    "DiceLoss",
    "CrossEntropyLoss",
    "DiceCELoss",
    "AdaptiveLoss",
    "RegionLoss",
    "ObjectsAreaLoss",
    "build_loss",
    "available_losses",
]


def _check_shapes(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim != target.ndim + 1 or logits.shape[0] != target.shape[0] \
            or logits.shape[2:] != target.shape[1:]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match: "
            "expected logits (B, K, *S) and target (B, *S); crop the mask to the output size")


def _probabilities_and_onehot(logits: torch.Tensor, target: torch.Tensor):
    """float32 class probabilities and one-hot target, both (B, K', *S), K' = max(K, 2)."""
    _check_shapes(logits, target)
    logits = logits.float()
    if logits.shape[1] == 1:
        foreground = torch.sigmoid(logits)
        probs = torch.cat([1.0 - foreground, foreground], dim=1)
    else:
        probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target.long(), probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    return probs, onehot


def labelled(target: torch.Tensor):
    """(target with unlabelled pixels set to class 0, bool mask of the labelled pixels)."""
    valid = target != IGNORE_CLASS
    return target.masked_fill(~valid, 0), valid


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, include_background: bool = True,
                   smooth: float = 1.0, squared: bool = False,
                   batch_dice: bool = True, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``1 - mean soft Dice over classes``, a scalar float32 tensor.

    ``squared`` uses ``sum(p^2) + sum(t^2)`` in the denominator (the ISBI reference's
    form) instead of ``sum(p) + sum(t)``. ``batch_dice`` sums over the whole batch before
    dividing (NVIDIA's industrial code and nnU-Net do so; it keeps images without any
    foreground from dominating the loss); otherwise one Dice per image and class is
    averaged. ``smooth`` is added to numerator and denominator, so a class absent from both
    prediction and target scores 1. `valid` (B, *S): only those pixels count.
    """
    probs, onehot = _probabilities_and_onehot(logits, target)
    if valid is not None:
        weight = valid.unsqueeze(1).to(probs.dtype)
        probs, onehot = probs * weight, onehot * weight
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    spatial = tuple(range(2, probs.ndim))
    dims = (0, *spatial) if batch_dice else spatial
    intersection = (probs * onehot).sum(dims)
    if squared:
        denominator = (probs * probs).sum(dims) + onehot.sum(dims)  # onehot^2 == onehot
    else:
        denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return 1.0 - dice.mean()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean pixel-wise cross-entropy in float32: binary (sigmoid) for K == 1, else softmax;
    with `valid` (B, *S) the mean over those pixels (0 when there are none)."""
    _check_shapes(logits, target)
    logits = logits.float()
    if valid is not None:
        if logits.shape[1] == 1:
            each = F.binary_cross_entropy_with_logits(logits[:, 0], target.float(),
                                                      reduction="none")
        else:
            each = F.cross_entropy(logits, target.long(), reduction="none")
        weight = valid.to(each.dtype)
        return (each * weight).sum() / weight.sum().clamp(min=1.0)
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], target.float())
    return F.cross_entropy(logits, target.long())


def _detached(**terms: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: value.detach() for name, value in terms.items()}


class DiceLoss(nn.Module):
    """Soft Dice loss as a module; see :func:`soft_dice_loss` for the options."""

    def __init__(self, include_background: bool = True, smooth: float = 1.0,
                 squared: bool = False, batch_dice: bool = True, masked: bool = False):
        super().__init__()
        self.options = dict(include_background=include_background, smooth=smooth,
                            squared=squared, batch_dice=batch_dice)
        self.masked = masked
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        if self.masked and valid is None:
            target, valid = labelled(target)
        dice_loss = soft_dice_loss(logits, target, valid=valid, **self.options)
        self.last_terms = _detached(dice_loss=dice_loss)
        return dice_loss


class CrossEntropyLoss(nn.Module):
    """Cross-entropy as a module; see :func:`cross_entropy`."""

    def __init__(self, masked: bool = False):
        super().__init__()
        self.masked = masked
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = None
        if self.masked:
            target, valid = labelled(target)
        ce = cross_entropy(logits, target, valid)
        self.last_terms = _detached(ce=ce)
        return ce


class DiceCELoss(nn.Module):
    """``(1 - Dice) + cross-entropy``.

    The ISBI preset takes the Dice over both classes (``include_background=True``); the
    volume3d preset leaves the background class out of the Dice (it is most of a brain
    volume and would hide the tumour classes) while the cross-entropy always covers all
    classes.
    """

    def __init__(self, include_background: bool = True, smooth: float = 1.0,
                 squared: bool = False, batch_dice: bool = True, masked: bool = False):
        super().__init__()
        self.dice = DiceLoss(include_background, smooth, squared, batch_dice)
        self.masked = masked
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = None
        if self.masked:
            target, valid = labelled(target)
        dice_loss = self.dice(logits, target, valid)
        ce = cross_entropy(logits, target, valid)
        self.last_terms = _detached(dice_loss=dice_loss, ce=ce)
        return dice_loss + ce


class ObjectsAreaLoss(nn.Module):
    """A model of objects (background / interior / boundary logits) taught by masks of the
    objects' area alone (background 0, object 1: strokes, a class mask): the loss `inner` scores
    the two classes background and object, the object's logit being the log-sum-exp of the
    interior's and the boundary's (its probability is theirs summed). Where an object lies the
    gradient raises interior and boundary in proportion to what the model gives each, so the
    split between them stays the one the model started with (``--instances foreground``)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        area = torch.cat([logits[:, :1], torch.logsumexp(logits[:, 1:], 1, keepdim=True)], 1)
        loss = self.inner(area, target)
        self.last_terms = self.inner.last_terms
        return loss


class AdaptiveLoss(nn.Module):
    """The industrial (TinyUNet / DAGM2007) loss: cross-entropy first, Dice once it fits.

    Rule (NVIDIA's code, ``UNet_Industrial/utils/losses.py::adaptive_loss``, called from
    ``model/unet.py`` with ``switch_at_threshold=0.3, loss_type='sorensen'``): on each batch
    compute the soft Dice loss ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` of the
    foreground probabilities, summed over the whole batch; if it is below ``threshold`` the
    batch's loss is that Dice loss, otherwise it is the binary cross-entropy of the logits.
    The choice is made afresh on every batch from that batch's Dice loss; nothing is
    remembered between steps.

    SPEC's reference document states the reverse ("BCE when the Dice loss < 0.3, else
    Dice"). The code's rule is the default because it is the one that trains and that
    produced the reference accuracy: early on, with near-random outputs and small defects,
    the Dice gradient is weak and noisy while cross-entropy is stable; once the overlap is
    good (Dice loss < 0.3) Dice refines it without the class imbalance pulling the defects
    towards background.

    For ``K >= 2`` the same rule uses the Dice of the non-background classes and the
    softmax cross-entropy. Both terms are computed on every step (the cross-entropy is
    cheap), and ``torch.where`` picks one, so the switch needs no GPU sync and does not
    break ``torch.compile``'s graph; gradients flow only through the chosen term.
    """

    def __init__(self, threshold: float = 0.3, smooth: float = 1.0, masked: bool = False):
        super().__init__()
        self.threshold = threshold
        self.smooth = smooth
        self.masked = masked
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = None
        if self.masked:
            target, valid = labelled(target)
        dice_loss = soft_dice_loss(logits, target, include_background=False,
                                   smooth=self.smooth, squared=False, batch_dice=True,
                                   valid=valid)
        ce = cross_entropy(logits, target, valid)
        use_dice = dice_loss.detach() < self.threshold
        self.last_terms = _detached(dice_loss=dice_loss, ce=ce, uses_dice=use_dice.float())
        return torch.where(use_dice, dice_loss, ce)


class RegionLoss(nn.Module):
    """Region training (nnU-Net's BraTS loss): ``BCE + (1 - mean soft Dice)`` over R sigmoid
    outputs, each against its region's mask (engine.labels), the Dice summed over the batch.
    ``logits (B, R, *S)``, ``target (B, *S)`` class indices (the file's label values)."""

    def __init__(self, regions, smooth: float = 1.0, masked: bool = False):
        super().__init__()
        self.regions = [list(region) for region in regions]
        self.smooth = smooth
        self.masked = masked
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != len(self.regions):
            raise ValueError(f"{logits.shape[1]} outputs for {len(self.regions)} regions")
        _check_shapes(logits, target)
        logits = logits.float()
        if self.masked:
            target, valid = labelled(target)
            targets = region_targets(target, self.regions)
            weight = valid.unsqueeze(1).to(logits.dtype).expand_as(logits)
            each = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
            ce = (each * weight).sum() / weight.sum().clamp(min=1.0)
            probs, targets = torch.sigmoid(logits) * weight, targets * weight
        else:
            targets = region_targets(target, self.regions)
            ce = F.binary_cross_entropy_with_logits(logits, targets)
            probs = torch.sigmoid(logits)
        dims = (0, *range(2, probs.ndim))
        intersection = (probs * targets).sum(dims)
        denominator = probs.sum(dims) + targets.sum(dims)
        dice_loss = 1.0 - ((2.0 * intersection + self.smooth)
                           / (denominator + self.smooth)).mean()
        self.last_terms = _detached(dice_loss=dice_loss, ce=ce)
        return dice_loss + ce


# name -> factory; the presets in config.py refer to these names.
_LOSSES = {
    "adaptive": AdaptiveLoss,
    "dice_ce": lambda masked=False: DiceCELoss(include_background=True, masked=masked),
    "dice_ce_foreground": lambda masked=False: DiceCELoss(include_background=False,
                                                          masked=masked),
    "ce": CrossEntropyLoss,
    # A Dice-only loss is chosen for a small foreground; a background term would dilute it.
    "dice": lambda masked=False: DiceLoss(include_background=False, masked=masked),
}


def available_losses() -> list[str]:
    return list(_LOSSES)


def build_loss(name: str, num_classes: int, regions=None, masked: bool = False,
               objects_area: bool = False) -> nn.Module:
    """The loss called ``name`` for a network with ``num_classes`` output channels; with
    ``regions`` the region loss (Dice + cross-entropy, the only one region training has). The
    trainer passes its label head's ``outputs`` and ``regions``, and ``masked`` when some
    training pixels are unlabelled (IGNORE_CLASS); ``objects_area``: a model of objects (3
    outputs) scored on masks of the objects' area (ObjectsAreaLoss)."""
    if regions:
        if name not in REGION_LOSSES:
            raise ConfigError(f"region training uses Dice + cross-entropy per region, not "
                              f"{name!r}: use --loss dice_ce")
        return RegionLoss(regions, masked=masked)
    if name not in _LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose one of: {', '.join(_LOSSES)}")
    if num_classes < 1:
        raise ConfigError(
            f"num_classes must be >= 1 (1 = binary with a sigmoid), got {num_classes}")
    loss = _LOSSES[name](masked=masked)
    return ObjectsAreaLoss(loss) if objects_area else loss
