"""Training and prediction speed for each preset x precision x compile x channels-last.

One command, one table; ratios against eager fp32 of the same preset and mode in the same run:

    .venv/bin/python benchmarks/speed.py                       # CPU: bf16/off, compile on/off
    .venv/bin/python benchmarks/speed.py --device cuda --amp off bf16 fp16 --channels-last both

On CPU the inputs are reduced by default (--cpu-sizes) so the table finishes in minutes;
on a GPU the presets' reference sizes are used (572x572 UNet, 512x512 TinyUNet, 128^3 3D-UNet).

The last table puts each row against the device's own measured limits (``--no-peaks`` skips
them): the best matrix-multiply TFLOP/s of the row's precision (fp32 rows: TF32 on a GPU, as
the engine runs them) and the copy bandwidth, so "55 % of the bf16 peak" is measured, not
taken from a data sheet. GPU issue-8 run, one call:

    .venv/bin/python benchmarks/speed.py --device cuda --amp off bf16 fp16 --compile both \
        --channels-last both --batch-size 8 --steps 20 --warmup 5
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_unet.engine.benchmark import format_table, run_benchmark  # noqa: E402

CPU_SIZES = {"industrial": [256], "isbi2012": [572], "volume3d": [64]}
# --tiny (the test suite: every path once, in seconds): small inputs, narrow networks
TINY_SIZES = {"industrial": [32], "isbi2012": [188], "volume3d": [16]}
TINY = ["--amp", "off", "--compile", "off", "--batch-size", "1", "--base-channels", "4",
        "--warmup", "0", "--steps", "1"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["industrial", "isbi2012", "volume3d"])
    parser.add_argument("--modes", nargs="+", default=["train", "predict"])
    parser.add_argument("--amp", nargs="+", default=["off", "bf16"])
    parser.add_argument("--compile", choices=["off", "on", "both"], default="both")
    parser.add_argument("--channels-last", choices=["on", "off", "both"], default="on")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--base-channels", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-peaks", action="store_true",
                        help="skip measuring the matmul peak and copy bandwidth")
    parser.add_argument("--full-size", action="store_true",
                        help="use the presets' reference input sizes on CPU too")
    parser.add_argument("--tiny", action="store_true",
                        help="a check that every path runs (the test suite): 1 step of a "
                             "narrow network on small inputs, small peak measurements")
    args = parser.parse_args(argv)
    if args.tiny:  # the tiny settings win over the same options given with --tiny
        args = parser.parse_args([*(sys.argv[1:] if argv is None else argv), *TINY])

    import torch
    on_cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    layouts = {"off": [False], "on": [True], "both": [False, True]}[args.channels_last]
    rows = []
    for preset in args.presets:
        sizes = TINY_SIZES if args.tiny else CPU_SIZES if on_cpu and not args.full_size else {}
        size = sizes.get(preset)
        for mode in args.modes:
            for amp in args.amp:
                for compile_ in compiles:
                    for channels_last in layouts:
                        rows += run_benchmark(preset, mode=mode, batch_size=args.batch_size,
                                              size=size, base_channels=args.base_channels,
                                              warmup=args.warmup, steps=args.steps, amp=amp,
                                              compile=compile_, channels_last=channels_last,
                                              device=args.device)
                        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(format_table(rows))
    print()
    print(ratio_table(rows))
    if not args.no_peaks:
        device = rows[0].device if rows else "cpu"
        peaks = measure_peaks(device, sorted({r.amp for r in rows}), tiny=args.tiny)
        print()
        print(peak_table(rows, peaks))


AMP_DTYPE_NAMES = {"off": "float32", "bf16": "bfloat16", "fp16": "float16"}


def measure_peaks(device: str, amps, repeats: int = None, tiny: bool = False) -> dict:
    """The best matmul TFLOP/s per precision and the copy bandwidth (GB/s) of `device`."""
    import torch

    from napari_unet.engine.benchmark import time_calls
    dev = torch.device(device)
    on_gpu = dev.type == "cuda"
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True  # as the engine runs fp32
    n = 256 if tiny else 8192 if on_gpu else 2048
    repeats = 1 if tiny else repeats or (20 if on_gpu else 3)

    def best_seconds(fn):
        return min(time_calls(fn, dev, warmup=1, steps=repeats))

    peaks = {}
    for amp in amps:
        if amp == "fp16" and not on_gpu:
            continue
        dtype = getattr(torch, AMP_DTYPE_NAMES[amp])
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        peaks[amp] = 2 * n ** 3 / best_seconds(lambda a=a, b=b: a @ b) / 1e12
    src = torch.empty((1 << 20) if tiny else (1 << 30) if on_gpu else (1 << 28),
                      dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    peaks["copy_gb_s"] = 2 * src.numel() / best_seconds(lambda: dst.copy_(src)) / 1e9
    return peaks


def peak_table(rows, peaks: dict) -> str:
    """Each row's achieved TFLOP/s as a share of the measured matmul peak of its precision."""
    lines = [f"measured on {rows[0].device if rows else '?'}: matmul peak "
             + ", ".join(f"{'fp32' if k == 'off' else k} {v:.3g} TFLOP/s"
                         for k, v in peaks.items() if k != "copy_gb_s")
             + f"; copy bandwidth {peaks['copy_gb_s']:.0f} GB/s",
             "preset      mode     amp   compile  ch-last  TFLOP/s   % of matmul peak"]
    for r in rows:
        peak = peaks.get(r.amp)
        share = f"{100 * r.tflop_s / peak:.1f}" if peak else "-"
        lines.append(f"{r.preset:<11} {r.mode:<8} {r.amp:<5} {'on' if r.compile else 'off':<8} "
                     f"{'on' if r.channels_last else 'off':<8} {r.tflop_s:<9.3f} {share}")
    return "\n".join(lines)


def ratio_table(rows) -> str:
    """Speed-up of every row over eager fp32 (channels-last as in the row) of its preset/mode."""
    base = {}
    for r in rows:
        if r.amp == "off" and not r.compile:
            base.setdefault((r.preset, r.mode), r.img_s)
    lines = ["preset      mode     amp   compile  ch-last  img/s     x eager fp32"]
    for r in rows:
        ref = base.get((r.preset, r.mode))
        ratio = f"{r.img_s / ref:.2f}" if ref else "-"
        lines.append(f"{r.preset:<11} {r.mode:<8} {r.amp:<5} {'on' if r.compile else 'off':<8} "
                     f"{'on' if r.channels_last else 'off':<8} {r.img_s:<9.2f} {ratio}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
