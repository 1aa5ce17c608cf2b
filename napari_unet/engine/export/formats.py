"""One entry point for the faces: ``export_model(run, format, output)``."""
from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError, DataError, OutputExistsError
from ...runs import BEST, CHECKPOINTS, LAST
from .bioimageio import export_bioimageio
from .loader import load_checkpoint
from .onnx import example_window, export_onnx, export_torchscript

FORMATS = ("bioimageio", "onnx", "torchscript")
SUFFIXES = {"bioimageio": (".zip",), "onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts")}


def _check_output(run, format: str, output: Path) -> None:  # noqa: A002
    """An output named for another format, or the run's own checkpoint: one line."""
    if output.suffix.lower() not in SUFFIXES[format]:
        if format == "bioimageio":
            raise ConfigError(f"a bioimage.io package is a .zip file, not {output.name!r}: "
                              f"use e.g. --output model.zip")
        raise ConfigError(f"{output.name}: name the {format} file {output.stem}"
                          f"{SUFFIXES[format][0]}")
    source = getattr(run, "path", run)  # a loaded Checkpoint knows its file
    if not isinstance(source, (str, Path)):
        return
    source = Path(source)
    checkpoints = [source] if source.is_file() else \
        [source / CHECKPOINTS / name for name in (BEST, LAST)]
    if any(output.resolve() == path.resolve() for path in checkpoints):
        raise ConfigError(f"{output} would replace the run's checkpoint: write the export to "
                          f"another file")


def export_model(run, format: str, output, *, image=None, overwrite: bool = False) -> Path:  # noqa: A002 (the CLI's name)
    """Export a run (folder or checkpoint) as ``format`` (one of FORMATS) to ``output``."""
    if format not in FORMATS:
        raise ConfigError(f"format {format!r} is not valid: choose one of {', '.join(FORMATS)}")
    output = Path(output)
    _check_output(run, format, output)
    if format == "bioimageio":
        return export_bioimageio(run, output, image=image, overwrite=overwrite)
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output} exists: pass --overwrite to replace it")
    if not output.parent.is_dir():
        raise DataError(f"folder {output.parent} does not exist: create it first")
    checkpoint = load_checkpoint(run)
    model = checkpoint.model
    window = checkpoint.data_info.get("input_size") or checkpoint.config.patch_size
    example = example_window(model, window)
    partial = output.with_name(f".{output.stem}.partial{output.suffix}")
    (export_onnx if format == "onnx" else export_torchscript)(model, partial, example)
    partial.replace(output)
    return output
