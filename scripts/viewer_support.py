"""What the demo and screenshot scripts share: waiting on the viewer without blocking its
event loop, and taking the screenshot once the viewer has settled."""
from __future__ import annotations

import time
from pathlib import Path


def wait(app, condition, timeout_s: float) -> bool:
    """Process Qt events until `condition()` holds (True) or `timeout_s` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        app.processEvents()
        time.sleep(0.02)
    return True


def settle(app, seconds: float) -> None:
    """Process Qt events for `seconds`: layers drawn, docks laid out."""
    wait(app, lambda: False, seconds)


def close_toasts(window) -> None:
    """Close napari's pop-up notifications (e.g. its own PyQt5 deprecation notice)."""
    from qtpy.QtWidgets import QWidget

    for widget in window.findChildren(QWidget):
        if type(widget).__name__ == "NapariQtNotification":
            widget.close()


def save_screenshot(viewer, out) -> Path:
    """The whole window (docks included) as a PNG at `out`; says where."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"wrote {out}")
    return out
