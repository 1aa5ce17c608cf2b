"""Every choice list of the product, defined once, importing nothing heavy (no torch, no Qt).

The engine validates against these, the CLI offers them as ``choices=``, the widgets fill
their combo boxes from them: a new AMP mode or preset is added here and appears everywhere.
"""
from __future__ import annotations

# auto (every default): bf16 where the device computes it natively, else full precision on a
# CPU (fp16 on a GPU before Ampere): engine.runtime.resolve_amp, the one rule
AMP_MODES = ("auto", "bf16", "fp16", "off")
DEVICES = ("auto", "cpu", "cuda", "mps")
# who runs the network in prediction (engine.backends); auto: the fastest installed on a CPU
BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
# zscore: one mean/std per channel from the training set (saved with the model);
# zscore_case: each image (case) by its own mean/std per channel inside the object (BraTS MRI,
# whose raw scales differ several-fold between scanners and cases);
# percentile_case: each image's own 1 and 99.8 percentiles per channel to -1..1 (as Cellpose and
# StarDist do: holds on images of any brightness, the built-in models' rule)
NORMALIZATIONS = ("minus_one_one", "zscore", "zscore_case", "percentile_case", "none")
PER_IMAGE_NORMALIZATIONS = ("zscore_case", "percentile_case")
PERCENTILES = (1.0, 99.8)
# Region training: overlapping sigmoid outputs, each the union of some label values, nested from
# the largest to the smallest. A region set is declared here once, one row: its regions, their
# readable names and their metric keys (engine.labels.LabelHead reads the row).
# BraTS: whole tumour (1, 2, 4; 3 in BraTS 2013 too), tumour core (1, 3, 4), enhancing tumour
# (4); the same rules read 2013's labels 0-4 and 2021's 0/1/2/4; wt/tc/et are its metric names.
REGION_SETS: dict[str, dict] = {
    "brats": {"regions": ((1, 2, 3, 4), (1, 3, 4), (4,)),
              "names": ("whole tumour", "tumour core", "enhancing tumour"),
              "keys": ("wt", "tc", "et")},
}
# the losses region training takes (Dice + cross-entropy per region, engine.losses.RegionLoss)
LOSSES = ("adaptive", "dice_ce", "dice_ce_foreground", "ce", "dice")  # engine.training.losses
REGION_LOSSES = ("dice_ce", "dice_ce_foreground")


def region_set(regions) -> dict | None:
    """The REGION_SETS row whose regions are `regions` (in any order of values), or None."""
    wanted = [sorted(region) for region in regions]
    return next((row for row in REGION_SETS.values()
                 if [sorted(region) for region in row["regions"]] == wanted), None)


def region_keys(regions) -> list[str]:
    """Short names of a run's regions: wt/tc/et for BraTS', region0.. otherwise."""
    row = region_set(regions)
    return list(row["keys"]) if row else [f"region{i}" for i in range(len(regions))]


def region_names(regions) -> list[str]:
    """Readable names of a run's regions: "whole tumour", ... for BraTS', region0.. otherwise."""
    row = region_set(regions)
    return list(row["names"]) if row else region_keys(regions)


TTA_MODES = ("off", "mirror", "dihedral")
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
SCHEDULES = ("constant", "exponential_step", "cosine", "poly")
SAMPLES = ("dagm", "em", "blobs3d")
# An axis of at most this many planes is channels, not a stack of images.
MAX_CHANNELS = 16
# Labels with more distinct non-zero values than this are instances (one object per value).
MAX_CLASS_VALUES = 16
# Sparse labels: the class index of a pixel nobody labelled (nnU-Net's ignore label). Class
# masks are uint8; a class of 255 is never made by the mask rule otherwise.
IGNORE_CLASS = 255
# What pixels a user left at 0 mean: background (dense masks) or unknown (strokes, some slices).
UNLABELED_CHOICES = ("background", "ignore")
# What instance masks (one value per object) train: every object as the foreground (merge), or
# background / interior / boundary, from which a seeded watershed makes objects (boundary); or
# (foreground) the masks mark the objects' area alone (strokes, a class mask) and a model of
# objects fine-tuned from them keeps its own interior / boundary split (training.losses).
INSTANCE_CHOICES = ("merge", "boundary", "foreground")
# The boundary target's classes, in the order of the network's outputs.
OBJECT_CLASSES = ("background", "interior", "boundary")
# Objects from a prediction (predict --instances): auto = the watershed of a model of objects,
# else the connected components of the foreground; membranes = the cells between a membrane
# model's foreground (EM); off = classes only.
OBJECT_MODES = ("auto", "membranes", "off")

# The reference hyper-parameters of SPEC.md, as data (config.py turns them into TrainConfigs).
# `network` is what the preset's network sees in its reference data: input channels and label
# classes (a region preset's outputs are its regions); the benchmark builds its networks from
# it. Everything else is a TrainConfig option (napari_unet/options.py).
PRESETS: dict[str, dict] = {
    # TinyUNet, "UNet Industrial" on DAGM 2007 (grey images, defect or background).
    "industrial": dict(
        network=dict(in_channels=1, classes=2),
        model="tiny_unet", model_options={}, spatial_dims=2, patch_size=[512, 512],
        steps=2500, batch_size=16, optimizer="rmsprop", lr=1e-4, weight_decay=1e-5,
        momentum=0.8, rmsprop_alpha=0.9, rmsprop_centered=True,
        lr_schedule="exponential_step", lr_decay_rate=0.8, lr_decay_steps=500,
        loss="adaptive", normalization="minus_one_one",
        hflip=0.5, vflip=0.0, rot90=[0, 1, 2], crop_resize=None, brightness=0.0,
        val_every=250, checkpoint_every=250,
    ),
    # The original UNet, "UNet Medical" on ISBI 2012 (572 in, 388 out; grey EM slices,
    # membrane or cell).
    "isbi2012": dict(
        network=dict(in_channels=1, classes=2),
        model="unet", model_options={"padding": "valid", "dropout": 0.5}, spatial_dims=2,
        patch_size=[388, 388], steps=6400, batch_size=8, optimizer="adam", lr=1e-4,
        weight_decay=5e-4, lr_schedule="constant", loss="dice_ce",
        normalization="minus_one_one",
        hflip=0.5, vflip=0.5, rot90=[0], crop_resize=[0.8, 1.0], brightness=0.2,
        val_every=400, checkpoint_every=400,
    ),
    # 3D U-Net with the No New-Net changes on BraTS (four MRI contrasts, four classes).
    "volume3d": dict(
        network=dict(in_channels=4, classes=4),
        model="unet3d", model_options={}, spatial_dims=3, patch_size=[128, 128, 128],
        steps=16000, batch_size=2, optimizer="adam", lr=2e-4, weight_decay=0.0,
        lr_schedule="constant", loss="dice_ce_foreground", normalization="zscore",
        foreground_oversample=0.33, hflip=0.0, vflip=0.0, rot90=[0], crop_resize=None,
        brightness=0.1, flip_all_axes=True, val_every=500, checkpoint_every=500,
    ),
    # The 3D-UNet trained as the field trains BraTS today (nnU-Net, the BraTS 2020/2021
    # winners): each case z-scored inside the brain, the three tumour regions as overlapping
    # sigmoid outputs (labels written back in BraTS convention), contrast augmentation, and
    # nnU-Net's gamma and simulated low resolution for other scanners (issue 25: BraTS 2021
    # case 00014, whose cerebellum was called tumour, whole tumour 0.625 -> 0.793).
    # Four MRI contrasts in; label values 0-4 (2013's 0-4, 2021's 0/1/2/4).
    "brats": dict(
        network=dict(in_channels=4, classes=5),
        model="unet3d", model_options={}, spatial_dims=3, patch_size=[128, 128, 128],
        steps=16000, batch_size=2, optimizer="adam", lr=2e-4, weight_decay=0.0,
        lr_schedule="constant", loss="dice_ce", regions="brats", normalization="zscore_case",
        foreground_oversample=0.33, hflip=0.0, vflip=0.0, rot90=[0], crop_resize=None,
        brightness=0.1, contrast=0.25, gamma=0.3, low_resolution=0.25, flip_all_axes=True,
        val_every=500, checkpoint_every=500,
    ),
}
PRESET_NAMES = tuple(PRESETS)
# --preset auto (the default): a recipe planned from the user's data (engine.plan), each choice
# with its reason; the named presets stay, as plans a user may pick.
AUTO_PRESET = "auto"
PRESET_CHOICES = (AUTO_PRESET, *PRESET_NAMES)


def preset_options(name: str) -> dict:
    """The TrainConfig values of preset `name` (what its network sees left out)."""
    return {key: value for key, value in PRESETS[name].items() if key != "network"}


def preset_network(name: str) -> tuple[int, int]:
    """(input channels, label classes) of preset `name`'s reference data."""
    network = PRESETS[name]["network"]
    return network["in_channels"], network["classes"]
