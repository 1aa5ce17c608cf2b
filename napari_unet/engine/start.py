"""Where a run starts: from nothing, from another run, or from a built-in model.

``--init-from`` a run or a built-in model: the plan takes the start's network and
normalisation (the weights only fit those), a patch its network can take, a quarter of the
learning rate and a short warm-up (fine-tuning keeps what the start knows). Without it,
``--preset auto`` proposes a built-in model whose card says the data look like its training
data (dimensions, channels, object size), with the reason; ``--init-from none`` declines.
"""
from __future__ import annotations

import math
from pathlib import Path

from .. import builtin
from ..errors import ConfigError
from .data.fingerprint import Fingerprint
from .export.loader import load_checkpoint

NO_START = "none"
FINE_TUNE_LR = 0.25  # of the from-scratch rate
FINE_TUNE_WARMUP = 10
SIZE_RANGE = 2.0
MANY = 3  # objects per image where a generalist of many objects (nuclei) fits
COMPACT = 0.5  # objects that fill at least this share of their box are blobs (nuclei)  # objects this much smaller or larger than the start's still match


def start_name(init_from) -> str | None:
    """What config.yaml records: a built-in model's name, a run's absolute path, or None."""
    if init_from is None or str(init_from) == NO_START:
        return None
    if builtin.builtin_name(init_from):
        return str(init_from)
    return str(Path(init_from).resolve())


def proposed_start(fp: Fingerprint) -> tuple[str, str] | None:
    """(built-in model, why) whose card's `propose` rule the data fit, or None."""
    for name in builtin.names():
        rule = builtin.card(name).get("propose")
        reason = _fits(fp, rule) if rule else None
        if reason:
            return name, reason
    return None


def _fits(fp: Fingerprint, rule: dict) -> str | None:
    if fp.spatial_dims != rule["spatial_dims"] or fp.objects == 0:
        return None
    if fp.median_object_fill < rule.get("min_fill", COMPACT):  # thin or branching objects
        return None
    if fp.objects < rule.get("objects_per_image", MANY) * fp.samples:  # a defect, one organ
        return None
    if not (fp.channels == 1 or (fp.rgb and rule.get("rgb", False))):
        return None
    extent = _in_plane_extent(fp)
    diameter = rule["diameter"]
    if not diameter / SIZE_RANGE <= extent <= diameter * SIZE_RANGE:
        return None
    kind = "colour" if fp.rgb else "one-channel"
    return (f"the data look like its training data ({fp.spatial_dims}D, {kind}, "
            f"{fp.objects / fp.samples:.0f} compact objects an image, {extent:.0f} px across "
            f"against its {diameter:g})")


def _in_plane_extent(fp: Fingerprint) -> float:
    """The median object's size across the image plane (Y and X), in pixels."""
    y, x = fp.median_object_extent[-2:]
    return math.sqrt(max(y, 0) * max(x, 0))


def plan_from_start(plan, init_from, why: str) -> None:
    """The plan's values that follow from starting at `init_from` (a run or built-in model)."""
    start = load_checkpoint(builtin.resolve(init_from))
    fp = plan.fingerprint
    if fp is not None and start.config.spatial_dims != fp.spatial_dims:
        raise ConfigError(f"--init-from {init_from}: a {start.config.spatial_dims}D model, and "
                          f"these data are {fp.spatial_dims}D: choose a start of their kind "
                          f"(built-in models: {', '.join(builtin.names()) or 'none'})")
    plan.choose("init_from", start_name(init_from), why)
    if fp is not None and fp.channels == 3 and start.model.in_channels == 1 \
            and start.data_info.get("colour") == "luminance":
        plan.choose("colour", "luminance", f"{init_from} reads colour images by their "
                                           f"luminance: so are these trained and predicted")
    if start.head.objects and (fp is None or fp.classes <= 2):
        plan.choose("instances", "foreground",
                    f"{init_from} makes objects (interior and boundary, then a watershed): the "
                    f"masks teach it where objects are and it keeps its own boundaries, so "
                    f"touching objects still come apart (--instances merge: a new 2-class head)")
    plan.choose("model", start.config.model, f"the network of {init_from}")
    plan.choose("model_options", dict(start.config.model_options),
                "its size, so that its weights fit")
    plan.choose("normalization", start.config.normalization, f"as {init_from} was trained")
    multiple = start.model.size_multiple
    patch = [max(multiple, math.ceil(p / multiple) * multiple) for p in plan.values["patch_size"]]
    if patch != plan.values["patch_size"]:
        plan.choose("patch_size", patch, f"a multiple of {multiple}, as its network needs")
    lr = plan.values.get("lr", 1e-3) * FINE_TUNE_LR
    plan.choose("lr", lr, f"fine-tuning: a quarter of the from-scratch rate ({lr:g}) keeps "
                          f"what the start knows")
    plan.choose("warmup_steps", FINE_TUNE_WARMUP, "a short warm-up: the weights are trained")


def plan_start(plan, init_from) -> None:
    """Fine-tune from `init_from` when given (not 'none'), else from a proposed built-in
    model, else start from nothing (nothing planned)."""
    if init_from is not None:
        if str(init_from) != NO_START:
            plan_from_start(plan, init_from, "given by the user")
        return
    proposed = proposed_start(plan.fingerprint) if plan.fingerprint is not None else None
    if proposed:
        name, reason = proposed
        plan_from_start(plan, name, f"the built-in model {name}: {reason}")
