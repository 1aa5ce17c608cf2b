"""Child processes in tests: every wait has a deadline, so a hung child fails its test."""
import json
import subprocess
import sys
import threading

CHILD_TIMEOUT_S = 300  # one CLI run on tiny data takes seconds; a loaded 2-core CI, a minute


def cli(*args, timeout=CHILD_TIMEOUT_S, **kw):
    """`python -m napari_unet.cli ARGS` to its end (killed after `timeout` seconds)."""
    return subprocess.run([sys.executable, "-m", "napari_unet.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, **kw)


def start_cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "napari_unet.cli", *map(str, args)],
                            stdout=subprocess.PIPE, text=True, **kw)


def read_events_until(process, done, timeout=CHILD_TIMEOUT_S):
    """Read a child's JSON events until `done(event)` is true (`done=None`: until the child
    closes its output); return the events read.

    A watchdog kills the child after `timeout` seconds, which ends the read with a failure
    instead of a hang.
    """
    watchdog = threading.Timer(timeout, process.kill)
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
