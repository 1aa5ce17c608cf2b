"""Run configuration: one dataclass made from the option table, presets as data (from
SPEC.md), a YAML round trip.

Every option is a row of napari_unet/options.py (name, type, default, choices, help): the
fields of TrainConfig and their choice and range checks are made from those rows, as are the
CLI's flags and the Train widget's fields. Importing this module costs no torch.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import yaml

from ..choices import (
    AUTO_PRESET,
    PRESET_CHOICES,
    PRESETS,
    REGION_LOSSES,
    REGION_SETS,
    preset_options,
)
from ..errors import ConfigError
from ..options import OPTIONS, TRAIN_OPTIONS


class _TrainConfigMethods:
    """The checks and the YAML round trip of :class:`TrainConfig` (its fields are the rows of
    napari_unet.options.TRAIN_OPTIONS)."""

    def __post_init__(self):
        self.validate()

    # -- checks -------------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        for option in TRAIN_OPTIONS:
            value = getattr(self, option.name)
            if option.choices is not None:
                _check_choice(option.name, value, option.choices)
            if option.at_least is not None and value < option.at_least:
                raise ConfigError(f"{option.name} must be at least {option.at_least}, not {value}")
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, not {self.spatial_dims}")
        self.patch_size = _check_patch_size(self.patch_size, self.spatial_dims)
        for option in TRAIN_OPTIONS:  # nan and inf pass every comparison below: none here
            value = getattr(self, option.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{option.name} must be a finite number, not {value}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, not {self.lr}")
        for name in ("weight_decay", "grad_clip", "brightness", "lr_decay_rate"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, not {getattr(self, name)}")
        for name in ("hflip", "vflip", "foreground_oversample", "threshold", "momentum",
                     "rmsprop_alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], not {getattr(self, name)}")
        if len(self.adam_betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1
                                                 for b in self.adam_betas):
            raise ConfigError(f"adam_betas are two decays in [0, 1) (e.g. [0.9, 0.999]), "
                              f"not {self.adam_betas}")
        if self.fold is not None and self.folds < 2:
            raise ConfigError(f"--fold {self.fold} needs 2 folds or more to cut a validation "
                              f"part: raise --folds, or leave out --fold")
        if self.minutes is not None and not self.minutes > 0:
            raise ConfigError(f"minutes must be above 0 (the time to train), not {self.minutes}")
        if self.fold is not None and not 0 <= self.fold < self.folds:
            raise ConfigError(f"fold {self.fold} is out of range: use 0..{self.folds - 1} "
                              f"(or change --folds)")
        check_intensity_and_elastic(self.contrast, self.elastic, self.elastic_magnitude,
                                    self.elastic_grid, self.gamma, self.low_resolution)
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
        return cls(**{k: _coerce(k, v, OPTIONS[k].type) for k, v in values.items()})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text_or_path) -> TrainConfig:
        text, source = text_or_path, "config"
        if isinstance(text_or_path, Path) or (isinstance(text_or_path, str)
                                              and text_or_path.endswith((".yaml", ".yml"))):
            source = f"config {text_or_path}"
            try:
                text = Path(text_or_path).read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read config {text_or_path}: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise ConfigError(f"{text_or_path} is not a YAML file: give a run's config.yaml "
                                  f"(or a file of option: value lines)") from None
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source} is not valid YAML: "
                              f"{str(exc).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: the YAML must be a mapping of option: value")
        return cls.from_dict(values)

    def replace(self, **overrides) -> TrainConfig:
        values = self.to_dict()
        values.update(overrides)
        return TrainConfig.from_dict(values)


# Everything that defines a training run, one field per option row; defaults are the
# `industrial` preset.
TrainConfig = dataclasses.make_dataclass(
    "TrainConfig", [(o.name, o.type, o.dataclass_field()) for o in TRAIN_OPTIONS],
    bases=(_TrainConfigMethods,),
    namespace={"__doc__": "Everything that defines a training run (one field per row of "
                          "napari_unet.options). Defaults are the `industrial` preset.",
               "__module__": __name__})


def _check_patch_size(patch_size, spatial_dims: int) -> list:
    """The patch as one positive int per axis (one size given: the same on every axis)."""
    if isinstance(patch_size, int):
        patch_size = [patch_size]
    if len(patch_size) == 1:
        patch_size = list(patch_size) * spatial_dims
    patch_size = [int(p) for p in patch_size]
    if len(patch_size) != spatial_dims or min(patch_size) < 1:
        raise ConfigError(f"patch_size {patch_size} needs {spatial_dims} positive sizes "
                          f"for a {spatial_dims}D model")
    return patch_size


def _check_choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def _coerce(name, value, hint):
    """Accept what YAML and the command line give (int for float, list for tuple), reject the
    rest."""
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        if value is None:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    hint = typing.get_origin(hint) or hint  # list[int] -> list: the items are not converted
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
                                elastic_grid: int, gamma: float = 0.0,
                                low_resolution: float = 0.0) -> None:
    """The bounds of the contrast and elastic augmentation options (the config and the
    Augmenter both check them: a bad value fails when the config is read, before training)."""
    if not 0.0 <= contrast < 1.0:
        raise ConfigError(f"contrast must be in [0, 1) (factors 1 +- contrast), not {contrast}")
    for name, value in (("elastic", elastic), ("gamma", gamma),
                        ("low_resolution", low_resolution)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} is a probability: use a value in [0, 1], not {value}")
    if elastic_magnitude < 0 or int(elastic_grid) < 2:
        raise ConfigError(f"elastic_magnitude {elastic_magnitude} / elastic_grid {elastic_grid}: "
                          f"use a magnitude >= 0 pixels and at least 2 control points per axis")


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_config(name: str, **overrides) -> TrainConfig:
    """The preset's configuration with `overrides` applied (None values are ignored)."""
    if name != AUTO_PRESET and name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_CHOICES)}")
    # auto: the values come in `overrides`, from a plan (engine.plan.Plan.config)
    values = {"preset": name, **(preset_options(name) if name in PRESETS else {})}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)
