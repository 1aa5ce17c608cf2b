"""A child process and everything it starts (torchrun and its workers): stop it gently, then
surely. No Qt, no torch: the runner uses these, and so can any face.

The child runs in a process group of its own (``start_new_session``); SIGINT asks it to save a
checkpoint and exit; killing its group (and the descendants noted while the tree was intact,
since torchrun starts workers in sessions of their own) is the fallback. The grace before that
fallback counts only the time the child stays silent: whoever reads its output calls
``heard(process)``, so a child that still reports (a step, a checkpoint) on a busy machine is
never killed for being slow, and a hung one is killed `grace_s` after its last word.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time

POSIX = os.name == "posix"


def popen_options() -> dict:
    """Popen keywords that give the child a process group of its own."""
    if POSIX:
        return {"start_new_session": True}
    return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}


def heard(process) -> None:
    """The child just wrote a line (called by the threads that read its output)."""
    process._napari_unet_heard = time.monotonic()


def silent_for(process) -> float:
    """Seconds since the child last wrote, or since it was interrupted, whichever is later."""
    last = max(getattr(process, "_napari_unet_heard", 0.0),
               getattr(process, "_napari_unet_interrupted", 0.0))
    return time.monotonic() - last


def interrupt(process) -> None:
    """SIGINT (a terminate on Windows) to a running child; it saves and exits."""
    if process.poll() is not None:
        return
    process._napari_unet_interrupted = time.monotonic()
    _remember_descendants(process)
    with contextlib.suppress(ProcessLookupError):
        if POSIX:
            os.kill(process.pid, signal.SIGINT)  # the CLI forwards it to torchrun's workers
        else:
            process.terminate()


def _remember_descendants(process) -> None:
    """torchrun starts its workers in sessions of their own, out of reach of killpg: note
    them while the tree is intact, to kill them too if the graceful stop fails."""
    known = getattr(process, "_napari_unet_descendants", {})
    known.update(_descendants(process.pid))
    process._napari_unet_descendants = known


def _descendants(pid: int) -> dict:
    """{pid: handle} of every process below `pid` (psutil, which napari brings)."""
    try:
        import psutil
    except ImportError:
        return {}
    try:
        return {child.pid: child for child in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return {}


def kill_tree(process) -> None:
    """Kill the child and everything it started (torchrun and its workers)."""
    if process.poll() is None:
        _remember_descendants(process)
    if POSIX:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # the group id is the child's pid
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    for handle in getattr(process, "_napari_unet_descendants", {}).values():
        # psutil checks that the pid still names the same process; gone already is fine
        with contextlib.suppress(Exception):
            handle.kill()


def stop(process, grace_s: float) -> None:
    """Blocking: SIGINT, then wait for the exit until the child is silent `grace_s` seconds;
    then kill the tree."""
    if process.poll() is None:
        interrupt(process)
        while process.poll() is None and silent_for(process) < grace_s:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.01, min(0.5, grace_s - silent_for(process))))
    kill_tree(process)  # also the group's stragglers after a clean exit of the leader
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def stop_soon(process, grace_s: float) -> None:
    """Non-blocking (for finalizers): SIGINT now, kill the tree once the child has been
    silent `grace_s` seconds."""
    if process.poll() is None:
        interrupt(process)
        kill_when_silent(process, grace_s)


def kill_when_silent(process, grace_s: float) -> None:
    """Non-blocking: kill the tree of an interrupted child that stays silent `grace_s` s."""
    if process.poll() is not None:
        return
    left = grace_s - silent_for(process)
    if left <= 0:
        kill_tree(process)
        return
    timer = threading.Timer(left + 0.05, kill_when_silent, args=(process, grace_s))
    timer.daemon = True
    timer.start()
