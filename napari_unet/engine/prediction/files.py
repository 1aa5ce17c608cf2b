"""Prediction over many files: a folder or a glob of TIF, PNG or JPEG images into a folder.

The model is loaded once; each file goes through :func:`predict_file` (tiling, TTA, memory-
mapped output). A file that cannot be used (unreadable, the wrong channels, too small) is
reported in its ``FileDone`` event and skipped; the others are written. Outputs that exist
are refused up front, before any work, unless ``overwrite``.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ...errors import DataError, NapariUnetError, OutputExistsError
from ...io import IMAGE_SUFFIXES, input_files
from ...runs import LABELS_SUFFIX, PROBABILITIES_SUFFIX
from ...zarr_files import ZARR_SUFFIX
from ..events import FileDone
from .ensemble import load_models
from .predict import predict_file


def output_names(inputs: list[Path], folder, suffix: str) -> list[Path]:
    """``folder/<stem><suffix>`` for each input; two inputs with one stem are an error."""
    folder = Path(folder)
    outputs = [folder / f"{path.stem}{suffix}" for path in inputs]
    seen = {}
    for source, target in zip(inputs, outputs):
        if target in seen:
            raise DataError(f"{seen[target].name} and {source.name} would both be written to "
                            f"{target.name}: rename one, or predict them separately")
        seen[target] = source
    return outputs


def _check_outputs(targets: list[Path], overwrite: bool) -> None:
    existing = [path for path in targets if path.exists()]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise OutputExistsError(f"{existing[0]}{more} exist(s): pass --overwrite to replace "
                                f"them, or choose another --output folder")


def predict_files(run, source, output_folder, *, probabilities_folder=None,
                  overwrite: bool = False, **options) -> Iterator:
    """Yield FileDone(0, total), then each file's TilesDone events and its FileDone;
    ``source`` is a folder, a glob
    or one file. Labels go to ``output_folder/<stem>_labels.tif`` (probabilities, when asked,
    to ``probabilities_folder/<stem>_probabilities.tif``)."""
    inputs = input_files(source)
    for folder in (output_folder, probabilities_folder):
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            raise DataError(f"{folder} is a file: for a folder or glob of inputs, --output "
                            f"(and --probabilities) name a folder")
        if folder is not None and not Path(folder).exists() \
                and Path(folder).suffix.lower() in IMAGE_SUFFIXES + (ZARR_SUFFIX,):
            raise DataError(f"{folder} looks like a file name: for a folder or glob of "
                            f"inputs, --output (and --probabilities) name a folder, e.g. "
                            f"{Path(folder).with_suffix('')}")
    for folder, flag in ((output_folder, "--output"), (probabilities_folder, "--probabilities")):
        if folder is not None and any(path.parent.resolve() == Path(folder).resolve()
                                      for path in inputs):
            raise DataError(f"{flag} {folder} holds the input images: the outputs would be read "
                            f"as images by the next run; write them to another folder")
    labels = output_names(inputs, output_folder, LABELS_SUFFIX)
    probabilities = (output_names(inputs, probabilities_folder, PROBABILITIES_SUFFIX)
                     if probabilities_folder is not None else [None] * len(inputs))
    _check_outputs(labels + [p for p in probabilities if p is not None], overwrite)
    checkpoint = load_models(run)
    for folder in {Path(output_folder), Path(probabilities_folder or output_folder)}:
        folder.mkdir(parents=True, exist_ok=True)
    yield FileDone(0, len(inputs), "")  # the count, before the first file's tiles
    for done, (path, labels_path, prob_path) in enumerate(
            zip(inputs, labels, probabilities), start=1):
        try:
            yield from predict_file(checkpoint, path, labels_path, probabilities=prob_path,
                                    overwrite=overwrite, **options)
        except NapariUnetError as exc:
            if isinstance(exc, OutputExistsError):
                raise
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            yield FileDone(done, len(inputs), str(path), error=message)
            continue
        yield FileDone(done, len(inputs), str(path))
