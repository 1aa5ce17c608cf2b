"""The Train widget's live curve: training loss and validation Dice against the step.

Hand-drawn with QPainter rather than a plotting library: two series on two scales is all it
shows, it repaints in well under a millisecond on every event, and it needs no dependency
beyond Qt (pyqtgraph or matplotlib would add one, and their own Qt5/Qt6 differences).
"""
from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget


class CurveWidget(QWidget):
    """Training loss (orange, own scale) and validation Dice (cyan, 0..1) against the step,
    drawn with QPainter: cheap enough to repaint on every event."""

    LOSS = QColor(255, 165, 60)
    DICE = QColor(80, 200, 255)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.loss: list[tuple[int, float]] = []
        self.dice: list[tuple[int, float]] = []
        self.total = 0
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)

    def sizeHint(self):
        return QSize(300, 150)

    def clear(self, total: int = 0):
        self.loss, self.dice, self.total = [], [], total
        self.update()

    def add_loss(self, step: int, loss: float, repaint: bool = True):
        if math.isfinite(loss):
            self.loss.append((step, loss))
            if repaint:
                self.update()

    def add_dice(self, step: int, dice: float):
        if math.isfinite(dice):
            self.dice.append((step, dice))
            self.update()

    def paintEvent(self, event):
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        text = self.palette().color(self.foregroundRole())
        area = QRectF(self.rect()).adjusted(34, 8, -34, -20)
        painter.setPen(QPen(QColor(text.red(), text.green(), text.blue(), 90), 1))
        painter.drawRect(area)
        last_step = max([s for s, _ in self.loss] + [s for s, _ in self.dice] + [self.total, 1])
        # before the first loss the axis reads 0..1, not 0..1e-06
        loss_max = max([v for _, v in self.loss] + [1e-6]) if self.loss else 1.0
        self._polyline(painter, area, self.loss, last_step, loss_max, self.LOSS, dots=False)
        self._polyline(painter, area, self.dice, last_step, 1.0, self.DICE, dots=True)
        painter.setPen(text)
        font = painter.font()
        font.setPointSizeF(max(7.0, font.pointSizeF() - 1))
        painter.setFont(font)
        painter.drawText(QPointF(area.left(), self.height() - 5), "0")
        painter.drawText(QRectF(area.right() - 80, area.bottom() + 2, 80, 16),
                         Qt.AlignRight, f"step {last_step}")
        painter.setPen(self.LOSS)
        painter.drawText(QRectF(0, area.top() - 4, 32, 16), Qt.AlignRight, f"{loss_max:.2g}")
        painter.drawText(QRectF(0, area.bottom() - 12, 32, 16), Qt.AlignRight, "0")
        legend = f"loss {self.loss[-1][1]:.3f}" if self.loss else "loss"
        painter.drawText(QPointF(area.left() + 6, area.top() + 14), legend)
        painter.setPen(self.DICE)
        painter.drawText(QRectF(area.right() + 2, area.top() - 4, 32, 16), Qt.AlignLeft, "1")
        painter.drawText(QRectF(area.right() + 2, area.bottom() - 12, 32, 16), Qt.AlignLeft, "0")
        legend = f"Dice {self.dice[-1][1]:.3f}" if self.dice else "Dice (validation)"
        painter.drawText(QPointF(area.left() + 6, area.top() + 30), legend)
        painter.end()

    @staticmethod
    def _polyline(painter, area, points, last_step, top, color, dots):
        if not points:
            return
        def to_xy(step, value):
            x = area.left() + area.width() * step / last_step
            y = area.bottom() - area.height() * min(max(value / top, 0.0), 1.0)
            return QPointF(x, y)
        stride = max(1, len(points) // int(max(area.width(), 1)))  # about one point per pixel
        shown = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
        path = QPainterPath(to_xy(*shown[0]))
        for step, value in shown[1:]:
            path.lineTo(to_xy(step, value))
        painter.setPen(QPen(color, 1.6))
        painter.drawPath(path)
        if dots:
            painter.setBrush(color)
            for step, value in shown:
                painter.drawEllipse(to_xy(step, value), 2.5, 2.5)
            painter.setBrush(Qt.NoBrush)
