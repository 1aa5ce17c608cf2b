"""``--preset auto``: a training recipe planned from the user's data, each choice with its reason.

As nnU-Net plans from a fingerprint of the data, scaled to what a napari user has: a CPU or
one GPU and a few minutes. The rules start from the CPU recipes that were measured on the
reference data sets (benchmarks/accuracy.py, benchmarks/RESULTS.md) and generalise them by
what the fingerprint says:

- dimensionality and family: 2D images and stacks of unrelated slices train the padded UNet
  with batch norm (the ISBI CPU recipe); volumes train the 3D-UNet (the BraTS CPU recipe);
- the patch fits the images (a smaller image is mirrored up to it, never refused) and a
  coarse Z axis gets fewer voxels, so that a patch covers about the same distance on each
  axis; the depth (poolings) follows the patch's shortest side;
- the batch fills a pixel budget per step on a CPU, and the memory of the device caps it;
- normalisation by modality: each case by itself where it looks like MRI (several channels,
  signed or float values around a zero background), a fixed 8-bit range for bright 8-bit
  pictures, otherwise a z-score per channel over the training set;
- rare objects get a foreground-weighted loss and patches centred on them: half of them, or a
  third where many images hold no object and the objects are not small (surface inspection:
  the other patches must show good parts too; RESULTS, issue 36: 5 seeds on DAGM); as those
  patches show more object than the images hold, the threshold is then fitted on whole images
  (training.threshold);
- thin objects (membranes, cracks: the foreground's width) keep full resolution;
- augmentation respects the axes: quarter turns and flips in the plane, flips along Z only
  where voxels are isotropic.

The step count is the caller's (``--steps``) or comes from the time the user gives
(``--minutes``, ``engine.training.calibration``).

A live run (``train --live``, the Train widget's Live) plans for many steps a second instead
(``live=True``, :func:`_plan_live`): small windows, a narrow network, a higher constant learning
rate after a short warm-up, as the run has no planned end and the view must follow the strokes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import psutil
import torch

from .config import TrainConfig, preset_config
from .data.fingerprint import Fingerprint, fingerprint
from .runtime import amp_reason, resolve_amp, resolve_device
from .start import plan_start

AUTO = "auto"
# pixels (2D) or voxels (3D) a CPU step processes, from the CPU recipes: 4 x 256^2 in 2D
# (isbi2012, 25 min on 2 cores) and 2 x 64^3 in 3D (brats, 30 min)
CPU_BATCH_PIXELS = {2: 4 * 256 * 256, 3: 2 * 64 ** 3}
GPU_BATCH_PIXELS = {2: 16 * 512 * 512, 3: 2 * 128 ** 3}
PATCH_TARGET = {("cpu", 2): 256, ("cpu", 3): 64, ("gpu", 2): 512, ("gpu", 3): 128}
SMALLEST_PATCH = {2: 32, 3: 16}
RARE_FOREGROUND = 0.05  # below this share of the pixels, objects are rare
MANY_EMPTY = 0.25  # this share of the images without an object: most parts are good (inspection)
SMALL_OBJECT = 0.01  # of its image: a median object below this is small (a random window misses it)
THIN = 10.0  # pixels: a foreground this wide on average (area / skeleton) is thin lines
ANISOTROPIC = 1.5  # coarsest / finest spacing above which an axis counts as coarse
MEMORY_SHARE = 0.5  # of the free memory, what a batch's activations may take
DEFAULT_MINUTES = 10.0  # what --preset auto trains for when neither --steps nor --minutes
# a CUDA GPU's plan leaves torch.compile to the timing of --minutes (training.calibration),
# which replaces this reason with what it measured
COMPILE_TIMED = ("off unless timing a compiled step before training shows that it trains "
                 "more steps in the minutes, its compile time included (with --steps: off)")


@dataclass
class Plan:
    """The planned TrainConfig values and, for each, why (in words a user reads)."""

    values: dict
    reasons: dict = field(default_factory=dict)
    fingerprint: Fingerprint | None = None

    def choose(self, name: str, value, reason: str) -> None:
        self.values[name] = value
        self.reasons[name] = reason

    def config(self, **overrides) -> TrainConfig:
        """The TrainConfig of the plan, with the user's own `overrides` (None ignored) on top;
        the reasons travel in ``config.plan`` (written to config.yaml)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        values = dict(self.values)
        if "threshold" in given and values.get("fit_threshold") and "fit_threshold" not in given:
            values["fit_threshold"] = False  # the user's threshold is the threshold
            given_reason = {"fit_threshold": "off: the threshold is given by the user"}
        else:
            given_reason = {}
        reasons = {k: v for k, v in self.reasons.items() if k not in given}
        reasons.update({k: "given by the user" for k in given if k in self.values})
        reasons.update(given_reason)
        return preset_config(AUTO, **{**values, **given, "plan": reasons})

    def lines(self) -> list[str]:
        """One line per choice: `name = value: reason`."""
        return [f"{name} = {show_value(name, self.values[name])}: {reason}"
                for name, reason in self.reasons.items()]


def plan_lines(config: TrainConfig) -> list[str]:
    """The lines of a planned config as it will train (the user's values included), each
    `name = value: reason`, from ``config.plan``."""
    return [f"{name} = {show_value(name, getattr(config, name))}: {reason}"
            for name, reason in config.plan.items() if hasattr(config, name)]


def show_value(name: str, value) -> str:
    """A planned value as a user reads it: 64x64x64, base_channels=16, ..."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if name == "patch_size":
        return "x".join(map(str, value))
    return str(value)


def plan_for_data(dataset, device: str = "auto", init_from=None, live: bool = False) -> Plan:
    """The plan for `dataset` (its fingerprint, with the voxel spacing its files gave) on
    `device` ("auto": the one training would use), capped by that device's free memory;
    fine-tuned from `init_from` (a run or a built-in model), or from a built-in model that
    the data look like unless `init_from` is 'none' (engine.start); `live`: a live run's
    recipe (:func:`_plan_live`)."""
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        memory = float(torch.cuda.mem_get_info(chosen)[0])
    else:
        memory = float(psutil.virtual_memory().available)
    plan = plan_run(fingerprint(dataset, dataset.spacing), chosen.type, memory, live=live)
    plan_start(plan, init_from)
    return plan


def plan_run(fp: Fingerprint, device: str = "cpu", memory_bytes: float | None = None,
             live: bool = False) -> Plan:
    """The plan for data of fingerprint `fp` on a `device` ("cpu", "cuda", "mps"; "gpu": a
    CUDA GPU) whose free memory is `memory_bytes` (None: not known, no cap); `live`: for a
    live run (:func:`_plan_live`)."""
    kind = "gpu" if device in ("cuda", "gpu", "mps") else "cpu"
    plan = Plan(values={}, fingerprint=fp)
    dims = fp.spatial_dims
    plan.choose("spatial_dims", dims,
                "the data are volumes" if dims == 3 else "the data are 2D images (or slices)")
    patch = _plan_patch(plan, fp, kind)
    _plan_resolution(plan, fp)
    _plan_network(plan, fp, kind, patch)
    _plan_batch(plan, fp, kind, patch, memory_bytes)
    _plan_normalization(plan, fp)
    _plan_loss(plan, fp)
    _plan_augmentation(plan, fp)
    _plan_optimisation(plan, fp, kind)
    _plan_compile(plan, device)
    if live:
        _plan_live(plan, fp, kind)
    return plan


def _plan_compile(plan: Plan, device: str) -> None:
    """torch.compile: timed on a CUDA GPU (COMPILE_TIMED), never on a CPU or an Apple GPU."""
    if device in ("cuda", "gpu"):
        plan.choose("compile", False, COMPILE_TIMED)
    elif device == "mps":
        plan.choose("compile", False, "off on an Apple GPU: the plan compiles only on a CUDA "
                                      "GPU, where a timing shows that it pays")
    else:
        plan.choose("compile", False, "off on a CPU: compiling takes tens of seconds for a "
                                      "small gain here; the plan compiles only on a CUDA GPU, "
                                      "where a timing shows that it pays")


# -- the patch and the network -------------------------------------------------------------------
def _plan_patch(plan: Plan, fp: Fingerprint, kind: str) -> list[int]:
    dims = fp.spatial_dims
    target = PATCH_TARGET[(kind, dims)]
    coarse = _coarse_axis(fp)
    wanted = [target] * dims
    if coarse is not None:  # fewer voxels along the coarse axis, the same budget in all
        ratio = fp.spacing[coarse] / min(fp.spacing)
        wanted[coarse] = max(SMALLEST_PATCH[dims], int(target / ratio))
        others = math.sqrt(target ** dims / wanted[coarse]) if dims == 3 else target
        wanted = [w if axis == coarse else int(others) for axis, w in enumerate(wanted)]
    median = fp.median_size
    step = 16
    patch = [max(SMALLEST_PATCH[dims], _round_up(min(w, m), step))
             for w, m in zip(wanted, median)]
    if dims >= 2:  # square in the plane: quarter turns keep the patch's shape
        side = min(patch[-2:])
        patch[-2:] = [side, side]
    reason = f"fits the median image ({'x'.join(map(str, median))})"
    if any(p > s for p, s in zip(patch, fp.smallest_size)):
        reason += "; smaller images are mirrored up to it"
    if coarse is not None:
        reason += (f"; fewer voxels along the coarse axis (spacing "
                   f"{' x '.join(f'{s:.3g}' for s in fp.spacing)}), about the same distance on each")
    plan.choose("patch_size", patch, reason)
    return patch


def _plan_resolution(plan: Plan, fp: Fingerprint) -> None:
    """Full resolution; where the objects are thin lines (membranes, cracks), said so: one
    pixel of a downscaled image would hold a whole line and its surroundings."""
    width = fp.foreground_width
    if fp.objects and width <= THIN:
        plan.choose("resample", 1, f"thin objects ({width:.1f} px wide on average: area / "
                                   f"skeleton length): full resolution, never downscaled")
    else:
        plan.choose("resample", 1, "full resolution: the patch sees the images as they are")


def _coarse_axis(fp: Fingerprint):
    """The one axis whose spacing is clearly coarser than the others (3D), or None."""
    if fp.spatial_dims != 3 or fp.anisotropy < ANISOTROPIC:
        return None
    return max(range(3), key=lambda axis: fp.spacing[axis])


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def _plan_network(plan: Plan, fp: Fingerprint, kind: str, patch: list[int]) -> None:
    shortest = min(patch)
    base = 16 if kind == "cpu" else 32
    if fp.spatial_dims == 2:
        poolings = max(2, min(4, int(math.log2(shortest / 8))))  # bottleneck >= 8 pixels
        plan.choose("model", "unet", "2D data: the U-Net with zero padding (output = input size)")
        plan.choose("model_options",
                    {"padding": "same", "base_channels": base, "depth": poolings + 1,
                     "norm": "batch", "dropout": 0.0},
                    f"{poolings} poolings for a {shortest}-pixel patch (8+ pixels at the "
                    f"bottom); width {base} for a {kind.upper()}; batch norm trains fast at a "
                    f"high learning rate")
        return
    poolings = max(2, min(4, int(math.log2(shortest / 4))))  # bottleneck >= 4 voxels
    while shortest % 2 ** poolings:
        poolings -= 1
    plan.choose("model", "unet3d", "volumes: the 3D U-Net (No New-Net blocks, instance norm)")
    plan.choose("model_options",
                {"base_channels": base, "max_channels": 128 if kind == "cpu" else 320,
                 "depth": poolings + 1},
                f"{poolings} poolings for a patch whose shortest side is {shortest}; width "
                f"{base} for a {kind.upper()}")


def _plan_batch(plan: Plan, fp: Fingerprint, kind: str, patch: list[int],
                memory_bytes: float | None) -> None:
    pixels = math.prod(patch)
    budget = (CPU_BATCH_PIXELS if kind == "cpu" else GPU_BATCH_PIXELS)[fp.spatial_dims]
    batch = max(2, min(32, budget // pixels))
    unit = "pixels" if fp.spatial_dims == 2 else "voxels"
    reason = f"{budget:,} {unit} a step on a {kind.upper()}"
    data = fp.samples * math.prod(fp.median_size)
    if batch > 2 and batch * pixels > 2 * data:  # no batch bigger than the data, twice over
        batch = max(2, int(2 * data // pixels))
        reason += f", no more than twice the data ({fp.samples} image(s))"
    if memory_bytes:
        per_item = activation_bytes(patch, plan.values["model_options"]["base_channels"],
                                    fp.spatial_dims)
        fits = max(1, int(memory_bytes * MEMORY_SHARE // per_item))
        if fits < batch:
            batch = fits
            reason += f", capped by memory ({memory_bytes / 2 ** 30:.1f} GiB free)"
    plan.choose("batch_size", batch, reason)


def activation_bytes(patch, base_channels: int, dims: int) -> float:
    """A generous estimate of one item's training memory: the activations that backward keeps
    (about six float32 maps per level and conv, encoder and decoder), summed over levels."""
    pixels = math.prod(patch)
    per_level = sum(2 ** level / 2 ** (dims * level) for level in range(6))
    return pixels * base_channels * per_level * 6 * 2 * 4


# -- the data's values -----------------------------------------------------------------------------
def looks_like_mri(fp: Fingerprint) -> bool:
    """Several channels of a volume, stored signed or as floats (scanner units, often already
    shifted), with a background of one value around the object: what BraTS looks like."""
    return fp.spatial_dims == 3 and fp.channels > 1 and not fp.dtype.startswith("uint")


def _plan_normalization(plan: Plan, fp: Fingerprint) -> None:
    if looks_like_mri(fp):
        plan.choose("normalization", "zscore_case",
                    "MRI-like volumes (several signed or float channels): each case by its "
                    "own mean and spread inside the object, as scanners differ")
        return
    bright = fp.dtype == "uint8" and all(p[-1] >= 100 for p in fp.percentiles)
    if bright:
        plan.choose("normalization", "minus_one_one",
                    "8-bit pictures that use their range: 0..255 to -1..1 for every image")
        return
    plan.choose("normalization", "zscore",
                f"{fp.dtype} values (99.5th percentile "
                f"{', '.join(f'{p[-1]:g}' for p in fp.percentiles)}): a z-score per channel "
                f"over the training set")


def _plan_loss(plan: Plan, fp: Fingerprint) -> None:
    share = fp.foreground_fraction
    if fp.classes > 2:
        plan.choose("loss", "dice_ce", f"{fp.classes} classes (background included): Dice + "
                    "cross-entropy")
        plan.choose("foreground_oversample", 0.33,
                    "a third of the patches centred on an object, as nnU-Net")
        return
    if share < RARE_FOREGROUND:
        plan.choose("loss", "dice_ce_foreground",
                    f"objects are rare ({100 * share:.2g}% of the pixels): Dice of the objects "
                    f"+ cross-entropy, so background cannot win by itself")
        size = f"the median object is {100 * fp.median_object_share:.2g}% of its image"
        plan.choose("fit_threshold", True,
                    "patches centred on the rare objects show the model more of them than the "
                    "images hold: after training, the threshold that gives the best Dice on "
                    "whole images becomes the run's own (RESULTS: issue 36)")
        if fp.empty_share >= MANY_EMPTY and fp.median_object_share >= SMALL_OBJECT:
            plan.choose("foreground_oversample", 0.33,
                        f"a third of the patches centred on an object: {100 * fp.empty_share:.0f}% "
                        f"of the images hold none and {size}, so random patches find the "
                        "objects too; the rest teach what a good part looks like (RESULTS: "
                        "issue 36)")
            return
        plan.choose("foreground_oversample", 0.5,
                    f"half of the patches centred on an object (they are rare; {size})")
        return
    plan.choose("loss", "dice_ce",
                f"objects cover {100 * share:.2g}% of the pixels: Dice + cross-entropy")
    plan.choose("foreground_oversample", 0.33,
                "a third of the patches centred on an object, as nnU-Net")


def _plan_augmentation(plan: Plan, fp: Fingerprint) -> None:
    coarse = _coarse_axis(fp)
    plan.choose("hflip", 0.5, "objects look the same mirrored")
    plan.choose("vflip", 0.5, "objects look the same mirrored")
    plan.choose("rot90", [0, 1, 2, 3], "and turned by quarter turns in the plane")
    if fp.spatial_dims == 3:
        isotropic = coarse is None
        plan.choose("flip_all_axes", isotropic,
                    "voxels are isotropic: mirrored along Z too" if isotropic
                    else "Z is coarser: no mirroring along it")
    plan.choose("brightness", 0.1, "brightness changes between images")
    plan.choose("contrast", 0.15, "and contrast changes")
    if fp.spatial_dims == 2:
        plan.choose("crop_resize", [0.8, 1.0], "objects vary a little in size (zoom 0.8-1)")


def _plan_optimisation(plan: Plan, fp: Fingerprint, kind: str) -> None:
    batch_norm = fp.spatial_dims == 2
    plan.choose("optimizer", "adam", "Adam")
    plan.choose("lr", 2e-3 if batch_norm else 1e-3,
                "high for batch norm (2e-3)" if batch_norm else "1e-3 for instance norm")
    plan.choose("weight_decay", 1e-5, "a little weight decay")
    plan.choose("lr_schedule", "cosine", "a cosine decay to the last step")
    plan.choose("warmup_steps", 30, "the learning rate ramps up over the first steps")
    if kind == "gpu":
        plan.choose("amp", "auto", "mixed precision: bf16 on GPUs that compute it natively "
                    "(Ampere and newer, Apple GPUs on macOS 14+), else fp16 or full precision")
    else:
        cpu = torch.device("cpu")
        amp, _ = resolve_amp(cpu, "auto")
        plan.choose("amp", amp, amp_reason(cpu, amp))


# -- a live run -----------------------------------------------------------------------------------
LIVE_PATCH = {("cpu", 2): 128, ("cpu", 3): 48, ("gpu", 2): 256, ("gpu", 3): 96}
LIVE_BATCH = 4
LIVE_BASE = {"cpu": 8, "gpu": 16}
LIVE_LR = 3e-3  # batch norm (2D); instance norm (3D): 2e-3
LIVE_WARMUP = 20


def _plan_live(plan: Plan, fp: Fingerprint, kind: str) -> None:
    """A live run's recipe: steps of a fraction of a second on a CPU, so that a stroke counts
    within seconds. The run has no planned end and its data change under it, so the rate is
    constant after a short warm-up (the batch plan's cosine needs a last step). A built-in start
    (engine.start) then keeps its own network and takes a quarter of this rate."""
    dims = fp.spatial_dims
    side = LIVE_PATCH[(kind, dims)]
    patch = [min(p, _round_up(side, 16)) for p in plan.values["patch_size"]]
    if patch != plan.values["patch_size"]:
        plan.choose("patch_size", patch,
                    f"a live run: small windows ({'x'.join(map(str, patch))}) for many steps "
                    f"a second, each centred on the strokes")
    batch = min(plan.values["batch_size"], LIVE_BATCH) if kind == "cpu" else \
        plan.values["batch_size"]
    plan.choose("batch_size", batch, f"a live run: {batch} windows a step, a step a fraction "
                                     f"of a second on a {kind.upper()}")
    options = dict(plan.values["model_options"])
    base = LIVE_BASE[kind]
    shortest = min(patch)
    poolings = max(2, min(4, int(math.log2(shortest / (8 if dims == 2 else 4)))))
    options.update(base_channels=base, depth=poolings + 1)
    if dims == 3:
        options["max_channels"] = min(options.get("max_channels", 128), 16 * base)
    plan.choose("model_options", options,
                f"a live run: width {base}, {poolings} poolings: a narrow network learns the "
                f"strokes in seconds and predicts the view quickly")
    if plan.values.get("fit_threshold"):
        plan.choose("fit_threshold", False, "a live run: strokes leave most pixels unknown, "
                                            "there is no whole image to fit a threshold on")
    lr = LIVE_LR if dims == 2 else 2e-3
    plan.choose("lr", lr, f"a live run: a high rate ({lr:g}) for the first minutes' steps")
    plan.choose("lr_schedule", "constant",
                "a live run has no planned end and its strokes change: constant after warm-up")
    plan.choose("warmup_steps", LIVE_WARMUP,
                f"the rate ramps up over the first {LIVE_WARMUP} steps (a few seconds)")
