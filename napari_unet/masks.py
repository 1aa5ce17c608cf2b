"""The one rule that turns mask values into classes, for files (the CLI, ``load_dataset``) and
layers (the widgets, the training set of a run) alike.

numpy only: the engine's data sets, the training set and the widgets ask it without torch.
"""
from __future__ import annotations

import numpy as np

from .choices import IGNORE_CLASS, MAX_CLASS_VALUES, UNLABELED_CHOICES
from .errors import ConfigError, DataError
from .objects import instances_of, object_classes, object_ids  # noqa: F401 - for data

RULE_KEYS = ("foreground_value", "unlabeled", "background_value", "ignore_value", "instances")


def mask_classes(mask, foreground_value=None, *, invert: bool = False,
                 instances: str = "refuse", unlabeled: str = "background",
                 background_value: int = 1,
                 ignore_value=None) -> tuple[np.ndarray, bool]:
    """(uint8 class mask, whether instance ids were merged into one class).

    Sparse labels: pixels nobody labelled become IGNORE_CLASS (255), which training, validation
    and evaluation leave out.

    - ``unlabeled="ignore"`` (strokes, some painted slices): 0 is unknown, `background_value`
      is the painted background (class 0), and the other values are the classes in their order
      with the background value taken out (background 1: values 2, 3 are classes 1, 2). With
      `foreground_value`, that value is class 1 and any value but it and the background is
      unknown.
    - `ignore_value`, in either mode: pixels of that value are unknown (a mask file that marks
      its unlabelled pixels; nnU-Net's ignore label, which it puts above every class).

    - `foreground_value` given: that value is class 1, everything else 0 (ISBI: 0 = membrane).
    - values within {0, 255}: 255 is class 1 (masks saved as 8-bit pictures).
    - more than MAX_CLASS_VALUES non-zero values, or values over 255, are instance ids:
      with ``instances="merge"`` (napari's painted labels, and files: ``load_dataset`` then
      makes every mask of the set binary) every object is class 1; with "refuse" values over
      255 are an error and up to 255 stay class indices.
    - other small integer sets are class indices as they are (0/1, BraTS 0..4); 255 among
      them is unlabelled (IGNORE_CLASS, Pascal VOC's void border), which the widget says.
    - float masks: integral values are class indices, other values probabilities cut at 0.5.
    - `invert` swaps object and background of a binary result (ISBI's 0-valued membranes).
    - ``instances="boundary"``: every non-zero value is one object; the classes are background,
      interior and boundary (:func:`napari_unet.objects.object_classes`), whatever the count.
    """
    if unlabeled not in UNLABELED_CHOICES:
        raise ConfigError(f"unlabeled={unlabeled!r}: choose one of {', '.join(UNLABELED_CHOICES)}")
    mask = np.asarray(mask)
    unknown = None
    if ignore_value is not None:
        unknown = mask == ignore_value
        mask = np.where(unknown, 0, mask) if unknown.any() else mask
    if instances == "boundary":
        return _object_classes(mask, foreground_value, invert, unlabeled, unknown), False
    if instances == "foreground":  # the objects' area: read as merged ids (training.losses)
        instances = "merge"
    if unlabeled == "ignore":
        classes, merged, sparse_unknown = _sparse_classes(mask, foreground_value, instances,
                                                          background_value)
        unknown = sparse_unknown if unknown is None else unknown | sparse_unknown
    else:
        classes, merged = _classes(mask, foreground_value, instances)
    if invert:
        if classes.size and classes.max() > 1:
            raise DataError("invert needs a mask of one object class (0/1 after the rule): "
                            "choose the object's value instead")
        classes = (classes == 0).astype(np.uint8)
    if unknown is not None and unknown.any():
        classes = np.where(unknown, np.uint8(IGNORE_CLASS), classes).astype(np.uint8)
    return classes, merged


def check_mask_values(values, foreground_value=None, *, invert: bool = False,
                      unlabeled: str = "background", background_value: int = 1,
                      ignore_value=None, instances=None, unpainted_ok: bool = False
                      ) -> list[str]:
    """The rule's stated values against `values`, every value the masks of a set hold (their
    union: a value one mask lacks may be in another). A value the rule names that no mask
    holds is a mistake (DataError saying what was found), as are masks with no labelled pixel
    and values that contradict (ConfigError); what is valid but probably not meant comes back
    as warnings, one line each. Asked once per set, before training or scoring, by the data
    sets (``dataset_from_pairs``, ``as_dataset``) and the Train widget (:func:`check_labels`).
    `unpainted_ok`: masks with nothing painted yet pass (--unlabeled ignore), for a live run
    that starts from a model and waits for paint.
    """
    del invert  # swaps classes after the rule: no value of its own
    values = np.unique(np.asarray(values))
    found = f"values found: {value_listing(values)}"
    _check_contradictions(foreground_value, unlabeled, background_value, ignore_value)
    if unlabeled == "ignore":
        labelled = values[(values != 0) & (values != ignore_value)]
        if foreground_value is not None:
            labelled = labelled[(labelled == foreground_value) | (labelled == background_value)]
        if labelled.size == 0 and unpainted_ok:
            return []
        if labelled.size == 0:
            raise DataError(f"no mask holds a labelled pixel ({found}; --unlabeled ignore reads "
                            "0 as unknown): nothing to learn from; paint the background as "
                            f"{background_value} and the objects with other values, or, if 0 "
                            "is the background, use --unlabeled background")
        if background_value not in values:
            raise DataError(f"no mask holds the painted background value {background_value} "
                            f"(--unlabeled ignore; {found}): if 0 is the background (dense "
                            "masks), use --unlabeled background; else give the painted "
                            "background's value with --background-value")
    elif ignore_value is not None and not np.any(values != ignore_value):
        raise DataError(f"every mask pixel holds --ignore-value {ignore_value} (unlabelled): "
                        "nothing to learn from; label some pixels, or give the value that "
                        "marks the unlabelled ones")
    if foreground_value is not None and foreground_value not in values:
        raise DataError(f"no mask holds --foreground-value {foreground_value} ({found}): give "
                        "the value of the objects")
    return _value_warnings(values, found, foreground_value, unlabeled, ignore_value, instances)


def _check_contradictions(foreground_value, unlabeled, background_value, ignore_value):
    """ConfigError for values of the rule that cannot hold together, whatever the masks."""
    if ignore_value is not None and ignore_value == foreground_value:
        raise ConfigError(f"--foreground-value and --ignore-value are both {ignore_value}: the "
                          "objects are labelled; give the unlabelled pixels their own value")
    if unlabeled == "ignore" and foreground_value == 0:
        raise ConfigError("with --unlabeled ignore, 0 is unknown: it cannot be the "
                          "--foreground-value; give the objects' painted value")
    if unlabeled != "ignore" and ignore_value == 0 and foreground_value is None:
        raise ConfigError("--ignore-value 0 leaves the masks no background (0 is the "
                          "background of dense masks): for masks whose 0 is unknown, use "
                          "--unlabeled ignore and paint the background with --background-value")
    if unlabeled == "ignore" and background_value in (foreground_value, ignore_value):
        other = "--foreground-value" if background_value == foreground_value else \
            "--ignore-value"
        raise ConfigError(f"{other} and --background-value are both {background_value}: "
                          "the painted background is a value of its own; give each its own")


def _value_warnings(values, found, foreground_value, unlabeled, ignore_value, instances):
    """The warnings of check_mask_values: an ignore value no mask holds (with the value that
    may be the unlabelled one: the top of a gap in the classes), binary masks for objects."""
    warnings = []
    if ignore_value is not None and ignore_value not in values and ignore_value != IGNORE_CLASS:
        # 255 (IGNORE_CLASS) is the unlabelled value of the masks this project writes (the
        # widgets' training sets): absent, every pixel was labelled
        extra = ""
        classes = values[(values > 0) & (values < IGNORE_CLASS)]
        if unlabeled != "ignore" and foreground_value is None and instances != "boundary" \
                and 0 < classes.size <= MAX_CLASS_VALUES and classes[-1] > classes.size:
            extra = (f": {classes[-1]} is learnt as a class of its own (a "
                     f"{int(classes[-1]) + 1}-class head, classes without a pixel between); if "
                     f"{classes[-1]} marks the unlabelled pixels, pass --ignore-value "
                     f"{classes[-1]}")
        warnings.append(f"no mask holds --ignore-value {ignore_value} ({found}): every pixel "
                        f"is labelled{extra}")
    if instances == "boundary" and values[(values != 0) & (values != ignore_value)].size == 1:
        warnings.append(f"--instances boundary: the masks hold one object value ({found}): "
                        "binary masks, so each connected region is one object and touching "
                        "objects merge into one; give each object its own id to keep them "
                        "apart")
    return warnings


def check_labels(labels, foreground_value=None, **rule) -> list[str]:
    """check_mask_values of painted label arrays (a widget's pairs, before anything is
    written): raises on a mistake, returns the warnings."""
    found = [distinct_values(np.asarray(array)).ravel() for array in labels]
    if not found:
        return []
    return check_mask_values(np.unique(np.concatenate(found)), foreground_value, **rule)


def value_listing(values, limit: int = 8) -> str:
    """Sorted mask values in words: "0, 1, 9", or the first few and the count."""
    values = [int(v) if float(v).is_integer() else float(v) for v in np.asarray(values)]
    if len(values) <= limit:
        return ", ".join(map(str, values))
    return f"{', '.join(map(str, values[:limit - 2]))}, ..., {values[-1]} ({len(values)} values)"


def rule_of(source) -> dict:
    """The mask rule's settings (RULE_KEYS) read off a TrainConfig or the CLI's arguments;
    ``instances`` only when objects are asked for (merging or refusing ids is each caller's
    own default: files merge, arrays refuse)."""
    rule = {key: getattr(source, key, None) for key in RULE_KEYS
            if getattr(source, key, None) is not None}
    if rule.get("instances") != "boundary":
        rule.pop("instances", None)
    return rule


def _object_classes(mask, foreground_value, invert, unlabeled, unknown):
    """Background / interior / boundary classes of an instance mask (``instances="boundary"``)."""
    if foreground_value is not None or invert or unlabeled == "ignore":
        raise ConfigError("--instances boundary reads every non-zero value as one object: "
                          "drop --foreground-value / --invert / --unlabeled ignore (mark "
                          "unlabelled pixels with --ignore-value instead)")
    if not instances_of(mask):
        raise DataError("an instance mask holds one non-negative integer per object (0 = "
                        "background): save it as integers")
    return object_classes(mask if mask.dtype.kind in "biu" else mask.astype(np.int64), unknown)


def _sparse_classes(mask, foreground_value, instances, background_value):
    """(classes, merged, unknown) of a mask whose 0 means unknown."""
    if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool:
        if not np.all(mask == np.round(mask)):
            raise DataError("a mask with unlabelled pixels holds label values, not "
                            "probabilities: save it as integers")
        mask = mask.astype(np.int64)
    if background_value == 0:
        raise ConfigError("with unlabelled pixels 0 means unknown: paint the background with "
                          "another value (e.g. --background-value 1)")
    unknown = mask == 0
    background = mask == background_value
    if foreground_value is not None:
        objects = mask == foreground_value
        return objects.astype(np.uint8), False, ~(objects | background)
    values = distinct_values(mask)
    values = values[(values != 0) & (values != background_value)]
    if values.size == 0:
        return np.zeros(mask.shape, np.uint8), False, unknown
    if instances == "merge" and (len(values) > MAX_CLASS_VALUES or values[-1] > 255
                                 or values[0] < 0):
        return (~(unknown | background)).astype(np.uint8), True, unknown
    if values[0] < 0 or values[-1] > MAX_CLASS_VALUES + 1:
        one = f"; for one object value, pass --foreground-value {values[0]}" \
            if values.size == 1 else ""
        raise DataError(f"mask values {values[0]}..{values[-1]}: with unlabelled pixels (0) "
                        f"and the background painted as {background_value}, paint the "
                        f"classes with small values (1..{MAX_CLASS_VALUES + 1}){one}")
    shifted = np.where(mask > background_value, mask - 1, mask)
    return np.where(background | unknown, 0, shifted).astype(np.uint8), False, unknown


def _classes(mask, foreground_value, instances):
    if foreground_value is not None:
        return (mask == foreground_value).astype(np.uint8), False
    if mask.dtype == bool:
        return mask.astype(np.uint8), False
    if np.issubdtype(mask.dtype, np.floating):
        if not np.all(mask == np.round(mask)):
            return (mask > 0.5).astype(np.uint8), False
        mask = mask.astype(np.int64)
    if not np.issubdtype(mask.dtype, np.integer):
        raise DataError(f"mask of type {mask.dtype} is not a class mask: save it as integers")
    values = distinct_values(mask)
    if values.size == 0:
        return mask.astype(np.uint8), False
    nonzero = values[values != 0]
    if instances == "merge" and (len(nonzero) > MAX_CLASS_VALUES or values[-1] > 255
                                 or values[0] < 0):
        return (mask != 0).astype(np.uint8), True
    if values[0] < 0:
        raise DataError(f"mask has negative values (down to {values[0]}): use 0 for background "
                        "and 1, 2, ... for the classes")
    if values[-1] == 255 and set(values.tolist()) <= {0, 255}:
        return (mask == 255).astype(np.uint8), False
    if values[-1] > 255:
        raise DataError(f"mask has {values.size} distinct values up to {values[-1]}: classes "
                        "must be 0..255 (for instance labels pass foreground_value or save "
                        "mask > 0)")
    return mask.astype(np.uint8, copy=False), False


def distinct_values(mask: np.ndarray, chunk_items: int = 1 << 24) -> np.ndarray:
    """Every value in the mask, sorted, read in slabs so memory-mapped masks stay small."""
    flat = mask.reshape(mask.shape[0], -1) if mask.ndim > 1 else mask.reshape(1, -1)
    rows = max(1, chunk_items // max(flat.shape[1], 1))
    found = np.zeros(0, mask.dtype)
    for start in range(0, flat.shape[0], rows):
        chunk = np.asarray(flat[start:start + rows]).ravel()
        if mask.dtype in (np.uint8, np.uint16):  # counting is much faster than sorting
            chunk = np.flatnonzero(np.bincount(chunk)).astype(mask.dtype)
        found = np.union1d(found, chunk)
    return found


def _share(percent: float) -> str:
    """A share as a percentage, with the digits that keep a small class from reading 0%."""
    if percent >= 9.5:
        return f"{percent:.0f}%"
    return f"{percent:.2g}%"


def describe_classes(labels, foreground_value=None, invert=False, **rule) -> str:
    """One line on what training will learn from `labels` under the rule (for the widget);
    `rule`: unlabeled, background_value, ignore_value (mask_classes)."""
    try:
        classes, merged = mask_classes(labels, foreground_value, invert=invert,
                                       **{"instances": "merge", **rule})
    except (DataError, ConfigError) as exc:
        return f"cannot train on these labels: {exc}"
    if rule.get("instances") == "boundary":
        values = distinct_values(np.asarray(labels))
        counts = np.bincount(classes.ravel(), minlength=3)
        return (f"learns {int(np.count_nonzero(values))} object(s) apart: their interiors "
                f"({_share(100 * counts[1] / max(classes.size, 1))} of the pixels) and "
                f"outlines ({_share(100 * counts[2] / max(classes.size, 1))}); predictions "
                "come back as objects")
    counts = np.bincount(classes.ravel(), minlength=IGNORE_CLASS + 1)
    annotated = classes.size - int(counts[IGNORE_CLASS])
    counts = counts[:IGNORE_CLASS]
    percent = [(k, 100 * n / max(annotated, 1)) for k, n in enumerate(counts) if k and n]
    if len(percent) == 1 and percent[0][0] == 1:
        shares = f"{_share(percent[0][1])} of the pixels"
    else:
        shares = ", ".join(f"class {k} {_share(p)}" for k, p in percent)
    if foreground_value is not None:
        source = f"value {foreground_value}"
    elif merged:
        source = "every labelled object (instances merged)"
    else:
        values = distinct_values(np.asarray(labels))
        hidden = {0, rule.get("ignore_value")}
        if annotated < classes.size:  # 255 beside other classes: the unlabelled pixels
            hidden.add(IGNORE_CLASS)
        if rule.get("unlabeled") == "ignore":
            hidden.add(rule.get("background_value", 1))
        shown = ", ".join([str(v) for v in values if v not in hidden][:8])
        source = f"value(s) {shown}" if shown else "nothing"
    source = f"everything but {source}" if invert else source
    line = f"learns {source}: {shares or 'no object pixels'}"
    if annotated < classes.size:
        line = line.replace(" of the pixels", " of the labelled pixels")
        line += (f"; {_share(100 * annotated / max(classes.size, 1))} of the pixels labelled, "
                 "the rest ignored")
        if rule.get("unlabeled") == "ignore":
            line += f" (background painted as {rule.get('background_value', 1)})"
    return line
