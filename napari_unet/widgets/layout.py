"""Layout pieces the three widgets share: a fixed head over a scrolling body, boxes of rows,
a status line, a field with a Browse button. Qt through qtpy only."""
from __future__ import annotations

import contextlib

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)


def with_browse_button(field, on_browse) -> QHBoxLayout:
    """A row of a path field and a small "…" button that opens a file dialog."""
    browse = QPushButton("…")
    browse.setMaximumWidth(30)
    browse.clicked.connect(on_browse)
    row = QHBoxLayout()
    row.addWidget(field, 1)
    row.addWidget(browse)
    return row


def scrolling_layout(widget: QWidget, fixed: QWidget | None = None) -> QVBoxLayout:
    """The layout to fill `widget` with, inside a scroll area: a tall widget in a short dock
    scrolls instead of squeezing its rows (napari's docks do not scroll).

    `fixed`, when given, stays above the scroll area and never scrolls away: the rows a
    newcomer must see (the Train widget's data, preset, time and Start). The widget's minimum
    height is then that part's, so a dock beside others is never squeezed below it (napari
    docks a new widget by shrinking those above it to their minimum)."""
    content = QWidget()
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    scroll.setWidget(content)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.setSpacing(0)
    if fixed is not None:
        outer.addWidget(fixed)
    outer.addWidget(scroll, 1)
    widget.scroll_area = scroll

    def keep_width():  # the dock stays as wide as the rows need, with room for the bar
        with contextlib.suppress(RuntimeError):  # the widget was closed meanwhile
            scroll.setMinimumWidth(content.minimumSizeHint().width()
                                   + scroll.verticalScrollBar().sizeHint().width())

    QTimer.singleShot(0, keep_width)
    layout = QVBoxLayout(content)
    if fixed is not None:  # one gap between the fixed rows and the scrolled ones, not two
        margins = layout.contentsMargins()
        layout.setContentsMargins(margins.left(), 0, margins.right(), margins.bottom())
    return layout


def fixed_column(*items) -> QWidget:
    """A widget of widgets and layouts one above the other (the part of a widget kept above
    its scroll area, see :func:`scrolling_layout`)."""
    column = QWidget()
    layout = QVBoxLayout(column)
    for item in items:
        if isinstance(item, QWidget):
            layout.addWidget(item)
        else:
            layout.addLayout(item)
    return column


class StatusLabel(QLabel):
    """A word-wrapped line of rare messages, hidden while it has none (an empty label would
    keep a blank row among the rows that must fit the first screen)."""

    def __init__(self, text: str = "", parent=None):
        super().__init__(text, parent)
        self.setWordWrap(True)
        self.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.setVisible(bool(text))

    def setText(self, text: str) -> None:  # noqa: N802 - Qt's name
        super().setText(text)
        self.setVisible(bool(text))


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
