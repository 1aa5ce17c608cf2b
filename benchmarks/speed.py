"""Training and prediction speed for each preset x precision x compile x channels-last.

One command, one table; ratios against eager fp32 of the same preset and mode in the same run:

    .venv/bin/python benchmarks/speed.py                       # CPU: bf16/off, compile on/off
    .venv/bin/python benchmarks/speed.py --device cuda --amp off bf16 fp16 --channels-last both

On CPU the inputs are reduced by default (--cpu-sizes) so the table finishes in minutes;
on a GPU the presets' reference sizes are used (572x572 UNet, 512x512 TinyUNet, 128^3 3D-UNet).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_unet.engine.benchmark import format_table, run_benchmark  # noqa: E402

CPU_SIZES = {"industrial": [256], "isbi2012": [572], "volume3d": [64]}


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
    parser.add_argument("--full-size", action="store_true",
                        help="use the presets' reference input sizes on CPU too")
    args = parser.parse_args(argv)

    import torch
    on_cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    layouts = {"off": [False], "on": [True], "both": [False, True]}[args.channels_last]
    rows = []
    for preset in args.presets:
        size = CPU_SIZES[preset] if on_cpu and not args.full_size else None
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
