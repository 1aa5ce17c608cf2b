"""The napari widgets: Train, Predict and Correct (docked through napari.yaml).

They are faces: they collect choices, write files, start the engine (training in a child
process through :mod:`.runner`, prediction in napari's ``thread_worker``) and show what comes
back as layers and notifications. No training logic lives here. Qt is used through qtpy only.

This module holds the small pieces the three widgets share.
"""
from __future__ import annotations

import contextlib
import weakref
import zipfile
from pathlib import Path

import numpy as np
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QMainWindow,
)

from napari_unet import builtin, layouts, lazy
from napari_unet.errors import NapariUnetError
from napari_unet.masks import check_labels
from napari_unet.widgets.layout import (  # noqa: F401 - the widgets import them from here
    StatusLabel,
    fixed_column,
    group_box,
    scrolling_layout,
    with_browse_button,
)


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


def checkpoint_file(path: Path, use: str) -> Path:
    """The checkpoint of a run folder or the file itself (runs.find_checkpoint); a UserError
    when there is none, or when the file is no checkpoint: torch's checkpoints and bioimage.io
    packages are zip archives, a cheap check made before anything is written or started."""
    from napari_unet import runs

    checkpoint = runs.find_checkpoint(path, required=False)
    if checkpoint is None:
        raise UserError(f"no checkpoint in {path}: expected {runs.CHECKPOINTS}/{runs.BEST} or "
                        f"{runs.LAST} (has the run saved one yet?)")
    if not zipfile.is_zipfile(checkpoint):
        raise UserError(f"{checkpoint} is not a checkpoint: choose a run folder (or its "
                        f"{runs.CHECKPOINTS}/{runs.BEST}) to {use}")
    return checkpoint


# -- built-in models (napari_unet.builtin): chosen by name where a run folder is chosen --------
def model_choice(text: str, what: str, use: str):
    """A built-in model's name as it is (the engine resolves it), else the checkpoint of the
    run folder or file at `text` (:func:`checkpoint_file`)."""
    name = builtin.builtin_name(text.strip())
    if name is not None:
        return name
    return checkpoint_file(existing_path(text, what), use)


def builtin_dims(name: str) -> int | None:
    """2 or 3: the images a built-in model segments (its card's kind), None when unsaid."""
    kind = str(builtin.card(name).get("kind", "")).lower()
    return {"2d": 2, "3d": 3}.get(kind)


def builtin_text(name: str) -> str:
    """What a built-in model is, in a line under its field (the name is in the field): its
    card's summary, then its kind, channels and object size as the card gives them."""
    card = builtin.card(name)
    facts = [str(card["kind"]).upper()] if "kind" in card else []
    if "channels" in card:
        facts.append(f"{card['channels']} channel" + ("" if card["channels"] == 1 else "s"))
    if "diameter" in card:
        facts.append(f"objects ~{card['diameter']} px across")
    return f"built-in model: {card.get('summary', name)}" + (
        f" ({', '.join(facts)})" if facts else "")


def refuse_builtin_folder(path, what: str) -> None:
    """A UserError when `path` names a built-in model or lies in the built-in models' folder:
    that is part of the installed package, never written (`what`: where to write instead)."""
    text = str(path).strip()
    if builtin.builtin_name(text):
        raise UserError(f"{text} is a built-in model, part of the installed package: {what}")
    if builtin.is_inside(text):
        raise UserError(f"{text} is inside the built-in models (part of the installed "
                        f"package): {what}")


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


def check_painted(labels, rule: dict) -> None:
    """The mask rule (``rule``: the Train form's ``mask_rule``) against painted labels arrays,
    as the CLI checks mask files, before anything is written: a UserError says what is wrong
    (warnings come from the run)."""
    try:
        check_labels([lazy.painted_part(data) for data in labels], **rule)
    except NapariUnetError as exc:
        raise UserError(one_line(exc)) from None


# -- layers ----------------------------------------------------------------------------------------
def layer_data(layer):
    """The full-resolution array of a layer (the first level of a multiscale one); of a
    :class:`ChannelGroup`, its channels stacked first, (C, ...)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def layer_shape(layer) -> tuple:
    """The shape of a layer's data (of a group: its channels stacked first, without stacking)."""
    if isinstance(layer, ChannelGroup):
        return (len(layer.layers), *layer_shape(layer.layers[0]))
    return tuple(layer_data(layer).shape)


def axes_of(layer) -> str:
    """The axes letters of a layer's data for the input-layout rule (:mod:`napari_unet.layouts`):
    a last colour axis 'S' when RGB, a first channel axis 'C' for a channel group."""
    return layouts.layer_axes(len(layer_shape(layer)), rgb=bool(getattr(layer, "rgb", False)),
                              channels_first=isinstance(layer, ChannelGroup))


def spatial_shape(layer) -> tuple:
    """The layer's pixel grid: its shape without an RGB(A) axis (or a group's channel axis)."""
    return layouts.spatial_shape(layer_shape(layer), axes_of(layer))


def layer_layout(layer, spatial_dims: int, in_channels=None):
    """How a model of `spatial_dims` reads the layer (or group), by the input-layout rule: a
    2D model takes a (Z, Y, X) layer or a group of them as a stack of 2D images."""
    return layouts.interpret(layer_shape(layer), spatial_dims, in_channels, axes=axes_of(layer),
                             stack=True)


class ChannelGroup:
    """The channel layers of one image (a multi-channel file or sample opened as a layer per
    channel), taken as one (C, ...) input: the Train and Predict widgets' image pickers offer
    it beside the single layers. It answers what the widgets ask of an Image layer (name,
    data, scale, translate); its data is the channels stacked in channel order."""

    rgb = False
    multiscale = False

    def __init__(self, name: str, layers):
        self.name = name
        self.layers = tuple(layers)

    @property
    def label(self) -> str:
        """What the picker shows."""
        return f"{self.name} ({len(self.layers)} channels)"

    @property
    def data(self):
        return lazy.stack(layer_data(layer) for layer in self.layers)  # lazy ones stay so

    @property
    def ndim(self) -> int:
        return self.layers[0].ndim

    @property
    def scale(self):
        return self.layers[0].scale

    @property
    def translate(self):
        return self.layers[0].translate

    def world_to_data(self, position):
        return self.layers[0].world_to_data(position)

    def present_in(self, viewer) -> bool:
        return all(layer in viewer.layers for layer in self.layers)

    def __eq__(self, other):
        return isinstance(other, ChannelGroup) and self.name == other.name \
            and len(self.layers) == len(other.layers) \
            and all(a is b for a, b in zip(self.layers, other.layers))

    def __hash__(self):
        return hash((self.name, *map(id, self.layers)))

    def __repr__(self):
        return f"ChannelGroup({self.label!r})"


def training_array(image, spatial_dims: int):
    """The array written as the training image: a layer's data; a channel group's channels
    first, (C, ...), as the engine reads them; under a 2D preset a stack's pages first (a
    group of (Z, Y, X) channels: (Z, C, Y, X)), so that each painted slice is written as one
    2D image in its own layout."""
    return layer_layout(image, spatial_dims).stack_first(layer_data(image))


def _group_key(layer):
    """(key, group name, channel index) of an image layer that is one channel of several:
    marked by this plugin's reader or sample data, else opened from one file by another
    reader (same source path). None for a layer on its own."""
    from napari_unet._napari import CHANNEL_GROUP

    mark = layer.metadata.get(CHANNEL_GROUP) if isinstance(layer.metadata, dict) else None
    if isinstance(mark, dict) and {"id", "name", "index"} <= set(mark):
        return ("mark", mark["id"]), str(mark["name"]), int(mark["index"])
    path = getattr(getattr(layer, "source", None), "path", None)
    if path:
        return ("path", str(path)), Path(path).stem, None
    return None


def channel_groups(viewer) -> list[ChannelGroup]:
    """The viewer's groups of 2 to MAX_CHANNELS image layers that are channels of one image
    (same grid, not RGB), each in channel order; a channel layer duplicated in the layer list
    counts once."""
    from napari.layers import Image

    from napari_unet.choices import MAX_CHANNELS

    found: dict = {}
    for position, layer in enumerate(viewer.layers):
        if not isinstance(layer, Image) or layer.rgb:
            continue
        key = _group_key(layer)
        if key is None:
            continue
        (kind, ident), name, index = key
        members = found.setdefault((kind, ident), (name, {}))[1]
        members.setdefault(position if index is None else index, layer)
    groups = []
    for name, members in found.values():
        layers = [members[index] for index in sorted(members)]
        shapes = {tuple(layer_data(layer).shape) for layer in layers}
        if 2 <= len(layers) <= MAX_CHANNELS and len(shapes) == 1:
            groups.append(ChannelGroup(name, layers))
    return groups


def image_choices(viewer) -> list[tuple[str, object]]:
    """(label, value) of the image pickers: every Image layer, each channel group (offered
    just before its first channel, so a multi-channel file is picked whole by default)."""
    from napari.layers import Image

    groups = {group.layers[0]: group for group in channel_groups(viewer)}
    choices = []
    for layer in viewer.layers:
        if not isinstance(layer, Image):
            continue
        if layer in groups:
            choices.append((groups[layer].label, groups[layer]))
        choices.append((layer.name, layer))
    return choices


def image_picker(viewer):
    """A combo box of the viewer's Image layers and channel groups (see :func:`layer_picker`)."""
    return _picker(lambda _: image_choices(viewer))


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
    return _picker(lambda _: [(layer.name, layer) for layer in viewer.layers
                              if isinstance(layer, layer_type)])


def is_probability_map(layer) -> bool:
    """Whether an Image layer can hold probabilities as Predict makes them: one channel of
    floats (not RGB, not integers such as a photo or a scan). Its dtype only: cheap enough
    for a picker refreshed on every change of the layer list."""
    from napari.layers import Image

    return isinstance(layer, Image) and not layer.rgb \
        and np.issubdtype(np.dtype(layer_data(layer).dtype), np.floating)


def probability_picker(viewer):
    """A combo box of the viewer's probability maps (:func:`is_probability_map`) only."""
    return _picker(lambda _: [(layer.name, layer) for layer in viewer.layers
                              if is_probability_map(layer)])


def _picker(choices):
    from magicgui.widgets import ComboBox

    picker = ComboBox(choices=choices)
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
