"""Device, precision and backend choices shared by training, prediction and benchmarks."""
from __future__ import annotations

import contextlib

import torch

from ..errors import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def mps_available() -> bool:
    """Whether an Apple GPU (Metal Performance Shaders) can run torch here."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """auto: a CUDA GPU, else an Apple GPU (MPS), else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA GPU is available: "
                              "use --device cpu or auto")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "mps":
        if not mps_available():
            raise ConfigError("--device mps was asked for but no Apple GPU (MPS) is available "
                              "(it needs an Apple-silicon Mac with macOS 12.3+ and a torch built "
                              "with MPS): use --device cpu or auto")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"device must be auto, cpu, cuda or mps, not {name!r}")


def check_amp(device: torch.device, amp: str) -> str:
    """The AMP choice, or a clear error where the device cannot run it: Apple GPUs compute bf16
    from macOS 14 on (fp16 and fp32 everywhere)."""
    if device.type == "mps" and amp == "bf16":
        newer = getattr(torch.backends.mps, "is_macos_or_newer", None)
        if newer is None or not newer(14, 0):
            raise ConfigError("bf16 on an Apple GPU needs macOS 14 or newer: use --amp fp16 "
                              "or --amp off")
    return amp


def configure_backends(device: torch.device, tf32: bool = True) -> None:
    """TF32 for matmuls and convolutions on Ampere+ (SPEC: on by default on GPU)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True


def autocast(device: torch.device, amp: str):
    """A context manager for the chosen precision; "off" is full fp32 (TF32 where enabled)."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[check_amp(device, amp)])


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast is
    1.6-1.9x faster than fp32 (benchmarks/RESULTS.md); elsewhere it is emulated and slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    except Exception:  # noqa: BLE001 - a torch without these probes: assume emulated bf16
        return False


def memory_format(spatial_dims: int, channels_last: bool):
    # channels_last_3d is slower with InstanceNorm3d (SPEC pitfall): 2D only.
    if channels_last and spatial_dims == 2:
        return torch.channels_last
    return torch.contiguous_format
