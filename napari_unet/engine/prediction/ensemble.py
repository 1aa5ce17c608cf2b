"""Several trained models predicting as one (nnU-Net's ensemble of its fold models): each
model predicts the image with its own normalisation, tile size and resolution, their
probabilities are averaged, and the labels (and objects) are taken once from the average with
the first model's threshold and label head.

:func:`load_models` gives a :class:`Checkpoint` for one run and an :class:`Ensemble` for
several; :func:`napari_unet.engine.predict` takes either.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import ConfigError
from ..checkpoint import Checkpoint
from ..export.loader import load_checkpoint


@dataclass(frozen=True)
class Ensemble:
    """Models of one task (the same inputs and outputs); the first one's label head,
    threshold and postprocessing apply to their averaged probabilities."""

    members: tuple[Checkpoint, ...]

    def __post_init__(self):
        if len(self.members) < 2:
            raise ConfigError("an ensemble needs two models or more: give --run twice or more")
        first = self.members[0]
        for other in self.members[1:]:
            mismatch = _mismatch(first, other)
            if mismatch:
                raise ConfigError(f"{first.path} and {other.path} {mismatch}: an ensemble "
                                  f"averages models of one task (e.g. the folds of one recipe)")

    # what callers read of a checkpoint, from the first model
    @property
    def model(self):
        return self.members[0].model

    @property
    def head(self):
        return self.members[0].head

    @property
    def config(self):
        return self.members[0].config

    @property
    def data_info(self) -> dict:
        return self.members[0].data_info

    @property
    def path(self) -> Path:
        return self.members[0].path


def _mismatch(first: Checkpoint, other: Checkpoint) -> str:
    a, b = first.model, other.model
    if a.spatial_dims != b.spatial_dims:
        return f"are {a.spatial_dims}D and {b.spatial_dims}D models"
    if a.in_channels != b.in_channels:
        return f"take {a.in_channels} and {b.in_channels} image channels"
    if first.head != other.head:
        return (f"predict different things ({_describe(first.head)} and "
                f"{_describe(other.head)})")
    return ""


def _describe(head) -> str:
    if head.kind != "classes":
        return f"{head.kind} {', '.join(head.names)}"
    return f"{head.num_classes} classes in {head.outputs} output(s)"


def load_models(run) -> Checkpoint | Ensemble:
    """A run folder, checkpoint or package (or a loaded one) -> Checkpoint; a list of several
    -> Ensemble (a list of one -> its Checkpoint)."""
    if isinstance(run, (Checkpoint, Ensemble)):
        return run
    if isinstance(run, (list, tuple)):
        members = [load_models(item) for item in run]
        if len(members) == 1:
            return members[0]
        if any(isinstance(member, Ensemble) for member in members):
            raise ConfigError("an ensemble's members are single models, not ensembles")
        return Ensemble(tuple(members))
    return load_checkpoint(run)
