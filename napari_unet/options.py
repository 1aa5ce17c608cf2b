"""Every training option, declared once: a row each (name, type, default, choices, help).

From these rows are made the ``TrainConfig`` dataclass and its choice and range checks
(engine/config.py), the ``napari_unet train`` flags (cli.py) and the Train widget's option
fields (widgets/train_form.py). A new training option is one row here; give it a ``flag`` to
offer it on the command line (any option can also be set with ``--set name=value``) and a
``form`` to show it in the Train widget. The order of the rows is the order of config.yaml.

Imports nothing heavy (no torch, no Qt): the Train widget and the CLI's parser read it.
"""
from __future__ import annotations

import copy
import typing
from dataclasses import dataclass, field

from .choices import (
    AMP_MODES,
    DEVICES,
    INSTANCE_CHOICES,
    LOSSES,
    NORMALIZATIONS,
    OPTIMIZERS,
    SCHEDULES,
    UNLABELED_CHOICES,
)

Optional = typing.Optional


@dataclass(frozen=True)
class Form:
    """How the Train widget shows an option: a spin box (numbers), a combo box (choices) or a
    check box (True/False, with ``label`` as its text). A list option gets one spin box whose
    value is given for every axis."""

    label: str
    low: float = 0
    high: float = 0
    step: float = 1
    value: float | None = None  # the widget's own start value (None: the preset's)
    decimals: int | None = None


@dataclass(frozen=True)
class Option:
    """One training option: a field of TrainConfig, maybe a CLI flag, maybe a widget field."""

    name: str
    type: object  # the annotation: int, float, str, bool, list[int], dict, Optional[...]
    default: object
    help: str = ""
    choices: tuple | None = None
    at_least: int | None = None  # the smallest value allowed (counts and periods)
    # True: --name-with-dashes; a string: that flag ("--no-X" sets a True default to False)
    flag: bool | str = False
    metavar: str | None = None
    form: Form | None = None

    @property
    def flag_name(self) -> str | None:
        if not self.flag:
            return None
        return self.flag if isinstance(self.flag, str) else "--" + self.name.replace("_", "-")

    @property
    def value_type(self):
        """The type without Optional: int for Optional[int], list[int] for a list of sizes."""
        args = [a for a in typing.get_args(self.type) if a is not type(None)]
        return args[0] if typing.get_origin(self.type) is typing.Union else self.type

    def default_value(self):
        """A fresh copy of the default (lists and dicts are not shared between configs)."""
        return copy.deepcopy(self.default)

    def dataclass_field(self):
        if isinstance(self.default, (list, dict)):
            return field(default_factory=self.default_value)
        return field(default=self.default)


TRAIN_OPTIONS: tuple[Option, ...] = (
    Option("preset", str, "industrial", "the preset the other values started from"),
    Option("plan", dict, {}, "--preset auto: why each planned value was chosen"),
    Option("init_from", Optional[str], None,
           "the run or built-in model whose weights this run started from (fine-tuning)"),
    Option("colour", Optional[str], None,
           "luminance: colour images are trained and predicted as their luminance (one "
           "channel), as the built-in model this run starts from reads them"),
    # -- model
    Option("model", str, "tiny_unet", "the network (models.available_models())"),
    Option("model_options", dict, {}, "the network's own options, e.g. base_channels"),
    Option("spatial_dims", int, 2, "2 (images, slices of stacks) or 3 (volumes)"),
    Option("patch_size", list[int], [512, 512],
           "the network's output window; one size: every axis",
           flag=True, metavar="S", form=Form("Patch size", 16, 2048, step=16)),
    # -- optimisation
    Option("steps", int, 2500, "optimizer steps", at_least=1, flag=True,
           form=Form("Steps", 1, 10_000_000, value=200)),
    Option("minutes", Optional[float], None,
           "train for about this long: the steps come from a short timing of the first ones "
           "(--steps wins where given)", flag=True, metavar="M",
           form=Form("Minutes", 0.5, 24 * 60, value=10, decimals=1)),
    Option("batch_size", int, 16, "per process; the global batch is batch_size x world size",
           at_least=1, flag=True, metavar="B", form=Form("Batch size", 1, 4096)),
    Option("optimizer", str, "rmsprop", choices=OPTIMIZERS),
    Option("lr", float, 1e-4, "the learning rate", flag=True,
           form=Form("Learning rate", 1e-6, 1.0, step=1e-5, decimals=6)),
    Option("weight_decay", float, 1e-5),
    Option("momentum", float, 0.8),
    Option("rmsprop_alpha", float, 0.9),
    Option("rmsprop_centered", bool, True),
    Option("adam_betas", list[float], [0.9, 0.999]),
    Option("lr_schedule", str, "exponential_step", choices=SCHEDULES),
    Option("lr_decay_rate", float, 0.8),
    Option("lr_decay_steps", int, 500, at_least=1),
    Option("warmup_steps", int, 0, at_least=0),
    Option("grad_clip", float, 0.0, "the gradient's largest norm (0 = off)"),
    Option("ema", float, 0.0,
           "exponential moving average of the weights (decay per step, e.g. 0.999; 0 = off): "
           "the averaged weights are validated, saved for prediction and exported"),
    Option("loss", str, "adaptive", choices=LOSSES, flag=True),
    Option("regions", Optional[list], None,
           "region training: one sigmoid output per region, each a list of mask values, nested "
           "from the largest to the smallest (\"brats\" = whole tumour, tumour core, enhancing "
           "tumour)"),
    Option("resample", int, 1,
           "train and predict at 1/resample of the resolution on every spatial axis (nnU-Net's "
           "low-resolution stage): a patch then sees resample^dims times the volume"),
    # -- data
    Option("normalization", str, "minus_one_one", choices=NORMALIZATIONS),
    Option("foreground_value", Optional[int], None,
           "mask value of the object of interest (ISBI's membrane is 0)", flag=True,
           metavar="V"),
    Option("unlabeled", str, "background",
           "what mask pixels of 0 mean: background, or unknown (ignore: strokes or some painted "
           "slices; paint the background with --background-value)",
           choices=UNLABELED_CHOICES, flag=True),
    Option("background_value", int, 1, "--unlabeled ignore: the mask value painted on the "
           "background", flag=True, metavar="V"),
    Option("ignore_value", Optional[int], None,
           "mask value of pixels nobody labelled: left out of training and of the scores",
           flag=True, metavar="V"),
    Option("instances", str, "merge",
           "instance masks (one value per object): merge = every object is the foreground; "
           "boundary = learn background, interior and boundary, and make objects by a seeded "
           "watershed (touching nuclei come apart); foreground = the masks mark the objects' area "
           "alone (strokes, a class mask) and a model of objects it starts from (--init-from "
           "nuclei) keeps its own interior / boundary split", choices=INSTANCE_CHOICES, flag=True),
    Option("foreground_oversample", float, 0.0),
    Option("fold", Optional[int], None, "the validation fold", flag=True, metavar="K"),
    Option("folds", int, 5, at_least=1, flag=True, metavar="N"),
    Option("split_seed", int, 0, at_least=0),
    # -- augmentation
    Option("hflip", float, 0.5),
    Option("vflip", float, 0.0),
    Option("rot90", list[int], [0, 1, 2]),
    Option("crop_resize", Optional[list[float]], None),
    Option("brightness", float, 0.0),
    Option("contrast", float, 0.0, "scale each channel about its mean by 1 +- contrast"),
    Option("flip_all_axes", bool, False),
    Option("gamma", float, 0.0, "probability per image channel of a gamma change (0.7-1.5, "
           "statistics kept): images from other scanners"),
    Option("low_resolution", float, 0.0, "probability per image channel of simulated low "
           "resolution (down by up to 2x and back)"),
    Option("elastic", float, 0.0, "probability of an elastic deformation per item"),
    Option("elastic_magnitude", float, 10.0, "pixels, std of the control points' displacement"),
    Option("elastic_grid", int, 3, "control points per axis"),
    # -- schedule of side work
    Option("log_every", int, 10, at_least=1),
    Option("val_every", int, 250, at_least=1, flag=True),
    Option("checkpoint_every", int, 250, at_least=1, flag=True),
    Option("val_tile_size", Optional[list[int]], None, "default: patch_size"),
    Option("val_overlap", float, 0.25),
    Option("threshold", float, 0.5),
    Option("fit_threshold", bool, False,
           "after training, the threshold of the foreground probability that gives the best "
           "Dice on whole images (the validation part, else the training images) becomes "
           "the run's own (a model with one foreground class)", flag=True),
    Option("keep_largest", bool, False,
           "prediction keeps only the largest connected object (all foreground labels "
           "together; a region model's whole tumour) and clears the rest: for data with one "
           "object per image, where a false detection away from it is a pure loss"),
    # -- execution
    Option("amp", str, "auto", "mixed precision; auto: bf16 where the GPU or CPU computes it "
           "natively (CPUs with AVX512-BF16 or AMX), else full precision", choices=AMP_MODES,
           flag=True, form=Form("AMP")),
    Option("compile", bool, False, "torch.compile", flag=True, form=Form("torch.compile")),
    Option("channels_last", bool, True, flag="--no-channels-last"),
    Option("tf32", bool, True),
    Option("device", str, "auto", "auto: a CUDA GPU, else an Apple GPU (mps), else the CPU",
           choices=DEVICES, flag=True, form=Form("Device")),
    Option("seed", int, 0, at_least=0, flag=True),
)

OPTIONS: dict[str, Option] = {option.name: option for option in TRAIN_OPTIONS}
# the options `napari_unet train` offers as flags, and those the Train widget shows
FLAGGED = tuple(option for option in TRAIN_OPTIONS if option.flag)
SHOWN = tuple(option for option in TRAIN_OPTIONS if option.form is not None)


def option_args(option, value, spatial_dims: int) -> list[str]:
    """The ``napari_unet train`` options that set `option` to `value` (what a face shows):
    its flag, else --set NAME=VALUE; a list option's one value is given for every axis."""
    if option.value_type is bool:
        if not option.flag:
            return ["--set", f"{option.name}={str(value).lower()}"]
        wanted = not value if option.flag_name.startswith("--no-") else value
        return [option.flag_name] if wanted else []
    values = [value] * spatial_dims if isinstance(option.default, list) else [value]
    texts = [repr(v) if isinstance(v, float) else str(v) for v in values]
    if option.flag:
        return [option.flag_name, *texts]
    listed = f"[{', '.join(texts)}]" if isinstance(option.default, list) else texts[0]
    return ["--set", f"{option.name}={listed}"]
