"""Re-attaching to a run started elsewhere: the watcher follows it to its own end, and a stale
pid (a child long gone) ends the watch at once instead of following nothing forever."""
import sys

import pytest
from gui_support import gui
from process_support import deadline_ms, read_events_until, running, start_cli, wait_for_exit

pytest.importorskip("qtpy")

from napari_unet import runs  # noqa: E402
from napari_unet.widgets.runner import RunWatcher  # noqa: E402

QUICK = ["--steps", "20", "--batch-size", "1", "--patch-size", "32", "--base-channels", "4",
         "--amp", "off", "--device", "cpu", "--checkpoint-every", "1000"]


@gui
def test_a_followed_run_that_finishes_on_its_own(qtbot, tmp_path):
    run = tmp_path / "run"
    with start_cli("train", "--preset", "industrial", "--sample", "dagm", "--out", run,
                   "--events", "jsonl", *QUICK) as child:
        read_events_until(child, lambda event: event["event"] == "Progress")
        runs.write_pid_file(run, child.pid, child.args)
        assert runs.live_pid(run) == child.pid
        watcher = RunWatcher(run, child.pid, interval_ms=100)
        loss, ended = [], []
        watcher.points.connect(lambda new_loss, new_dice: loss.extend(new_loss))
        watcher.ended.connect(ended.append)
        read_events_until(child, None)  # the child runs to its end; the watcher sees it go
        assert wait_for_exit(child) == 0
        qtbot.waitUntil(lambda: bool(ended), timeout=deadline_ms(30))
    assert ended == [str(run / "checkpoints" / "last.pt")]
    assert [step for step, _ in loss] == [10, 20]  # every logged point, the last included


@gui
def test_a_stale_pid_ends_the_watch_at_the_first_poll(qtbot, tmp_path):
    with running([sys.executable, "-c", "pass"]) as gone:
        wait_for_exit(gone)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    watcher = RunWatcher(tmp_path, gone.pid, interval_ms=50)
    with qtbot.waitSignal(watcher.ended, timeout=deadline_ms(10)) as blocker:
        pass
    assert blocker.args == [str(tmp_path / "checkpoints" / "last.pt")]
