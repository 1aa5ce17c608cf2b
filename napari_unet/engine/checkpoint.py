"""Checkpoints: weights, config, normalisation, label head, step, optimizer/scaler/scheduler and
RNG states.

Written atomically (temporary file + rename), so a kill or a full disk never leaves a
half-written checkpoint under the real name. Loaded with ``weights_only=True``: a
checkpoint holds tensors and plain Python values only, never pickled code.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError, NapariUnetError
from ..io import atomic_write
from ..models import build_model
from .config import TrainConfig
from .labels import LabelHead

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (weights loaded, eval mode) and what is needed to use it.

    ``head``: what the model's outputs mean (classes or regions), the one the run saved in
    ``data_info["labels"]``; for a checkpoint or package from before the head, the one its
    data_info and its model's outputs imply."""

    model: torch.nn.Module
    config: TrainConfig
    norm_stats: dict
    step: int
    best_dice: float
    data_info: dict
    path: Path
    state: dict  # the raw dictionary, for resuming
    head: LabelHead = field(default=None)

    def __post_init__(self):
        if self.head is None:
            self.head = LabelHead.from_saved(self.data_info, self.model.num_classes)


def save_checkpoint(path, *, model, config, norm_stats, step, best_dice, data_info,
                    optimizer=None, scheduler=None, scaler=None, extra=None, ema=None) -> Path:
    """``model_state`` holds the trained weights (what a resume continues); with ``ema`` (a
    ``torch.optim.swa_utils.AveragedModel``) ``ema_state`` holds their moving average, which
    is what load_checkpoint gives to prediction, evaluation and export."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format_version": FORMAT_VERSION,
        "model_hparams": dict(model.hparams),
        "model_state": model.state_dict(),
        "config": config.to_dict(),
        "norm_stats": norm_stats,
        "step": int(step),
        "best_dice": float(best_dice),
        "data_info": data_info,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "torch_rng": torch.get_rng_state(),
        "extra": extra or {},
    }
    if ema is not None:
        state["ema_state"] = ema.module.state_dict()
        state["ema_averaged"] = int(ema.n_averaged)
    return write_state(path, state)


def write_state(path, state: dict) -> Path:
    """Write a checkpoint's `state` to `path` atomically (save_checkpoint's, or one read by
    read_checkpoint and changed)."""
    path = Path(path)
    try:
        with atomic_write(path, overwrite=True) as tmp:
            torch.save(state, tmp)
    except OSError as exc:  # a full disk, a removed folder: the previous checkpoint is intact
        reason = exc.strerror or str(exc).splitlines()[0]
        raise CheckpointError(f"cannot write checkpoint {path} ({reason}): free disk space or "
                              f"choose another --out; the previous checkpoint is intact") from None
    return path


def _starts_as_zip(path: Path) -> bool:
    """Whether the file begins as torch.save's zip archives do (a damaged one still does)."""
    with open(path, "rb") as file:
        return file.read(2) == b"PK"


def read_checkpoint(path) -> dict:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as exc:
        if path.is_file() and not _starts_as_zip(path):  # a picture, a YAML file, ...
            raise CheckpointError(f"{path} is not a napari_unet checkpoint (a run's "
                                  f"checkpoints/best.pt or last.pt): give a run folder or one "
                                  f"of its checkpoints") from None
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupted or not a napari_unet checkpoint "
                              f"({reason}); use another checkpoint or retrain") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path} is not a napari_unet checkpoint")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state['format_version']}, newer than this "
            f"napari_unet understands ({FORMAT_VERSION}): upgrade napari-unet-torch")
    return state


def build_from_state(name_and_hparams: dict, weights: dict, config_values: dict, source):
    """(model with `weights` loaded, in eval mode, TrainConfig) from what a checkpoint or a
    package stores; a clear CheckpointError when they do not fit this version or each other."""
    hparams = dict(name_and_hparams)
    name = hparams.pop("name")
    try:
        model = build_model(name, **hparams)
        model.load_state_dict(weights)
        config = TrainConfig.from_dict(config_values)
    except (NapariUnetError, RuntimeError, KeyError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise CheckpointError(f"{source} has a config this version cannot read: "
                                  f"{exc}") from None
        raise CheckpointError(f"{source} does not match its model ({name}): "
                              f"{str(exc).splitlines()[0][:160]}") from None
    return model.eval(), config
