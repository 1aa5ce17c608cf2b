"""Run configuration: one dataclass, presets as data (from SPEC.md), a YAML round trip.

Every option exists once, here; the CLI and the widgets map onto these fields.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..choices import (
    AMP_MODES,
    DEVICES,
    NORMALIZATIONS,
    OPTIMIZERS,
    PRESETS,
    REGION_LOSSES,
    REGION_SETS,
    SCHEDULES,
)
from ..errors import ConfigError


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults are the `industrial` preset."""

    preset: str = "industrial"
    # model
    model: str = "tiny_unet"
    model_options: dict = field(default_factory=dict)
    spatial_dims: int = 2
    patch_size: list = field(default_factory=lambda: [512, 512])  # the network's output window
    # optimisation
    steps: int = 2500
    batch_size: int = 16  # per process; the global batch is batch_size x world size
    optimizer: str = "rmsprop"
    lr: float = 1e-4
    weight_decay: float = 1e-5
    momentum: float = 0.8
    rmsprop_alpha: float = 0.9
    rmsprop_centered: bool = True
    adam_betas: list = field(default_factory=lambda: [0.9, 0.999])
    lr_schedule: str = "exponential_step"
    lr_decay_rate: float = 0.8
    lr_decay_steps: int = 500
    warmup_steps: int = 0
    grad_clip: float = 0.0  # 0 = off
    # exponential moving average of the weights (decay per step, e.g. 0.999; 0 = off): the
    # averaged weights are validated, saved for prediction and exported
    ema: float = 0.0
    loss: str = "adaptive"
    # region training: one sigmoid output per region, each a list of mask values, nested from
    # the largest to the smallest ("brats" = whole tumour, tumour core, enhancing tumour)
    regions: typing.Optional[list] = None
    # train and predict at 1/resample of the resolution on every spatial axis (nnU-Net's
    # low-resolution stage): a patch then sees resample^dims times the volume
    resample: int = 1
    # data
    normalization: str = "minus_one_one"
    foreground_value: typing.Optional[int] = None
    foreground_oversample: float = 0.0
    fold: typing.Optional[int] = None
    folds: int = 5
    split_seed: int = 0
    # augmentation
    hflip: float = 0.5
    vflip: float = 0.0
    rot90: list = field(default_factory=lambda: [0, 1, 2])
    crop_resize: typing.Optional[list] = None
    brightness: float = 0.0
    contrast: float = 0.0  # scale each channel about its mean by 1 +- contrast
    flip_all_axes: bool = False
    elastic: float = 0.0  # probability of an elastic deformation per item
    elastic_magnitude: float = 10.0  # pixels, std of the control points' displacement
    elastic_grid: int = 3  # control points per axis
    # schedule of side work
    log_every: int = 10
    val_every: int = 250
    checkpoint_every: int = 250
    val_tile_size: typing.Optional[list] = None  # default: patch_size
    val_overlap: float = 0.25
    threshold: float = 0.5
    # prediction keeps only the largest connected object (all foreground labels together;
    # a region model's whole tumour) and clears the rest: for data with one object per image,
    # where a false detection away from it is a pure loss (nnU-Net's postprocessing)
    keep_largest: bool = False
    # execution
    amp: str = "bf16"
    compile: bool = False
    channels_last: bool = True
    tf32: bool = True
    device: str = "auto"
    seed: int = 0

    def __post_init__(self):
        self.validate()

    # -- checks -------------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        _check_choice("amp", self.amp, AMP_MODES)
        _check_choice("device", self.device, DEVICES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _check_choice("normalization", self.normalization, NORMALIZATIONS)
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, not {self.spatial_dims}")
        if isinstance(self.patch_size, int):
            self.patch_size = [self.patch_size]
        if len(self.patch_size) == 1:  # one size for every axis
            self.patch_size = list(self.patch_size) * self.spatial_dims
        self.patch_size = [int(p) for p in self.patch_size]
        if len(self.patch_size) != self.spatial_dims or min(self.patch_size) < 1:
            raise ConfigError(
                f"patch_size {self.patch_size} needs {self.spatial_dims} positive sizes "
                f"for a {self.spatial_dims}D model")
        for name in ("steps", "batch_size", "log_every", "val_every", "checkpoint_every", "folds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, not {self.lr}")
        if self.fold is not None and not 0 <= self.fold < self.folds:
            raise ConfigError(f"fold {self.fold} is out of range: use 0..{self.folds - 1} "
                              f"(or change --folds)")
        check_intensity_and_elastic(self.contrast, self.elastic, self.elastic_magnitude,
                                    self.elastic_grid)
        self.regions = check_regions(self.regions)
        if self.regions is not None and self.loss not in REGION_LOSSES:
            raise ConfigError(f"region training has its own loss (sigmoid cross-entropy + Dice "
                              f"per region): use --loss dice_ce, not {self.loss}")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema is a decay per step in [0, 1) (0 = off, e.g. 0.999), "
                              f"not {self.ema}")
        if self.resample < 1:
            raise ConfigError(f"resample must be 1 (full resolution) or more, not {self.resample}")
        if not 0.0 <= self.val_overlap < 1.0:
            raise ConfigError(f"val_overlap must be in [0, 1), not {self.val_overlap}")
        return self

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; "
                              f"valid keys: {', '.join(known)}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text_or_path) -> TrainConfig:
        text = text_or_path
        if isinstance(text_or_path, Path) or (isinstance(text_or_path, str)
                                              and text_or_path.endswith((".yaml", ".yml"))):
            try:
                text = Path(text_or_path).read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read config {text_or_path}: {exc.strerror}") from None
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise ConfigError("config YAML must be a mapping of option: value")
        return cls.from_dict(values)

    def replace(self, **overrides) -> TrainConfig:
        values = self.to_dict()
        values.update(overrides)
        return TrainConfig.from_dict(values)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def _coerce(name, value, hint):
    """Accept what YAML and the command line give (int for float, list for tuple), reject the rest."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint is list and isinstance(value, (list, tuple)):
        return list(value)
    if name == "regions" and isinstance(value, str):
        return value  # a named set, expanded by check_regions
    if hint is list and isinstance(value, int) and name in ("patch_size", "val_tile_size"):
        return [value]
    if hint is dict and isinstance(value, dict):
        return dict(value)
    raise ConfigError(f"config key {name!r} expects {getattr(hint, '__name__', hint)}, "
                      f"got {type(value).__name__} {value!r}")


def check_regions(regions):
    """None, or the regions as lists of ints: a name of choices.REGION_SETS or a list of lists
    of mask values, each region containing the next (their labels are written back in order)."""
    if regions is None:
        return None
    if isinstance(regions, str):
        if regions not in REGION_SETS:
            raise ConfigError(f"regions {regions!r} is unknown: use one of "
                              f"{', '.join(REGION_SETS)} or lists of label values")
        regions = REGION_SETS[regions]["regions"]
    try:
        regions = [sorted({int(v) for v in region}) for region in regions]
    except (TypeError, ValueError):
        raise ConfigError(f"regions must be lists of label values, e.g. [[1, 2, 4], [1, 4], [4]], "
                          f"not {regions!r}") from None
    if not regions or any(not r or min(r) < 1 for r in regions):
        raise ConfigError("each region needs label values of 1 or more (0 is background)")
    for outer, inner in zip(regions, regions[1:]):
        if not set(inner) < set(outer):
            raise ConfigError(f"regions must be nested, each inside the one before: {inner} is "
                              f"not inside {outer}")
    return regions


def check_intensity_and_elastic(contrast: float, elastic: float, elastic_magnitude: float,
                                elastic_grid: int) -> None:
    """The bounds of the contrast and elastic augmentation options (the config and the
    Augmenter both check them: a bad value fails when the config is read, before training)."""
    if not 0.0 <= contrast < 1.0:
        raise ConfigError(f"contrast must be in [0, 1) (factors 1 +- contrast), not {contrast}")
    if not 0.0 <= elastic <= 1.0:
        raise ConfigError(f"elastic is a probability: use a value in [0, 1], not {elastic}")
    if elastic_magnitude < 0 or int(elastic_grid) < 2:
        raise ConfigError(f"elastic_magnitude {elastic_magnitude} / elastic_grid {elastic_grid}: "
                          f"use a magnitude >= 0 pixels and at least 2 control points per axis")


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_config(name: str, **overrides) -> TrainConfig:
    """The preset's configuration with `overrides` applied (None values are ignored)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    values = {"preset": name, **PRESETS[name]}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)
