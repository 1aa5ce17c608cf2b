"""CPU prediction backends: the model's exported ONNX graph run by ONNX Runtime or OpenVINO.

:func:`backend_model` returns a module that looks like the network to the sliding window
(same ``spatial_dims``, channels, classes and size rules; called on a batch of windows, it
returns logits), so tiling, blending, TTA and out-of-core output stay the engine's own: only
the network's forward pass changes hands.

- ``torch``: the model itself (bf16 autocast and channels-last where asked).
- ``onnxruntime``: fp32 whatever ``amp`` says (its CPU provider has no bf16 convolutions).
- ``openvino``: fp32, or bf16 when ``amp="bf16"`` (``INFERENCE_PRECISION_HINT``). A compiled
  model is kept per window shape (static shapes compile to faster kernels than dynamic ones).

``auto`` picks the fastest available on the machine at hand, from
``benchmarks/cpu_backends.py``'s measurements (:data:`AUTO_ORDER`). The exported graph is
made once per model and process (a few seconds for the 31 M-parameter UNet).
ONNX Runtime and OpenVINO come with the ``cpu`` extra.
"""
from __future__ import annotations

import importlib.util
import io

import numpy as np
import torch

from ...choices import BACKENDS
from ...errors import ConfigError
from ..export.onnx import export_onnx

# Fastest first on a 2-core AVX512-BF16 CPU (benchmarks/RESULTS.md, "CPU backends").
AUTO_ORDER = {"bf16": ("openvino", "torch"), "off": ("openvino", "onnxruntime", "torch"),
              "fp16": ("torch",)}
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
# Models whose exported graph lost end to end through `napari_unet predict` (the unpadded
# 31 M UNet: 0.85x, its graph's export and compile outweigh the faster network): auto keeps torch.
AUTO_TORCH_MODELS = ("unet",)


def available(name: str) -> bool:
    return name == "torch" or importlib.util.find_spec(_PACKAGES[name]) is not None


def choose_backend(name: str, device: torch.device, amp: str, model_name: str = "") -> str:
    """The backend to run: ``auto`` resolves to the fastest one installed (CPU only)."""
    if name not in BACKENDS:
        raise ConfigError(f"backend {name!r} is not valid: choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        if device.type != "cpu" or model_name in AUTO_TORCH_MODELS:
            return "torch"
        return next(b for b in AUTO_ORDER.get(amp, ("torch",)) if available(b))
    if name != "torch":
        if device.type != "cpu":
            raise ConfigError(f"--backend {name} runs on the CPU: use --device cpu, or "
                              f"--backend torch for {device.type}")
        if not available(name):
            raise ConfigError(f"--backend {name} needs {_PACKAGES[name]}: pip install "
                              f"'napari-unet-torch[cpu]'")
        if amp == "fp16":
            raise ConfigError(f"--backend {name} does not run fp16 on the CPU: use --amp bf16 "
                              f"or off")
    return name


def onnx_bytes(model) -> bytes:
    """The network's ONNX graph (logits; dynamic batch and sizes)."""
    buffer = io.BytesIO()
    export_onnx(model, buffer)
    return buffer.getvalue()


class ExportedModel(torch.nn.Module):
    """The network's size rules with an exported graph's forward pass (CPU, numpy in/out)."""

    def __init__(self, model, backend: str, amp: str):
        super().__init__()
        self.network = [model]  # a list: not a submodule, so .to() and .eval() leave it be
        self.backend = backend
        self.spatial_dims, self.in_channels = model.spatial_dims, model.in_channels
        self.num_classes = model.num_classes
        self.bf16 = amp == "bf16"
        graph = onnx_bytes(model)
        if backend == "onnxruntime":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.session = onnxruntime.InferenceSession(graph, options,
                                                        providers=["CPUExecutionProvider"])
        else:
            import openvino

            self.core = openvino.Core()
            self.graph = self.core.read_model(graph)
            self.compiled = {}

    def valid_input_size(self, size):
        return self.network[0].valid_input_size(size)

    def output_size(self, size):
        return self.network[0].output_size(size)

    def _openvino(self, shape):
        if shape not in self.compiled:
            graph = self.graph.clone()
            graph.reshape(list(shape))
            precision = "bf16" if self.bf16 else "f32"
            self.compiled[shape] = self.core.compile_model(
                graph, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                               "PERFORMANCE_HINT": "LATENCY"})
        return self.compiled[shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        if self.backend == "onnxruntime":
            logits = self.session.run(None, {"input": array})[0]
        else:
            logits = self._openvino(array.shape)(array)[0]
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))


_LAST: dict = {}  # the last exported model: many files or a widget reuse it


def _weights_key(model) -> tuple:
    return tuple((name, t.data_ptr(), t._version) for name, t in model.state_dict().items())


def backend_model(model, backend: str, device: torch.device, amp: str):
    """``model`` itself for torch, else an :class:`ExportedModel` running its ONNX graph
    (exported once per model, weights, backend and precision in a process)."""
    name = choose_backend(backend, device, amp, getattr(model, "name", ""))
    if name == "torch":
        return model
    key = (id(model), _weights_key(model), name, amp == "bf16")
    if key not in _LAST:
        _LAST.clear()  # one at a time: the graph of the 31 M UNet holds 124 MB of weights
        _LAST[key] = ExportedModel(model, name, amp)
    return _LAST[key]
