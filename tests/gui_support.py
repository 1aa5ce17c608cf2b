"""Shared by the GUI test modules: the `gui` marker and the plugin's name."""
import os
import sys
from pathlib import Path

import pytest

PLUGIN = "napari-unet-torch"

# Qt aborts the whole test run when it cannot reach a display: say so instead
NO_DISPLAY = sys.platform.startswith("linux") and not any(
    os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY")) \
    and os.environ.get("QT_QPA_PLATFORM") != "offscreen"
needs_display = pytest.mark.skipif(NO_DISPLAY, reason="needs a display: run under xvfb-run "
                                                      "(`make test` does)")


def gui(test):
    return pytest.mark.gui(needs_display(test))


def small_cpu_options(widget, run_dir, steps, patch_size=64):
    """A Train widget set for a quick CPU run: base 8, batch 2, no AMP, `steps` steps."""
    widget.steps.setValue(steps)
    widget.train_for.by_steps.setChecked(True)  # (editing the steps chooses them too)
    widget.batch_size.setValue(2)
    widget.base_channels.setCurrentIndex(widget.base_channels.findData(8))
    widget.patch_size.setValue(patch_size)
    widget.amp.setCurrentText("off")
    widget.device.setCurrentText("cpu")
    widget.run_folder.setText(str(run_dir))


def folder_state(folder) -> dict:
    """{relative path: (size, mtime)} of every file under `folder`: equal before and after
    when nothing was written there."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}
