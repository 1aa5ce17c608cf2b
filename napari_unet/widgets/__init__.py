"""The napari widgets: Train, Predict and Correct (docked through napari.yaml).

They are faces: they collect choices, write files, start the engine (training in a child
process through :mod:`.runner`, prediction in napari's ``thread_worker``) and show what comes
back as layers and notifications. No training logic lives here. Qt is used through qtpy only.

This module holds the small pieces the three widgets share.
"""
from __future__ import annotations

import contextlib
import weakref
from pathlib import Path

import numpy as np
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QMainWindow, QPushButton


def with_browse_button(field, on_browse) -> QHBoxLayout:
    """A row of a path field and a small "…" button that opens a file dialog."""
    browse = QPushButton("…")
    browse.setMaximumWidth(30)
    browse.clicked.connect(on_browse)
    row = QHBoxLayout()
    row.addWidget(field, 1)
    row.addWidget(browse)
    return row


def group_box(title: str, rows) -> QGroupBox:
    """A titled box of form rows: (label, widget or layout) pairs, or a widget or layout alone."""
    form = QFormLayout()
    for row in rows:
        if isinstance(row, tuple):
            form.addRow(*row)
        else:
            form.addRow(row)
    box = QGroupBox(title)
    box.setLayout(form)
    return box


class UserError(Exception):
    """A choice the user can fix; shown as a one-line napari notification."""


def existing_path(text: str, what: str) -> Path:
    """The path typed or picked in a field; a UserError says `what` to choose otherwise."""
    text = text.strip()
    if not text:
        raise UserError(f"choose {what} first")
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(f"{path} does not exist: choose {what}")
    return path


def add_labels_over(viewer, data, name: str, layer):
    """A new Labels layer placed exactly over `layer` (its scale and translation)."""
    return viewer.add_labels(data, name=name, scale=layer.scale, translate=layer.translate,
                             opacity=0.5)


def show_error(message: str) -> None:
    from napari.utils.notifications import show_error as napari_show_error
    napari_show_error(str(message).splitlines()[0] if str(message) else "error")


def show_warning(message: str) -> None:
    from napari.utils.notifications import show_warning as napari_show_warning
    napari_show_warning(str(message))


def show_info(message: str) -> None:
    from napari.utils.notifications import show_info as napari_show_info
    napari_show_info(str(message))


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- layers ----------------------------------------------------------------------------------------
def layer_data(layer):
    """The full-resolution array of a layer (the first level of a multiscale one)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def spatial_shape(layer) -> tuple:
    """The layer's pixel grid: its shape without an RGB(A) axis."""
    shape = tuple(layer_data(layer).shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def current_index(viewer, layer, axis: int = 0) -> int:
    """The data index of the slice the viewer shows along the layer's `axis`."""
    point = viewer.dims.point
    coords = layer.world_to_data(point[-layer.ndim:] if len(point) >= layer.ndim else point)
    size = spatial_shape(layer)[axis]
    return int(np.clip(np.round(coords[axis]), 0, size - 1))


def layer_picker(viewer, layer_type):
    """A magicgui combo box of the viewer's layers of one type (napari's own layer picker).

    It follows the layer list through its widget's ``reset_choices``, which napari calls on
    every insert, removal, move and rename once the widget is docked."""
    from magicgui.widgets import ComboBox

    picker = ComboBox(choices=lambda _: [layer for layer in viewer.layers
                                         if isinstance(layer, layer_type)])
    picker.native.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    picker.native.setMinimumContentsLength(12)
    return picker


def choose(picker, layer) -> None:
    """Select `layer` in a picker, even before napari has told it of the new layer."""
    picker.reset_choices()
    picker.value = layer


class LayerPickers:
    """A widget whose ``pickers`` napari keeps current (it calls ``reset_choices``)."""

    pickers: list = []

    def reset_choices(self, *_):
        for picker in self.pickers:
            try:
                picker.reset_choices()
            except RuntimeError:  # the Qt side is gone (viewer closed); napari's event is not
                return


# -- the viewer window closing -----------------------------------------------------------------
class _CloseFilter(QObject):
    """Calls back (weakly held methods) when the window it watches is about to close."""

    def __init__(self, window):
        super().__init__(window)
        self.callbacks: list = []

    def eventFilter(self, watched, event):
        if event.type() == QEvent.Close:
            for ref in list(self.callbacks):
                callback = ref()
                if callback is not None:
                    with contextlib.suppress(RuntimeError):  # a widget already deleted
                        callback()
        return False


def _main_window(widget):
    window = widget.window()
    return window if isinstance(window, QMainWindow) else None


def stop_on_window_close(widget, callback) -> None:
    """Call `callback` (a bound method, held weakly) when the napari window holding `widget`
    closes. The widget is docked only after it is built, so this retries until it is."""
    ref = weakref.WeakMethod(callback)
    widget_ref = weakref.ref(widget)  # a pending timer must not keep the viewer alive

    def attach(attempt=0):
        widget_now = widget_ref()
        if widget_now is None:
            return
        try:
            window = _main_window(widget_now)
        except RuntimeError:
            return
        del widget_now
        if window is None:
            if attempt < 50:
                QTimer.singleShot(100, lambda: attach(attempt + 1))
            return
        guard = window.findChild(_CloseFilter, "napari_unet_close_filter")
        if guard is None:
            guard = _CloseFilter(window)
            guard.setObjectName("napari_unet_close_filter")
            window.installEventFilter(guard)
        guard.callbacks.append(ref)

    QTimer.singleShot(0, attach)
