"""Re-attaching to a run started elsewhere: the watcher follows it to its own end, and a stale
pid (a child long gone) ends the watch at once instead of following nothing forever."""
import subprocess
import sys

import pytest
from gui_support import gui
from process_support import read_events_until, start_cli

pytest.importorskip("qtpy")

from napari_unet import runs  # noqa: E402
from napari_unet.widgets.runner import RunWatcher  # noqa: E402

QUICK = ["--steps", "20", "--batch-size", "1", "--patch-size", "32", "--base-channels", "4",
         "--amp", "off", "--device", "cpu", "--checkpoint-every", "1000"]


@gui
def test_a_followed_run_that_finishes_on_its_own(qtbot, tmp_path):
    run = tmp_path / "run"
    child = start_cli("train", "--preset", "industrial", "--sample", "dagm", "--out", run,
                      "--events", "jsonl", *QUICK)
    try:
        read_events_until(child, lambda event: event["event"] == "Progress")
        runs.write_pid_file(run, child.pid, child.args)
        assert runs.live_pid(run) == child.pid
        watcher = RunWatcher(run, child.pid, interval_ms=100)
        loss, ended = [], []
        watcher.points.connect(lambda new_loss, new_dice: loss.extend(new_loss))
        watcher.ended.connect(ended.append)
        read_events_until(child, None)  # the child runs to its end; the watcher sees it go
        assert child.wait(timeout=60) == 0
        qtbot.waitUntil(lambda: bool(ended), timeout=30_000)
    finally:
        child.kill()
        child.wait()
    assert ended == [str(run / "checkpoints" / "last.pt")]
    assert [step for step, _ in loss] == [10, 20]  # every logged point, the last included


@gui
def test_a_stale_pid_ends_the_watch_at_the_first_poll(qtbot, tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=60)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    watcher = RunWatcher(tmp_path, gone.pid, interval_ms=50)
    with qtbot.waitSignal(watcher.ended, timeout=10_000) as blocker:
        pass
    assert blocker.args == [str(tmp_path / "checkpoints" / "last.pt")]
