"""The network alone, out of the app: ONNX and TorchScript graphs (logits), with dynamic batch
and spatial sizes, traced on a valid window. ONNX uses torch's TorchScript-based exporter
(``dynamo=False``): the dynamo exporter cannot yet follow the unpadded UNet's crops.
``onnx`` comes with the ``export`` and ``cpu`` extras.
"""
from __future__ import annotations

import contextlib
import importlib
import warnings
from pathlib import Path

import torch

from ...errors import ConfigError

ONNX_OPSET = 17
AXIS_NAMES = ("z", "y", "x")


def require(module: str, extra: str = "export"):
    """Import an optional dependency or say which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{module} is not installed: pip install "
                          f"'napari-unet-torch[{extra}]'") from None


def example_window(model, size=None, batch: int = 1) -> torch.Tensor:
    """A seeded input of a valid window (the smallest valid size >= ``size``)."""
    window = model.valid_input_size(size or model.min_size)
    generator = torch.Generator().manual_seed(0)
    return torch.randn((batch, model.in_channels, *window), generator=generator)


def _dynamic_axes(spatial_dims: int) -> dict:
    names = AXIS_NAMES[-spatial_dims:]
    return {"input": {0: "batch", **{2 + i: n for i, n in enumerate(names)}},
            "output": {0: "batch", **{2 + i: f"{n}_out" for i, n in enumerate(names)}}}


@contextlib.contextmanager
def _quiet_tracing():
    # tracing warns about the model's Python size checks, which hold for every valid window
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_onnx(model, path, example: torch.Tensor | None = None):
    """The network (logits) as ONNX, batch and spatial sizes dynamic."""
    require("onnx")
    model = model.eval().float().to(memory_format=torch.contiguous_format)
    example = example_window(model) if example is None else example
    target = path if hasattr(path, "write") else str(path)  # a file or a BytesIO
    with _quiet_tracing(), torch.no_grad():
        torch.onnx.export(model, (example,), target, input_names=["input"],
                          output_names=["output"], dynamic_axes=_dynamic_axes(model.spatial_dims),
                          opset_version=ONNX_OPSET, dynamo=False)
    return path


def export_torchscript(model, path, example: torch.Tensor | None = None) -> Path:
    """The network (logits) traced to TorchScript; runs at any valid size and batch."""
    model = model.eval().float().to(memory_format=torch.contiguous_format)
    example = example_window(model) if example is None else example
    with _quiet_tracing(), torch.no_grad():
        traced = torch.jit.trace(model, example)
    traced.save(str(path))
    return Path(path)
