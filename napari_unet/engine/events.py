"""Events that the engine's generators yield. Small, frozen, JSON-friendly.

Every face consumes the same stream: the CLI prints it, the widget receives it through a
child process's JSON lines (``to_json`` / ``from_json`` make the round trip), tests assert
on it.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Started:
    total_steps: int
    start_step: int
    run_dir: str
    device: str
    world_size: int = 1
    global_batch_size: int = 0
    train_samples: int = 0
    val_samples: int = 0


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float
    lr: float
    img_s: float


@dataclass(frozen=True)
class Validation:
    step: int
    dice: float
    dice_per_class: tuple = ()
    loss: float = float("nan")
    best: bool = False


@dataclass(frozen=True)
class CheckpointSaved:
    path: str
    step: int


@dataclass(frozen=True)
class TilesDone:
    """Progress of a prediction: tiles done of all, or blocks over workers (`unit`)."""

    done: int
    total: int
    unit: str = "tiles"


@dataclass(frozen=True)
class FileDone:
    """One file of a many-file prediction handled: written, or skipped with the reason."""

    done: int  # files handled so far
    total: int
    path: str
    error: str = ""  # empty when the file was predicted and written


@dataclass(frozen=True)
class Planned:
    """--preset auto and --minutes: the plan, one `name = value: reason` line per choice,
    and the steps that fill the minutes (0 where the steps were given)."""

    lines: tuple
    steps: int = 0
    seconds_per_step: float = 0.0
    minutes: float = 0.0


@dataclass(frozen=True)
class Message:
    level: str  # "info" | "warning"
    text: str


@dataclass(frozen=True)
class Finished:
    best_dice: float
    path: str
    step: int
    cancelled: bool = False
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MasksUpdated:
    """A live run: new paint is in the sampler from step `step` on. `samples`: the sample
    indices changed; `labelled`: the labelled pixels of all masks now; `seconds`: from the
    update's arrival (``LiveControl.update_mask``) to the sampler."""

    step: int
    samples: tuple
    labelled: int
    seconds: float


@dataclass(frozen=True)
class ViewPredicted:
    """A live run predicted its view with the weights of step `step`. `time`: seconds since
    the run started; `seconds`: what the prediction took; `period`: seconds to the next one
    (at least the asked period, and at least 3 x `seconds`: a prediction takes at most a
    third of the time); `path`: where a face wrote it (the probabilities), or empty. The
    arrays themselves: ``LiveControl.latest()`` in the process that trains. Which view it
    predicted: `view`, the key its face gave with ``set_view`` (the Train widget: the slice;
    -1: the first view, --predict's), and `region`, the box of the image predicted (start,
    stop of each spatial axis, flat: y0, y1, x0, x1; empty: all of it)."""

    step: int
    time: float
    seconds: float
    period: float
    labelled: int = 0
    path: str = ""
    view: int = -1
    region: tuple = ()


@dataclass(frozen=True)
class Failed:
    """Only in JSON streams: the child process ended with an error the user can fix."""

    error: str


EVENT_TYPES = {cls.__name__: cls for cls in
               (Started, Progress, Validation, CheckpointSaved, TilesDone, FileDone, Planned,
                Message, Finished, Failed, MasksUpdated, ViewPredicted)}


def to_json(event) -> str:
    payload = dataclasses.asdict(event)
    payload["event"] = type(event).__name__
    return json.dumps(payload, allow_nan=True)


def from_json(line: str):
    payload = json.loads(line)
    cls = EVENT_TYPES[payload.pop("event")]
    for name, value in payload.items():
        if isinstance(value, list):
            payload[name] = tuple(value)
    return cls(**payload)
