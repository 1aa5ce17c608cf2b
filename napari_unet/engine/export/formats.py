"""One entry point for the faces: ``export_model(run, format, output)``."""
from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError, DataError, OutputExistsError
from .bioimageio import export_bioimageio
from .loader import load_checkpoint
from .onnx import example_window, export_onnx, export_torchscript

FORMATS = ("bioimageio", "onnx", "torchscript")


def export_model(run, format: str, output, *, image=None, overwrite: bool = False) -> Path:  # noqa: A002 (the CLI's name)
    """Export a run (folder or checkpoint) as ``format`` (one of FORMATS) to ``output``."""
    if format not in FORMATS:
        raise ConfigError(f"format {format!r} is not valid: choose one of {', '.join(FORMATS)}")
    output = Path(output)
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
