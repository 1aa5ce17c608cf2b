"""Child processes in tests: each one ends with its test, and every wait has a deadline.

- ``running(command)`` / ``start_cli(...)`` are context managers: the child runs in a process
  group of its own and, on leaving the block (the test passed, failed or timed out), its
  whole tree is killed (torchrun and its workers included). No child trains on after its
  test, loading the machine for every test after it.
- ``cli(...)`` runs the CLI to its end the same way.
- Deadlines are ceilings on waits for an event, never a guess of speed: ``deadline(s)`` is
  `s` seconds times NAPARI_UNET_TEST_TIME_FACTOR (default 1; the defaults are already
  generous for a loaded 2-core machine), and a wait ends as soon as its event comes.
- tests/conftest.py fails any test that leaves a process of its own alive.
"""
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading

import psutil

from napari_unet import processes

TIME_FACTOR_VARIABLE = "NAPARI_UNET_TEST_TIME_FACTOR"


def time_factor() -> float:
    text = os.environ.get(TIME_FACTOR_VARIABLE, "").strip()
    return float(text) if text else 1.0


def deadline(seconds: float) -> float:
    """A ceiling on a wait for an event, scaled for slow machines (NAPARI_UNET_TEST_TIME_FACTOR)."""
    return seconds * time_factor()


def deadline_ms(seconds: float) -> int:
    """``deadline`` in milliseconds, for qtbot.waitUntil and waitSignal."""
    return int(deadline(seconds) * 1000)


# one CLI run on tiny data takes seconds; a loaded 2-core machine, a minute: a hung child fails
CHILD_TIMEOUT_S = deadline(300)
CLI = [sys.executable, "-m", "napari_unet.cli"]


@contextlib.contextmanager
def running(command, **kw):
    """``Popen(command)`` in a process group of its own; on exit, its whole tree is killed and
    reaped, whatever the test did (a child that already ended is simply reaped)."""
    process = subprocess.Popen([str(part) for part in command], **processes.popen_options(),
                               **kw)
    try:
        yield process
    finally:
        end_tree(process)


def end_tree(process) -> None:
    """Kill `process` and every process below it, wait for them, close its pipes."""
    processes.kill_tree(process)  # notes the descendants first while the tree is intact
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=deadline(30))
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def start_cli(*args, **kw):
    """A context manager: `python -m napari_unet.cli ARGS` with its stdout as a text pipe."""
    kw.setdefault("stdout", subprocess.PIPE)
    return running([*CLI, *args], text=True, **kw)


def cli(*args, timeout=CHILD_TIMEOUT_S, **kw):
    """`python -m napari_unet.cli ARGS` to its end (its tree killed after `timeout` s)."""
    return run([*CLI, *args], timeout=timeout, **kw)


def run(command, timeout=CHILD_TIMEOUT_S, **kw):
    """``subprocess.run(command, capture_output=True, text=True)``, but a timeout (or any
    failure) kills the whole tree, not only the direct child."""
    with running(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                 **kw) as process:
        stdout, stderr = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def failure_text(completed, tail: int = 2000) -> str:
    """What a failed child said: every line that names an error, an abort or a fatal signal
    (a torchrun worker's own words come long before the launcher's summary), then the tail."""
    marks = ("error", "terminate", "what()", "fatal", "abort", "exception", "nan")
    lines = [line for line in completed.stderr.splitlines()
             if any(mark in line.lower() for mark in marks)]
    return "\n".join(lines[:40]) + "\n...\n" + completed.stderr[-tail:]


def ignoring_sigint():
    """A preexec_fn: the child starts with SIGINT ignored, as every child of a background job
    of a non-interactive shell does (`make test &`, nohup, some CI runners)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def read_events_until(process, done, timeout=CHILD_TIMEOUT_S):
    """Read a child's JSON events until `done(event)` is true (`done=None`: until the child
    closes its output); return the events read.

    A watchdog kills the child's tree after `timeout` seconds, which ends the read with a
    failure instead of a hang.
    """
    watchdog = threading.Timer(timeout, processes.kill_tree, args=(process,))
    watchdog.start()
    events = []
    try:
        for line in process.stdout:
            events.append(json.loads(line))
            if done is not None and done(events[-1]):
                return events
    finally:
        watchdog.cancel()
    if done is None and process.poll() != -9:
        return events
    raise AssertionError(f"the child ended (code {process.poll()}) or ran past {timeout} s "
                         f"before the awaited event; events: {[e['event'] for e in events]}")


def wait_for_exit(process, timeout=CHILD_TIMEOUT_S) -> int:
    """The child's exit status, waiting at most `timeout` seconds (a ceiling, not a guess)."""
    return process.wait(timeout=timeout)


# -- the suite's guard -----------------------------------------------------------------------
def adopt_orphans() -> None:
    """Make this process the reaper of its orphaned descendants (Linux): a grandchild whose
    parent died (a torchrun worker after a killed launcher) stays visible to the guard."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def living_descendants() -> list:
    """This process's descendants that still run (zombies, already dead, are left out)."""
    alive = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
    return alive


def reap_orphans() -> None:
    """Reap the dead children nobody waits for (adopted orphans), so that none lingers as a
    zombie in a later test's count of this process's children."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error, ChildProcessError, OSError):
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)


def resource_tracker(process) -> bool:
    """Python's own helper that multiprocessing starts once for the test process (a Dask
    LocalCluster's spawned workers need it): it ends with the test process, no test's work."""
    with contextlib.suppress(psutil.Error):
        return "multiprocessing.resource_tracker" in " ".join(process.cmdline())
    return False


def kill_left_behind(grace_s: float = 1.0) -> list[str]:
    """Kill every living descendant after `grace_s` (time to finish an exit already under
    way); return their command lines, for the report."""
    reap_orphans()
    left = [child for child in living_descendants() if not resource_tracker(child)]
    _, left = psutil.wait_procs(left, timeout=grace_s)
    names = []
    for child in left:
        with contextlib.suppress(psutil.Error):
            names.append(f"{child.pid}: {' '.join(child.cmdline())[:200]}")
            child.kill()
    psutil.wait_procs(left, timeout=deadline(10))
    reap_orphans()
    return names
