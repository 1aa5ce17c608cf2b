"""The run folder: its layout, written by the trainer and read back by every face.

    RUN/config.yaml          the TrainConfig (a GUI run can be repeated headless)
    RUN/metrics.jsonl        one JSON record per logged step: loss, lr, img/s; val_dice
    RUN/checkpoints/         best.pt (best validation Dice), last.pt (latest, for --resume)
    RUN/predictions/         what --predict wrote: NAME_labels.tif, NAME_probabilities.tif
    RUN/data/images, masks/  the training pairs a widget wrote (see training_set.py)
    RUN/data/images.tif, masks.tif   the synthetic data of a --sample run
    RUN/evaluation.json      what --evaluate measured
    RUN/.napari_unet_train.json   the pid of a training child while it runs
    RUN/live_inbox/          a live run's mask regions and views sent by another process

File names and metric keys are spelled here only; the trainer, the runner, the widgets and
the CLI use these names. No numpy, torch or Qt.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import builtin
from .errors import CheckpointError, ConfigError
from .io import atomic_write

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
PREDICTIONS = "predictions"
DATA = "data"
EVALUATION = "evaluation.json"
PID_FILE = ".napari_unet_train.json"
LIVE_INBOX = "live_inbox"  # a live run's updates from another process (napari_unet.live_inbox)
BEST = "best.pt"
LAST = "last.pt"
SAMPLE_IMAGES, SAMPLE_MASKS = "images.tif", "masks.tif"  # in RUN/data/
LABELS_SUFFIX, PROBABILITIES_SUFFIX = "_labels.tif", "_probabilities.tif"  # of predictions
# metrics.jsonl keys
STEP, LOSS, LR, IMG_S, TIME = "step", "loss", "lr", "img_s", "time"
VAL_DICE, VAL_DICE_PER_CLASS = "val_dice", "val_dice_per_class"


class RunFolder:
    """config.yaml, metrics.jsonl, checkpoints/ and predictions/ of one run (rank 0 writes)."""

    def __init__(self, path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self.checkpoints = self.path / CHECKPOINTS
        self.predictions = self.path / PREDICTIONS
        self.last = self.checkpoints / LAST
        self.best = self.checkpoints / BEST

    def prepare(self, config, resume: bool) -> None:
        """Create the folders and write config.yaml; refuse to train over another run."""
        if not self.writer:
            return
        if self.last.exists() and not resume:
            raise ConfigError(f"{self.path} already holds a run: pass --resume to continue it, "
                              f"or choose another --out folder")
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            self.predictions.mkdir(exist_ok=True)
            self.write_config(config)
        except OSError as exc:
            raise ConfigError(f"cannot write the run folder {self.path}: {exc.strerror}; "
                              f"choose a writable --out folder") from None

    def write_config(self, config) -> None:
        """config.yaml, whole or not at all (written again where a run fitted to minutes
        re-fits its steps, or fits its threshold, after it started)."""
        if self.writer:
            with atomic_write(self.path / CONFIG, overwrite=True) as tmp:
                Path(tmp).write_text(config.to_yaml())

    def log(self, record: dict) -> None:
        if self.writer:
            with open(self.path / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    def log_progress(self, step: int, loss: float, lr: float, img_s: float) -> None:
        self.log({STEP: step, LOSS: loss, LR: lr, IMG_S: img_s, TIME: time.time()})

    def log_validation(self, step: int, dice: float, dice_per_class) -> None:
        self.log({STEP: step, VAL_DICE: dice, VAL_DICE_PER_CLASS: list(dice_per_class)})


def prediction_paths(run_dir, source) -> tuple[Path, Path]:
    """RUN/predictions/NAME_labels.tif and NAME_probabilities.tif for the image `source`."""
    stem = Path(source).name.split(".")[0]
    folder = Path(run_dir) / PREDICTIONS
    return folder / f"{stem}{LABELS_SUFFIX}", folder / f"{stem}{PROBABILITIES_SUFFIX}"


def is_run(folder) -> bool:
    """Whether `folder` looks like a run folder (it has a config.yaml)."""
    return (Path(folder) / CONFIG).is_file()


def find_checkpoint(run_or_file, prefer: str = BEST, required: bool = True):
    """A checkpoint file as given, else the run's best (else last) checkpoint; a built-in
    model's name gives its weights (napari_unet.builtin).

    Looks in RUN/checkpoints/, then in the folder itself. Without one: CheckpointError, or
    None when `required` is False.
    """
    path = Path(builtin.resolve(run_or_file))
    if path.is_file():
        return path
    if path.is_dir():
        for folder in (path / CHECKPOINTS, path):
            for name in dict.fromkeys((prefer, LAST, BEST)):
                if (folder / name).is_file():
                    return folder / name
    if not required:
        return None
    if path.is_dir():
        raise CheckpointError(f"no checkpoint in {path}: expected {CHECKPOINTS}/{BEST} or "
                              f"{CHECKPOINTS}/{LAST}; is this a napari_unet run folder?")
    raise CheckpointError(f"checkpoint {path} does not exist: give a run folder or a .pt file")


# -- reading a run back ------------------------------------------------------------------------
@dataclass
class RunRecord:
    """What a run folder tells about a run: its curves, its checkpoint and whether it lives."""

    run_dir: Path
    loss: list = field(default_factory=list)  # [(step, loss)]
    dice: list = field(default_factory=list)  # [(step, dice)]
    total_steps: int | None = None
    checkpoint: Path | None = None
    pid: int | None = None  # set while a child still trains there
    metrics_offset: int = 0  # bytes of metrics.jsonl read: a RunWatcher continues from here

    @property
    def last_step(self) -> int:
        steps = [s for s, _ in self.loss] + [s for s, _ in self.dice]
        return max(steps, default=0)


def read_run(run_dir) -> RunRecord:
    """The curves of RUN/metrics.jsonl, the best (else last) checkpoint and a live child's pid.

    Raises FileNotFoundError when the folder is not a napari_unet run.
    """
    run_dir = Path(run_dir)
    metrics = run_dir / METRICS
    if not is_run(run_dir) and not metrics.is_file():
        raise FileNotFoundError(f"{run_dir} is not a napari_unet run folder "
                                f"(no {CONFIG} or {METRICS})")
    record = RunRecord(run_dir=run_dir)
    record.loss, record.dice, record.metrics_offset = read_metrics(metrics, 0)
    record.total_steps = configured_steps(run_dir)
    record.checkpoint = find_checkpoint(run_dir, required=False)
    record.pid = live_pid(run_dir)
    return record


def read_metrics(path, offset: int = 0):
    """(loss points, dice points, new offset) from the complete lines after `offset`."""
    loss, dice = [], []
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except OSError:
        return loss, dice, offset
    end = chunk.rfind(b"\n") + 1  # a line being written stays for the next read
    for raw in chunk[:end].splitlines():
        try:
            record = json.loads(raw)
            step = int(record[STEP])
        except (ValueError, KeyError, TypeError):
            continue
        if LOSS in record and _finite(record[LOSS]):
            loss.append((step, float(record[LOSS])))
        if VAL_DICE in record and _finite(record[VAL_DICE]):
            dice.append((step, float(record[VAL_DICE])))
    return loss, dice, offset + end


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def configured_steps(run_dir):
    """The run's `steps` from its config.yaml, or None."""
    try:
        return int((yaml.safe_load((Path(run_dir) / CONFIG).read_text()) or {}).get("steps"))
    except Exception:  # noqa: BLE001 - a missing or damaged YAML only costs the step total
        return None


def read_spatial_dims(run_dir):
    """2 or 3 from the run's config.yaml, or None when it cannot be read."""
    dims = read_config_value(run_dir, "spatial_dims")
    return int(dims) if dims in (2, 3) else None


def read_config_value(run_dir, key: str):
    """One value of the run's config.yaml, or None when it cannot be read."""
    try:
        return (yaml.safe_load((Path(run_dir) / CONFIG).read_text()) or {}).get(key)
    except Exception:  # noqa: BLE001 - the caller guesses instead
        return None


# -- a training child's pid file ---------------------------------------------------------------
def write_pid_file(run_dir, pid: int, command) -> None:
    record = {"pid": pid, "started": time.time(), "command": [str(c) for c in command]}
    # re-attaching to a live run is a convenience; training works without the file
    with contextlib.suppress(OSError):
        (Path(run_dir) / PID_FILE).write_text(json.dumps(record))


def remove_pid_file(run_dir) -> None:
    with contextlib.suppress(OSError):
        (Path(run_dir) / PID_FILE).unlink(missing_ok=True)


def live_pid(run_dir):
    """The pid of the training child recorded in the run folder, if it is still running."""
    try:
        record = json.loads((Path(run_dir) / PID_FILE).read_text())
        pid, started = int(record["pid"]), float(record["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if alive(pid, started) else None


def alive(pid: int, started: float | None = None) -> bool:
    """Whether `pid` runs and is ours: created before `started` (when the pid file was
    written; a recycled pid is younger), else (where /proc tells) a napari_unet process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if started is not None:
        try:
            import psutil
            return psutil.Process(pid).create_time() <= started + 1.0
        except ImportError:
            pass  # the command line below tells, once the child has started
        except Exception:  # noqa: BLE001 - psutil.Error: gone meanwhile
            return False
    cmdline = Path(f"/proc/{pid}/cmdline")  # guard against a recycled pid where we can
    if cmdline.exists():
        try:
            return b"napari_unet" in cmdline.read_bytes()
        except OSError:
            return True
    return True


# -- where new runs go -------------------------------------------------------------------------
def default_runs_root() -> Path:
    return Path.home() / "napari_unet_runs"


def new_run_folder(root=None) -> Path:
    """A fresh, not yet existing ROOT/YYYYmmdd-HHMMSS[-N] folder name."""
    root = Path(root) if root is not None else default_runs_root()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder, n = root / stamp, 1
    while folder.exists():
        n += 1
        folder = root / f"{stamp}-{n}"
    return folder


def recent_runs(root=None, limit: int = 20) -> list[Path]:
    """The newest run folders under `root` (default ~/napari_unet_runs)."""
    root = Path(root) if root is not None else default_runs_root()
    try:
        folders = sorted((p for p in root.iterdir() if is_run(p)),
                         key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return []
    return folders[:limit]
