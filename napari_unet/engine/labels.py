"""The label head: what the network's outputs mean, decided once and carried by the checkpoint.

``LabelHead.from_config(config, num_classes)`` is made when a run starts and saved in the
checkpoint (``data_info["labels"]``) and in a bioimage.io package (``config.napari_unet``);
a checkpoint or package from before it is read by deriving it from what they hold (the regions
in ``data_info``, the classes, the network's outputs). Training, validation, prediction, export,
evaluation and the widgets ask the head; nothing is patched onto the model.

Three kinds:

- classes: one output per class under a softmax, or one sigmoid output for a binary problem
  (the adaptive loss). What is blended is the foreground probability for one or two outputs
  (two: the sigmoid of the logit difference, the 2-class softmax's foreground on one channel),
  else every class; labels are ``probability >= threshold``, or the argmax.
- regions (nnU-Net's and the BraTS winners' region training): one sigmoid output per region, a
  region being a set of mask values (BraTS: whole tumour 1, 2, 3, 4; tumour core 1, 3, 4;
  enhancing tumour 4), nested, each inside the one before (config.check_regions). Targets are
  built from the class-index mask on the device (so the patch pipeline and the augmentation stay
  the same), and a prediction is written back as labels in the data's own convention: every
  voxel gets the value of the innermost region whose probability passes the threshold, where a
  region's value is the smallest of its values that the next region leaves out (BraTS: whole
  tumour -> 2 (oedema), tumour core -> 1, enhancing -> 4), so 2013's and 2021's label files
  read the same. A region set's names and metric keys are declared in ``choices.REGION_SETS``.
- objects (``--instances boundary``): three softmax classes made from instance masks,
  background / interior / boundary (``choices.OBJECT_CLASSES``); ``labels`` is their argmax,
  and prediction makes the objects from the probabilities with a seeded watershed
  (``prediction.instances``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..choices import OBJECT_CLASSES, region_keys, region_names
from ..errors import ConfigError


@dataclass(frozen=True)
class LabelHead:
    """What the outputs of a network mean (see the module docstring)."""

    num_classes: int  # classes of the masks, background included (>= 2)
    outputs: int      # the network's output channels
    regions: tuple[tuple[int, ...], ...] | None = None  # label values of each sigmoid output
    objects: bool = False  # background / interior / boundary classes of instance masks
    # objects: the watershed's seeds are where P(interior) >= this (prediction.instances); a
    # model may carry its own, chosen on data held out of its training (the built-in nuclei)
    seed_threshold: float = 0.5

    # -- made once: from the config, from what a checkpoint or package saved ---------------------
    @classmethod
    def from_config(cls, config, num_classes: int) -> LabelHead:
        """The head of a run on masks of ``num_classes`` classes: one sigmoid output per region
        (region training), one sigmoid output for the binary adaptive loss, else one output per
        class."""
        num_classes = max(2, int(num_classes))
        if getattr(config, "instances", "merge") in ("boundary", "foreground"):
            if config.regions or config.loss == "adaptive":
                raise ConfigError("--instances boundary learns three softmax classes: use "
                                  "--loss dice_ce (no regions, not the adaptive loss)")
            return cls(len(OBJECT_CLASSES), len(OBJECT_CLASSES), objects=True)
        if config.regions:
            return cls(num_classes, len(config.regions), _as_regions(config.regions))
        if config.loss == "adaptive":
            if num_classes > 2:
                raise ConfigError(f"the adaptive loss is binary but the masks have {num_classes} "
                                  f"classes: use --loss dice_ce")
            return cls(num_classes, 1)
        return cls(num_classes, num_classes)

    @classmethod
    def for_outputs(cls, outputs: int) -> LabelHead:
        """Classes read from a network's outputs alone (a model without a run: benchmarks,
        stand-ins; a probability map the user thresholds is ``for_outputs(1)``)."""
        return cls(max(2, int(outputs)), int(outputs))

    @classmethod
    def from_saved(cls, data_info: dict, outputs: int) -> LabelHead:
        """The head a checkpoint or package saved, or, in one from before the head, the one
        its data_info (regions, classes) and its network's ``outputs`` imply."""
        if data_info.get("labels"):
            return cls.from_dict(data_info["labels"])
        regions = data_info.get("regions")
        num_classes = max(2, int(data_info.get("num_classes") or outputs))
        return cls(num_classes, int(outputs), _as_regions(regions) if regions else None)

    def to_dict(self) -> dict:
        """Plain values for the checkpoint and the package; the derived ones are for a reader."""
        return {"kind": self.kind, "activation": self.activation,
                "num_classes": self.num_classes, "outputs": self.outputs,
                "regions": [list(region) for region in self.regions] if self.regions else None,
                "names": self.names, "keys": self.keys, "values": self.values,
                "objects": self.objects, "seed_threshold": self.seed_threshold}

    @classmethod
    def from_dict(cls, values: dict) -> LabelHead:
        regions = values.get("regions")
        return cls(int(values["num_classes"]), int(values["outputs"]),
                   _as_regions(regions) if regions else None, bool(values.get("objects")),
                   float(values.get("seed_threshold", 0.5)))

    # -- what the outputs are --------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return "regions" if self.regions else "objects" if self.objects else "classes"

    @property
    def activation(self) -> str:
        """sigmoid: every region, or a single binary output; else softmax over the classes."""
        return "sigmoid" if self.regions or self.outputs == 1 else "softmax"

    @property
    def names(self) -> list[str]:
        """Readable names of what the blended probabilities show, one per channel: the regions
        ("whole tumour", ...), "foreground" for a binary model, else each class."""
        if self.regions:
            return region_names(self.regions)
        if self.objects:
            return list(OBJECT_CLASSES)
        if self.outputs <= 2:
            return ["foreground"]
        return [f"class {k}" for k in range(self.outputs)]

    @property
    def keys(self) -> list[str]:
        """Short names of the network's output channels and of their metrics (wt/tc/et)."""
        if self.regions:
            return region_keys(self.regions)
        if self.objects:
            return list(OBJECT_CLASSES)
        if self.outputs == 1:
            return ["foreground"]
        return [f"class{k}" for k in range(self.outputs)]

    @property
    def values(self) -> list[int]:
        """The label written for each region (see the module docstring); [] for classes."""
        return region_values(self.regions) if self.regions else []

    @property
    def blended_channels(self) -> int:
        """Channels of the blended probabilities: one per region, 1 for one or two classes (the
        foreground), else one per class."""
        if self.regions:
            return len(self.regions)
        return 1 if self.outputs <= 2 else self.outputs

    @property
    def thresholded(self) -> bool:
        """Whether a threshold cuts the labels (regions and binary models; not an argmax)."""
        return bool(self.regions) or self.outputs <= 2

    # -- the maths -------------------------------------------------------------------------------
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """What is blended, ``(B, blended_channels, *S)`` float32: sigmoid (one output, or every
        region), the foreground of a 2-class softmax (the sigmoid of the logit difference: one
        channel to blend instead of two), softmax (more classes)."""
        logits = logits.float()
        if self.activation == "sigmoid":
            return torch.sigmoid(logits)
        if self.outputs == 2:
            return torch.sigmoid(logits[:, 1:2] - logits[:, 0:1])
        return torch.softmax(logits, dim=1)

    def labels(self, probabilities, threshold: float = 0.5) -> np.ndarray:
        """uint8 labels ``(*S)`` of blended probabilities (``(*S)`` for one channel, else
        ``(C, *S)``): each region at the threshold, in the data's label values; the argmax
        class; or ``probability >= threshold``."""
        if self.regions:
            probs = probabilities if self.blended_channels > 1 else probabilities[None]
            return labels_from_regions(probs, self.regions, threshold)
        if self.blended_channels > 1:
            return np.argmax(probabilities, axis=0).astype(np.uint8)
        return (probabilities >= threshold).astype(np.uint8)

    def targets(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, R, *S) float32 region masks of a (B, *S) class-index mask (region losses)."""
        return region_targets(mask, self.regions)


def _as_regions(regions) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(v) for v in region) for region in regions)


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
