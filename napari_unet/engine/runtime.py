"""Device, precision and backend choices shared by training, prediction and benchmarks."""
from __future__ import annotations

import contextlib
import os

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
    """A context manager for the chosen precision; "off" is full fp32 (TF32 where enabled);
    "auto" is what `resolve_amp` makes of it on `device`."""
    if amp == "auto":
        amp, _ = resolve_amp(device, amp)
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[check_amp(device, amp)])


# "0" makes this CPU count as one without native bf16 (to try the rule on any machine: the
# suite's timings on such CPUs), "1" as one with it; unset: the CPU is asked.
CPU_BF16_ENV = "NAPARI_UNET_CPU_BF16"
_FALSE, _TRUE = ("0", "false", "no", "off"), ("1", "true", "yes", "on")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast is
    1.6-1.9x faster than fp32 (benchmarks/RESULTS.md); elsewhere torch emulates it, about 6x
    slower than fp32 (an AVX2 AMD EPYC: 0.36 against 2.09 img/s). NAPARI_UNET_CPU_BF16=0/1
    overrides the answer."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if forced in _FALSE or forced in _TRUE:
        return forced in _TRUE
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    except Exception:  # noqa: BLE001 - a torch without these probes: assume emulated bf16
        return False


def _cuda_has_bf16(device: torch.device) -> bool:
    """Ampere and newer compute bf16; older GPUs emulate it (fp16 is their mixed precision)."""
    try:
        return torch.cuda.get_device_capability(device) >= (8, 0)
    except Exception:  # noqa: BLE001 - no capability to read: trust torch's own answer
        return bool(torch.cuda.is_bf16_supported())


def _mps_has_bf16() -> bool:
    newer = getattr(getattr(torch.backends, "mps", None), "is_macos_or_newer", None)
    return bool(newer is not None and newer(14, 0))


def resolve_amp(device: torch.device, amp: str) -> tuple[str, str | None]:
    """The one rule for mixed precision: (the mode to run, a warning or None).

    auto (every default): bf16 where the device computes it natively (GPUs from Ampere on,
    Apple GPUs on macOS 14+, CPUs with AVX512-BF16 or AMX), fp16 on older CUDA GPUs, else
    full precision. An explicit bf16 where it is emulated is kept, with a warning of its cost."""
    if amp == "auto":
        if device.type == "cuda":
            return ("bf16" if _cuda_has_bf16(device) else "fp16"), None
        if device.type == "mps":
            return ("bf16" if _mps_has_bf16() else "off"), None
        return ("bf16" if cpu_has_fast_bf16() else "off"), None
    if amp == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        return amp, ("--amp bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), torch "
                     "emulates it, several times slower than full precision: use --amp auto "
                     "or off")
    if amp == "bf16" and device.type == "cuda" and not _cuda_has_bf16(device):
        return amp, ("--amp bf16: this GPU has no native bf16 (it needs compute capability "
                     "8.0+): use --amp auto (fp16 here) or off")
    return amp, None


def amp_reason(device: torch.device, amp: str) -> str:
    """Why `resolve_amp` chose `amp` for "auto" on `device` (one phrase, for plans and logs)."""
    if device.type == "cpu":
        forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
        if forced in _FALSE + _TRUE:
            return (f"{CPU_BF16_ENV}={forced}: "
                    + ("bf16 mixed precision" if forced in _TRUE else "full precision"))
        return ("this CPU computes bf16 natively: bf16 mixed precision" if cpu_has_fast_bf16()
                else "this CPU emulates bf16 (several times slower): full precision")
    if device.type == "cuda":
        return ("bf16 mixed precision" if amp == "bf16"
                else "this GPU has no native bf16: fp16 mixed precision")
    return "bf16 mixed precision" if amp == "bf16" else "full precision (no bf16 before macOS 14)"


def memory_format(spatial_dims: int, channels_last: bool):
    # channels_last_3d is slower with InstanceNorm3d (SPEC pitfall): 2D only.
    if channels_last and spatial_dims == 2:
        return torch.channels_last
    return torch.contiguous_format
