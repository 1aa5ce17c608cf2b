"""Training as a child process, its JSON events as Qt signals, and the clean-up around it.

``TrainingRunner`` starts ``python -m napari_unet.cli train ... --events jsonl`` (the CLI
launches torchrun itself for ``--nproc`` > 1), reads the child's stdout in a thread and turns
every line back into the engine's event (``events.from_json``), emitted on the GUI thread as a
Qt signal. The napari event loop therefore never waits on torch, Cancel is real (the child
gets SIGINT, saves a checkpoint and exits 130; after a grace period its whole process group
is killed) and GPU memory is returned when the child ends.

Nothing is left behind: every child runs in its own process group and is stopped when its
runner is garbage-collected, when the viewer window closes (the Train widget asks), when the
QApplication quits and, as a last guard, at interpreter exit.

A run that outlives the viewer (napari crashed, or another session started it) can be
re-attached: :func:`napari_unet.runs.read_run` restores its curves from ``RUN/metrics.jsonl`` and finds its
checkpoint; :class:`RunWatcher` follows a run that is still going.
"""
from __future__ import annotations

import atexit
import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import QApplication, QComboBox

from napari_unet import builtin, processes, runs
from napari_unet.engine import from_json
from napari_unet.engine.events import (
    CheckpointSaved,
    Failed,
    Finished,
    MasksUpdated,
    Message,
    Planned,
    Progress,
    Started,
    Validation,
    ViewPredicted,
)

# After SIGINT, how long the child may stay silent before its tree is killed: every line it
# writes (a step, a checkpoint) restarts the count, so a busy machine only makes it slower.
GRACE_S = float(os.environ.get("NAPARI_UNET_CANCEL_GRACE_S", "30"))
STDERR_LINES = 200

_CHILDREN: set = set()  # Popen objects still running, for the interpreter-exit guard
_RUNNERS: weakref.WeakSet[TrainingRunner] = weakref.WeakSet()


def train_command(args) -> list[str]:
    """The child's command line: the CLI's ``train`` with JSON events on stdout."""
    args = [str(a) for a in args]
    if "--events" not in args:
        args += ["--events", "jsonl"]
    return [sys.executable, "-m", "napari_unet.cli", "train", *args]


def _child_env() -> dict:
    """Leave the GUI a core: torch in the child uses one thread fewer than the machine has."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class TrainingRunner(QObject):
    """One training child process; its events as signals (always emitted on the GUI thread).

    Signals carry the engine's event dataclasses: ``started(Started)``,
    ``progress(Progress)``, ``validation(Validation)``, ``checkpoint(CheckpointSaved)``,
    ``message(Message)``, ``planned(Planned)`` (``--preset auto``, ``--minutes``: the plan and
    the timed steps, before ``started``), ``finished(Finished)``; ``failed(str)`` has a one-line reason,
    ``cancelled(str)`` the run folder, and ``exited(int)`` the exit status, always last.
    A live child (``train --live``) also sends ``masks_updated(MasksUpdated)`` and
    ``view_predicted(ViewPredicted)``.
    """

    started = Signal(object)
    progress = Signal(object)
    validation = Signal(object)
    checkpoint = Signal(object)
    message = Signal(object)
    planned = Signal(object)
    finished = Signal(object)
    masks_updated = Signal(object)
    view_predicted = Signal(object)
    failed = Signal(str)
    cancelled = Signal(str)
    exited = Signal(int)
    _line = Signal(str)
    _ended = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._process = None
        self._stderr = collections.deque(maxlen=STDERR_LINES)
        self._reset()
        self._line.connect(self._on_line)
        self._ended.connect(self._on_ended)
        _RUNNERS.add(self)
        _connect_quit_guard()

    def _reset(self):
        self.run_dir = None
        self.error = None
        self.cancel_requested = False
        self.last_finished = None
        self.last_checkpoint = None
        self.exit_code = None
        self._stderr.clear()

    # -- state --------------------------------------------------------------------------------
    @property
    def pid(self):
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def stderr_text(self) -> str:
        return "".join(self._stderr)

    # -- start ----------------------------------------------------------------------------------
    def start(self, args, run_dir=None) -> None:
        """Start ``napari_unet train ARGS --events jsonl``; raise RuntimeError if one runs."""
        if self.is_running():
            raise RuntimeError("a training run is already going: cancel it first")
        self._reset()
        self.run_dir = Path(run_dir) if run_dir else None
        process = subprocess.Popen(
            train_command(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1, env=_child_env(),
            **processes.popen_options())
        self._process = process
        _CHILDREN.add(process)
        # if the runner is dropped while the child runs, the child goes with it
        self._finalizer = weakref.finalize(self, processes.stop_soon, process, GRACE_S)
        stderr_thread = threading.Thread(target=_pump_stderr, args=(process, self._stderr),
                                         daemon=True, name="napari-unet-stderr")
        stderr_thread.start()
        # the threads hold the runner weakly: a dropped runner still stops its child
        threading.Thread(target=_pump_stdout, args=(weakref.ref(self), process, stderr_thread),
                         daemon=True, name="napari-unet-stdout").start()
        self._write_pid_file(process)

    def _write_pid_file(self, process):
        if self.run_dir is not None:
            runs.write_pid_file(self.run_dir, process.pid, process.args)

    # -- events -----------------------------------------------------------------------------------
    def _on_line(self, line: str):
        if not line.strip():
            return
        try:
            event = from_json(line)
        except (ValueError, KeyError, TypeError, AttributeError):  # not an event
            self.message.emit(Message("info", line.strip()))
            return
        if isinstance(event, Failed):
            self.error = event.error
            return
        if isinstance(event, Finished):
            self.last_finished = event
        if isinstance(event, CheckpointSaved):
            self.last_checkpoint = event.path
        for kind, signal_ in ((Started, self.started), (Progress, self.progress),
                              (Validation, self.validation), (CheckpointSaved, self.checkpoint),
                              (Message, self.message), (Planned, self.planned),
                              (Finished, self.finished), (MasksUpdated, self.masks_updated),
                              (ViewPredicted, self.view_predicted)):
            if isinstance(event, kind):
                signal_.emit(event)
                return

    def _on_ended(self, code: int):
        process = self._process
        _CHILDREN.discard(process)
        self._finalizer.detach()
        self.exit_code = code
        self._remove_pid_file()
        if code == 0 and self.last_finished is not None:
            pass  # finished was emitted with the event
        elif self.cancel_requested or code in (130, -signal.SIGINT, -signal.SIGKILL,
                                               -signal.SIGTERM):
            self.cancelled.emit(str(self.run_dir or ""))
        elif code != 0:
            self.failed.emit(self.error or self._reason(code))
        else:
            self.failed.emit(self.error or "training ended without a result: " + self._reason(code))
        self.exited.emit(code)

    def _reason(self, code: int) -> str:
        lines = [line.strip() for line in self._stderr if line.strip()]
        for line in reversed(lines):  # the CLI's one-line error, else the traceback's last line
            if line.startswith("napari_unet: error:"):
                return line.removeprefix("napari_unet: error:").strip()
        last = lines[-1] if lines else "no error message"
        return f"training stopped with exit status {code}: {last}"

    def _remove_pid_file(self):
        if self.run_dir is not None:
            runs.remove_pid_file(self.run_dir)

    # -- stop ---------------------------------------------------------------------------------------
    def cancel(self, grace_s: float = GRACE_S) -> None:
        """Ask the child to stop (SIGINT: it saves a checkpoint, exits 130); kill it after
        `grace_s` seconds if it has not. Returns at once: ``cancelled`` follows."""
        if not self.is_running():
            return
        self.cancel_requested = True
        processes.interrupt(self._process)
        processes.kill_when_silent(self._process, grace_s)

    def stop(self, grace_s: float = GRACE_S) -> None:
        """Blocking stop for shutdown: SIGINT, wait up to `grace_s`, then kill the group."""
        if self._process is None:
            return
        if self.is_running():
            self.cancel_requested = True
        _stop_process(self._process, grace_s)
        self._remove_pid_file()

    def _emit(self, signal_, value) -> bool:
        try:
            signal_.emit(value)
            return True
        except RuntimeError:  # the runner's Qt object is gone (viewer closed)
            return False


# -- reader threads: they touch the runner only through its (queued) signals -------------------
def _pump_stdout(runner_ref, process, stderr_thread):
    for line in process.stdout:
        processes.heard(process)
        runner = runner_ref()
        if runner is None or not runner._emit(runner._line, line.rstrip("\n")):
            break
        del runner
    code = process.wait()
    stderr_thread.join(timeout=5)
    runner = runner_ref()
    if runner is not None:
        runner._emit(runner._ended, code)


def _pump_stderr(process, lines):
    for line in process.stderr:
        processes.heard(process)
        lines.append(line)


def _stop_process(process, grace_s: float) -> None:
    processes.stop(process, grace_s)
    _CHILDREN.discard(process)


def stop_all(grace_s: float = GRACE_S) -> None:
    """Stop every training child of this process (viewer closing, application quitting)."""
    runners = [runner for runner in list(_RUNNERS) if runner.is_running()]
    for runner in runners:  # interrupt all first, so that they save their checkpoints together
        runner.cancel_requested = True
        processes.interrupt(runner._process)
    deadline = time.monotonic() + grace_s
    for runner in runners:
        runner.stop(max(0.0, deadline - time.monotonic()))
    for process in list(_CHILDREN):
        _stop_process(process, 0.0)


@atexit.register
def _kill_children_at_exit():
    for process in list(_CHILDREN):
        _stop_process(process, 3.0)


_quit_guard_connected = False


def _connect_quit_guard():
    global _quit_guard_connected
    app = QApplication.instance()
    if app is not None and not _quit_guard_connected:
        app.aboutToQuit.connect(stop_all)
        _quit_guard_connected = True


# -- re-attaching ----------------------------------------------------------------------------------
class RunWatcher(QObject):
    """Follows a run started elsewhere by polling its metrics.jsonl (no stdout to read).

    ``points(list, list)`` brings new loss and Dice points; ``ended(str)`` fires once the child
    is gone, with the checkpoint found (or "").
    """

    points = Signal(object, object)
    ended = Signal(str)

    def __init__(self, run_dir, pid, offset: int = 0, parent=None, interval_ms: int = 1000):
        super().__init__(parent)
        self.run_dir = Path(run_dir)
        self.pid = pid
        self._offset = offset  # metrics.jsonl bytes already shown
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.poll)
        self._timer.start()

    def poll(self):
        loss, dice, self._offset = runs.read_metrics(self.run_dir / runs.METRICS, self._offset)
        if loss or dice:
            self.points.emit(loss, dice)
        if not runs.alive(self.pid):
            self._timer.stop()
            checkpoint = runs.find_checkpoint(self.run_dir, required=False)
            self.ended.emit(str(checkpoint or ""))

    def cancel(self):
        """SIGINT to the run's child: it saves its checkpoint and stops."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGINT)

    def stop(self):
        self._timer.stop()


# -- runs this session knows about (the Predict and Correct widgets offer them) ----------------
class _RunRegistry(QObject):
    changed = Signal()

    def __init__(self):
        super().__init__()
        self.runs: list[str] = []

    def add(self, run_dir) -> None:
        run_dir = str(run_dir)
        if run_dir in self.runs:
            self.runs.remove(run_dir)
        self.runs.insert(0, run_dir)
        self.changed.emit()


_registry = None


def run_registry() -> _RunRegistry:
    global _registry
    if _registry is None:
        _registry = _RunRegistry()
    return _registry


def known_runs() -> list[str]:
    """This session's runs first, then the newest folders under ~/napari_unet_runs."""
    known = list(run_registry().runs)
    return known + [str(p) for p in runs.recent_runs() if str(p) not in known]


class RunCombo(QComboBox):
    """An editable list of the known runs (newest first) that follows the registry.

    With `builtins`, the built-in models come before them, by name (their one-line
    description as their tooltip). `firsts` ({text: tooltip}): items above them all, the
    first of which is the default (else the newest run is). A line parts each group."""

    def __init__(self, placeholder: str, parent=None, builtins: bool = False,
                 firsts: dict[str, str] | None = None):
        super().__init__(parent)
        self.builtins, self.firsts = builtins, dict(firsts or {})
        self.setEditable(True)
        self.lineEdit().setPlaceholderText(placeholder)
        self.refresh()
        run_registry().changed.connect(self.refresh)

    def _groups(self) -> list[dict[str, str]]:
        """The items, {text: tooltip} a group."""
        models = {name: builtin.describe(name) for name in builtin.names()} \
            if self.builtins else {}
        return [self.firsts, models, dict.fromkeys(known_runs(), "")]

    def refresh(self):
        try:
            current = self.currentText()
            groups = self._groups()
            default = next(iter(groups[0]), None) or next(iter(groups[-1]), "")
            self.blockSignals(True)
            self.clear()
            for group in filter(None, groups):
                if self.count():
                    self.insertSeparator(self.count())
                for text, tooltip in group.items():
                    self.addItem(text)
                    if tooltip:
                        self.setItemData(self.count() - 1, tooltip, Qt.ToolTipRole)
            self.setEditText(current or default)
            self.blockSignals(False)
        except RuntimeError:  # the Qt side is gone; the registry lives on
            pass
