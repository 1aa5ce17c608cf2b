"""The Train widget's option fields, what ``--preset auto`` decides and for how long it trains.

- A field per option row with a ``form`` (napari_unet.options): a combo box of its choices,
  a check box, or a spin box.
- A number field the plan (or a named preset) fills reads "planned" ("preset default" under a
  named preset) at its lowest value: the widget passes only the fields the user set, so the
  plan decides the patch, the batch and the learning rate unless the user gave them.
- "Train for": (•) about N minutes or ( ) exactly N steps. The chosen one counts; editing
  a number chooses it (as on the command line, where ``--steps`` wins over ``--minutes``).
  Below it, what Start will cost, in words.
- The plan the child sends (the ``Planned`` event) in a read-only, collapsible text area.

Imports no torch: the events are read with the engine's JSON reader in the runner.
"""
from __future__ import annotations

from qtpy.QtCore import QObject, Qt
from qtpy.QtGui import QFontDatabase
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QRadioButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_unet.choices import AUTO_PRESET
from napari_unet.cli_progress import planned_text
from napari_unet.options import OPTIONS

PLANNED = "planned"  # a number field left to the plan
PRESET_DEFAULT = "preset default"  # ... or to a named preset
LENGTH_OPTIONS = ("minutes", "steps")  # the run's length: the "Train for" row, never planned
# switches the plan (or preset) decides unless the user does: a three-state check box whose
# partly checked state is "planned" (the plan compiles on a GPU where the budget repays it)
PLANNED_SWITCHES = ("compile",)
FIRST_MODEL_MINUTES = 1  # from strokes to a first whole-image prediction


def left_text(preset: str) -> str:
    """What a field left to the recipe says under `preset`."""
    return PLANNED if preset == AUTO_PRESET else PRESET_DEFAULT


def plannable(option) -> bool:
    """A number field a recipe fills when the user leaves it (not the run's length)."""
    return (option.choices is None and option.value_type is not bool
            and option.name not in LENGTH_OPTIONS)


def allow_planned(field) -> None:
    """Give a spin box a "planned" value, below its lowest real one."""
    field.setMinimum(0)
    field.setSpecialValueText(PLANNED)


def leave_to_plan(field) -> None:
    field.setValue(field.minimum())


def is_planned(field) -> bool:
    """Whether a field is left to the plan (or the preset): the widget does not pass it."""
    if isinstance(field, QCheckBox):
        return field.isTristate() and field.checkState() == Qt.CheckState.PartiallyChecked
    return isinstance(field, QAbstractSpinBox) and bool(field.specialValueText()) \
        and field.value() == field.minimum()


def minutes_text(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def remaining_seconds(event, start_step: int, elapsed_s: float):
    """Seconds left of a run from a Progress event and the time since its first step, or
    None before a step was timed."""
    done = event.step - start_step
    if done <= 0 or elapsed_s <= 0:
        return None
    return (event.total - event.step) * elapsed_s / done


def spin_box(low, high, value=None, step=1, double=False):
    box = QDoubleSpinBox() if double else QSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    if value is not None:
        box.setValue(value)
    return box


def combo_box(items):
    box = QComboBox()
    box.addItems(list(items))
    return box


def option_field(option) -> QWidget:
    """The widget of an option row: a combo box of its choices, a check box for True/False,
    else a spin box (a list option, such as the patch size: one value for every axis)."""
    form = option.form
    if option.choices is not None:
        return combo_box(option.choices)
    if option.value_type is bool:
        box = QCheckBox(form.label)
        if option.name in PLANNED_SWITCHES:
            box.setTristate(True)
            words = {Qt.CheckState.PartiallyChecked: PLANNED, Qt.CheckState.Checked: "on",
                     Qt.CheckState.Unchecked: "off"}

            def say(*_):
                box.setText(f"{form.label}: {words[box.checkState()]}")

            box.stateChanged.connect(say)
            box.setCheckState(Qt.CheckState.PartiallyChecked)
            say()
            box.setToolTip("planned (partly checked): the plan decides and says why (on a GPU "
                           "it compiles where the time budget repays the compile time); a "
                           "named preset keeps its own; on: always; off: never")
        else:
            box.setChecked(bool(option.default))
        return box
    box = spin_box(form.low, form.high, form.value, form.step, double=option.value_type is float)
    if form.decimals is not None:
        box.setDecimals(form.decimals)
    return box


def field_value(option, field):
    """What the field holds, as the option's value (bool, text of a choice, or number)."""
    if option.choices is not None:
        return field.currentText()
    if option.value_type is bool:
        return field.isChecked()
    return field.value()


class TrainFor(QObject):
    """Train for (•) about N minutes or ( ) exactly N steps (``rows``, two form rows);
    ``estimate`` (a label for a row of its own) says what Start will cost."""

    def __init__(self, minutes_field, steps_field, parent=None):
        super().__init__(parent)
        self.minutes, self.steps = minutes_field, steps_field
        self.seconds_per_step = None  # the last run's speed, for an estimate in steps
        self.estimate = QLabel("")
        self.by_minutes, self.by_steps = QRadioButton("about"), QRadioButton("exactly")
        self.by_minutes.setToolTip("train for about this long: the steps come from a timing "
                                   "of the first ones (--minutes)")
        self.by_steps.setToolTip("train exactly this many steps (--steps; wins over minutes)")
        self.group = QButtonGroup(self)
        self.rows = []  # (label, row) for a form: the minutes, the steps
        for radio, field, unit in ((self.by_minutes, minutes_field, " min"),
                                   (self.by_steps, steps_field, " steps")):
            self.group.addButton(radio)
            field.setSuffix(unit)
            field.valueChanged.connect(lambda _, radio=radio: radio.setChecked(True))
            field.valueChanged.connect(self.describe)
            radio.toggled.connect(self.describe)
            row = QHBoxLayout()
            row.addWidget(radio)
            row.addWidget(field, 1)
            self.rows.append(("Train for" if not self.rows else "", row))
        width = max(radio.sizeHint().width() for radio in self.group.buttons())
        for radio in self.group.buttons():  # the two numbers one above the other
            radio.setMinimumWidth(width)
        self.by_minutes.setChecked(True)
        self.describe()

    def counts(self, name: str) -> bool:
        """Whether option `name` is passed: the length not chosen is not."""
        return name not in LENGTH_OPTIONS or (name == "steps") == self.by_steps.isChecked()

    def describe(self, *_):
        """Say before Start how long the run will take."""
        if self.by_minutes.isChecked():
            minutes = self.minutes.value()
            text = (f"about {minutes:g} minute{'' if minutes == 1 else 's'} "
                    "(the steps timed at the start)")
        elif self.seconds_per_step:
            seconds = self.steps.value() * self.seconds_per_step
            text = f"about {minutes_text(seconds)} at the last run's speed"
        else:
            text = "time left: shown once the first steps ran"
        self.estimate.setText(text)


class PlanView(QWidget):
    """The plan the run was made from, one choice and its reason a line; collapsible."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.toggle = QToolButton()
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.toggle.setAutoRaise(True)
        self.toggle.toggled.connect(self._toggled)
        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        self.text.setLineWrapMode(QPlainTextEdit.WidgetWidth)
        self.text.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        self.text.setMinimumHeight(90)
        self.text.setMaximumHeight(170)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.toggle)
        layout.addWidget(self.text)
        self.clear()

    def clear(self, preset: str = AUTO_PRESET) -> None:
        self.event = None
        self.text.setPlainText("")
        self.toggle.setText("Plan: made from your data when training starts"
                            if preset == AUTO_PRESET else "Plan: the preset's recipe")
        self.toggle.setChecked(False)
        self._toggled(False)

    def show_plan(self, event) -> None:
        """Show a ``Planned`` event: each planned value and why, and the timed steps."""
        self.event = event
        self.text.setPlainText(planned_text(event))
        self.toggle.setText(f"Plan ({len(event.lines)} choices"
                            + (f", {event.steps} steps" if event.steps else "") + ")")
        self.toggle.setChecked(True)
        self._toggled(True)

    def _toggled(self, shown: bool) -> None:
        self.toggle.setArrowType(Qt.DownArrow if shown else Qt.RightArrow)
        self.text.setVisible(shown and self.event is not None)


class Unpainted(QObject):
    """What the pixels left at 0 mean (the CLI's ``--unlabeled``): background (the painted
    layer is the whole truth) or unknown (strokes, some painted slices: training and scores
    leave them out, and the background is painted with its own value)."""

    BACKGROUND, UNKNOWN = "are background", "are unknown (paint a little)"

    def __init__(self, parent=None):
        super().__init__(parent)
        self.meaning = combo_box([self.BACKGROUND, self.UNKNOWN])
        self.meaning.setToolTip("unknown: train on the painted pixels only; paint the "
                                "background with the value below and the objects with others")
        self.background = spin_box(1, 65535, 1)
        self.background.setToolTip("the label value painted on the background "
                                   "(--background-value)")
        self.meaning.currentTextChanged.connect(self._sync)
        self._sync()
        self.rows = [("Unpainted pixels", self.meaning), ("Background value", self.background)]

    def _sync(self, *_):
        self.background.setEnabled(self.sparse())

    def sparse(self) -> bool:
        return self.meaning.currentText() == self.UNKNOWN

    def rule(self) -> dict:
        """The mask rule's settings (napari_unet.masks.mask_classes) for this choice."""
        if not self.sparse():
            return {}
        return {"unlabeled": "ignore", "background_value": self.background.value()}

    def connect(self, slot) -> None:
        self.meaning.currentTextChanged.connect(slot)
        self.background.valueChanged.connect(slot)

    def offer_a_first_model(self, train_for) -> None:
        """Choosing unknown with the minutes untouched shortens them to FIRST_MODEL_MINUTES:
        a few strokes, a whole-image prediction a minute later, correct, train again."""
        def shorten(*_):
            minutes = train_for.minutes
            if self.sparse() and train_for.by_minutes.isChecked() \
                    and minutes.value() == OPTIONS["minutes"].form.value:
                minutes.setValue(FIRST_MODEL_MINUTES)
        self.meaning.currentTextChanged.connect(shorten)


class ObjectsChoice(QObject):
    """What touching objects of an instance layer (one value per object) become: one merged
    foreground, or objects kept apart by learning their outlines (the CLI's ``--instances
    boundary``: a seeded watershed then makes the objects of a prediction)."""

    MERGE, APART = "merge into one class", "keep apart (learn outlines)"

    def __init__(self, parent=None):
        super().__init__(parent)
        self.choice = combo_box([self.MERGE, self.APART])
        self.choice.setToolTip("keep apart: each value of the labels is one object; the model "
                               "learns background, interior and outline, and its prediction "
                               "comes back as objects (nuclei, cells), one colour each")
        self.rows = [("Objects", self.choice)]

    def apart(self) -> bool:
        return self.choice.currentText() == self.APART

    def rule(self) -> dict:
        return {"instances": "boundary"} if self.apart() else {}

    def connect(self, slot) -> None:
        self.choice.currentTextChanged.connect(slot)
