"""The reference's benchmark mode: warm-up steps, then img/s, latency percentiles, TFLOP/s.

FLOPs are counted once with torch's FlopCounterMode on the meta device (no compute), so the
achieved TFLOP/s is measured throughput x counted cost.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..choices import preset_network
from ..errors import ConfigError
from .config import preset_config
from .runtime import autocast, configure_backends, memory_format, resolve_amp, resolve_device
from .training.losses import build_loss
from .training.setup import make_model, make_optimizer, output_channels, window_sizes
from .training.steps import optimizer_step

CPU_BATCH = 2  # the reference batches are GPU batches; a CPU run keeps to a few images


@dataclass
class BenchmarkRow:
    preset: str
    mode: str
    device: str
    amp: str
    compile: bool
    channels_last: bool
    batch_size: int
    input_size: tuple
    img_s: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    gflop_per_image: float
    tflop_s: float


def _setup(preset, batch_size, size, base_channels, amp, compile, channels_last, device, mode):
    overrides = {"amp": amp, "compile": compile, "channels_last": channels_last, "device": device}
    if base_channels is not None:
        options = dict(preset_config(preset).model_options, base_channels=base_channels)
        overrides["model_options"] = options
    config = preset_config(preset, **overrides)
    device = resolve_device(config.device)
    config = replace(config, amp=resolve_amp(device, config.amp)[0])  # the row says what ran
    configure_backends(device, config.tf32)
    in_channels, num_classes = preset_network(preset)  # what the preset's network sees
    torch.manual_seed(0)
    model = make_model(config, in_channels, num_classes)
    if size:
        input_size = tuple(size) * config.spatial_dims if len(size) == 1 else tuple(size)
        input_size = tuple(model.valid_input_size(input_size))
    else:
        input_size, _ = window_sizes(model, config.patch_size)
    if batch_size is None:
        batch_size = CPU_BATCH if device.type == "cpu" else (16 if mode == "predict"
                                                                else config.batch_size)
    return config, device, model, in_channels, num_classes, tuple(input_size), batch_size


def count_gflop(config, in_channels, num_classes, input_size, train: bool) -> float:
    """GFLOP per image (forward, or forward + backward when training), counted on meta."""
    with torch.device("meta"):
        model = make_model(config, in_channels, num_classes)
        x = torch.zeros(1, in_channels, *input_size)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x)
        if train:
            out.float().sum().backward()
    return counter.get_total_flops() / 1e9


def run_benchmark(preset, *, mode="both", batch_size=None, size=None, base_channels=None,
                  warmup=3, steps=10, amp="auto", compile=False, channels_last=True,
                  device="auto") -> list[BenchmarkRow]:
    _check_counts(batch_size=batch_size, size=size, warmup=warmup, steps=steps)
    modes = ["train", "predict"] if mode == "both" else [mode]
    rows = []
    for m in modes:
        config, dev, model, cin, k, input_size, batch = _setup(
            preset, batch_size, size, base_channels, amp, compile, channels_last, device, m)
        latencies = _time_steps(config, dev, model, cin, k, input_size, batch, warmup, steps, m)
        gflop = count_gflop(config, cin, k, input_size, train=(m == "train"))
        img_s = batch / float(np.mean(latencies))
        p = np.percentile(np.asarray(latencies) * 1e3, [50, 90, 95, 99])
        rows.append(BenchmarkRow(preset, m, str(dev), config.amp, compile, config.channels_last, batch,
                                 input_size, img_s, *p.tolist(), gflop, img_s * gflop / 1e3))
    return rows


def _check_counts(*, batch_size, size, warmup, steps):
    """A benchmark needs at least one timed step of at least one image of positive size."""
    if steps < 1 or warmup < 0:
        raise ConfigError(f"--steps {steps} / --warmup {warmup}: time at least 1 step after "
                          f"0 or more warm-up steps")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: use at least 1 image per step")
    if size is not None and min(size) < 1:
        raise ConfigError(f"--size {' '.join(map(str, size))}: give positive sizes in pixels")


def _time_steps(config, device, model, in_channels, num_classes, input_size, batch, warmup,
                steps, mode) -> list[float]:
    fmt = memory_format(config.spatial_dims, config.channels_last)
    model.to(device=device, memory_format=fmt)
    net = torch.compile(model) if config.compile else model
    x = torch.randn(batch, in_channels, *input_size, device=device).contiguous(memory_format=fmt)
    out_size = model.output_size(input_size)
    y = torch.randint(0, max(2, num_classes), (batch, *out_size), device=device)
    if mode == "train":
        step = _train_step_fn(config, net, model, num_classes, x, y, device)
    else:
        model.eval()

        def step():
            with torch.inference_mode(), autocast(device, config.amp):
                net(x)
    return time_calls(step, device, warmup, steps)


def time_calls(fn, device: torch.device, warmup: int, steps: int) -> list[float]:
    """Seconds of each of `steps` calls of `fn` after `warmup` untimed ones, the device
    synchronised around every call so that GPU work is counted where it runs."""
    latencies = []
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        if i >= warmup:
            latencies.append(time.perf_counter() - start)
    return latencies


def _train_step_fn(config, net, model, num_classes, x, y, device):
    # a region preset trains its regions' loss (sigmoid outputs), as the trainer does
    loss_fn = build_loss(config.loss, output_channels(config, num_classes), config.regions)
    optimizer = make_optimizer(config, model.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    model.train()
    if output_channels(config, num_classes) == 1:
        y = (y > 0).long()

    def step():
        optimizer_step(net, model, x, y, loss_fn, optimizer, scaler, config, device)
    return step


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_table(rows: list[BenchmarkRow]) -> str:
    header = ("preset", "mode", "device", "amp", "compile", "ch-last", "batch", "input",
              "img/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "GFLOP/img", "TFLOP/s")
    lines = [header]
    for r in rows:
        lines.append((r.preset, r.mode, r.device, r.amp, "on" if r.compile else "off",
                      "on" if r.channels_last else "off", str(r.batch_size),
                      "x".join(map(str, r.input_size)), f"{r.img_s:.2f}", f"{r.p50_ms:.1f}",
                      f"{r.p90_ms:.1f}", f"{r.p95_ms:.1f}", f"{r.p99_ms:.1f}",
                      f"{r.gflop_per_image:.1f}", f"{r.tflop_s:.3f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)
