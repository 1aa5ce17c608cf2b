"""Sliding-window prediction: napari_unet's engine against MONAI's sliding_window_inference.

    .venv/bin/python benchmarks/inference_vs_monai.py                  # speed and agreement
    .venv/bin/python benchmarks/inference_vs_monai.py --memory-test    # peak RSS, from disk

Speed: one process, the same model and weights (fixed seed), precision, tile size, overlap,
Gaussian blending (sigma 1/8 of the tile) and tiles per batch. A 2D model over a stack gives
MONAI the slices as its batch, so both batch tiles across slices. The runs alternate and repeat
and the table shows the fastest of each, because shared CPUs vary by several times from one
second to the next. Rows: ours as the product runs it (channels-last on), ours in NCHW, MONAI
with the model as given, and MONAI with the model and input converted to channels-last by the
caller (what a MONAI user can do by hand).

Memory: writes a ~2 GiB uint16 stack of 1024 x 1024 slices to a temporary folder, drops it from
the page cache, predicts it from its memory map into memory-mapped float32 and uint8 TIFs and
prints the process's peak resident memory. It runs alone, in its own process, so that
ru_maxrss measures nothing else.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_unet.engine.prediction.sliding_window import sliding_window_probabilities, tile_starts  # noqa: E402
from napari_unet.io import TifMemmapWriter, read_image  # noqa: E402
from napari_unet.models import build_model  # noqa: E402

GIB = 2 ** 30
MONAI, MONAI_CL = "MONAI (model as given)", "MONAI (caller makes it channels-last)"
OURS, OURS_NCHW = "napari_unet (channels-last)", "napari_unet (NCHW)"
# --tiny (the test suite: every row once, in seconds); without MONAI (the bench extra) the
# rows are ours alone, against ours in NCHW
TINY = ["--size", "2x64x64", "--tile", "64", "--batch", "2", "--base-channels", "4",
        "--repeats", "1", "--chunk", "2"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="30x512x512", help="ZxYxX of the stack (or volume)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--model", default="tiny_unet", choices=["tiny_unet", "unet", "unet3d"])
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--amp", default="off", choices=["off", "bf16"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each engine")
    parser.add_argument("--chunk", type=int, default=3,
                        help="slices per timed chunk (2D models); engines alternate per chunk")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-test", action="store_true",
                        help="only the out-of-core test: peak RSS predicting a volume from disk")
    parser.add_argument("--memory-gib", type=float, default=2.0, help="input size of the test")
    parser.add_argument("--memory-base-channels", type=int, default=2)
    parser.add_argument("--memory-tile", type=int, default=256)
    parser.add_argument("--memory-batch", type=int, default=16)
    parser.add_argument("--tmp", default=None, help="folder for the memory test's files")
    parser.add_argument("--tiny", action="store_true",
                        help="a check that it runs (the test suite): 2 small slices, a narrow "
                             "network, one repeat")
    args = parser.parse_args(argv)
    if args.tiny:  # the tiny settings win over the same options given with --tiny
        args = parser.parse_args([*(sys.argv[1:] if argv is None else argv), *TINY])
    return args


def make_model(name: str, base_channels: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    options = {"base_channels": base_channels, "in_channels": 1}
    if name == "unet":
        options["padding"] = "same"  # MONAI's windows are the model's output: a padded model
    return build_model(name, **options).eval()


def table(headers, rows) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


# -- speed ---------------------------------------------------------------------------------------

def monai_runner(model, stack: np.ndarray, args, channels_last: bool):
    """MONAI's sliding_window_inference on the same data: slices as its batch (2D model) or one
    volume (3D model); probabilities as ours returns them."""
    from monai.inferers import sliding_window_inference

    dims, classes = model.spatial_dims, model.num_classes
    inputs = torch.from_numpy(stack)[:, None] if dims == 2 else torch.from_numpy(stack)[None, None]
    if channels_last:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)

    def predictor(x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            logits = model(x).float()
        if classes == 1:
            return torch.sigmoid(logits)
        probs = torch.softmax(logits, dim=1)
        return probs[:, 1:2] if classes == 2 else probs

    def run():
        with torch.inference_mode():
            out = sliding_window_inference(inputs, (args.tile,) * dims, args.batch, predictor,
                                           overlap=args.overlap, mode="gaussian",
                                           sigma_scale=0.125)
        out = out.numpy()
        return out[:, 0] if dims == 2 else (out[0, 0] if classes <= 2 else out[0])
    return run


def ours_runner(model, stack: np.ndarray, args, channels_last: bool):
    model = copy.deepcopy(model)
    image = stack[None]
    return lambda: sliding_window_probabilities(model, image, tile_size=args.tile, overlap=args.overlap,
                                 batch_size=args.batch, blend="gaussian", sigma_scale=0.125,
                                 amp=args.amp, channels_last=channels_last)


def speed(args) -> None:
    shape = tuple(int(n) for n in args.size.lower().split("x"))
    model = make_model(args.model, args.base_channels, args.seed)
    stack = np.random.default_rng(args.seed).standard_normal(shape).astype(np.float32)
    # Slices are independent under a 2D model, so the stack is run in chunks of a few slices,
    # the engines taking turns chunk by chunk: both see the same moments of a shared CPU.
    step = args.chunk if model.spatial_dims == 2 else shape[0]
    chunks = [(z, min(z + step, shape[0])) for z in range(0, shape[0], step)]
    engines = {
        OURS: lambda s: ours_runner(model, s, args, True),
        OURS_NCHW: lambda s: ours_runner(model, s, args, False),
        MONAI: lambda s: monai_runner(model, s, args, False),
        MONAI_CL: lambda s: monai_runner(model, s, args, True),
    }
    if importlib.util.find_spec("monai") is None:
        print("MONAI is not installed (pip install -e '.[bench]'): ours alone, against NCHW")
        del engines[MONAI], engines[MONAI_CL]
    runs = {name: [make(stack[a:b]) for a, b in chunks] for name, make in engines.items()}
    for make in engines.values():  # warm-up: oneDNN picks and caches its kernels
        make(stack[:1] if model.spatial_dims == 2 else stack)()
    times = {name: np.zeros((args.repeats, len(chunks))) for name in runs}
    outputs = {name: [None] * len(chunks) for name in runs}
    for repeat in range(args.repeats):
        for c in range(len(chunks)):
            names = list(runs) if (repeat + c) % 2 == 0 else list(reversed(runs))
            for name in names:
                start = time.perf_counter()
                outputs[name][c] = runs[name][c]()
                times[name][repeat, c] = time.perf_counter() - start
    outputs = {name: np.concatenate(parts) for name, parts in outputs.items()}
    report_speed(args, model, shape, len(chunks), times, outputs)


def report_speed(args, model, shape, chunks, times, outputs) -> None:
    # best: the fastest run of every chunk, summed (what the engine does on a quiet CPU)
    best = {name: t.min(axis=0).sum() for name, t in times.items()}
    monai = MONAI if MONAI in times else OURS_NCHW  # the reference row
    short = "MONAI" if monai == MONAI else "NCHW"
    reference = outputs[monai]
    tiles = count_tiles(model, shape, args)
    rows = []
    for name, seconds in best.items():
        paired = np.median(times[monai] / times[name])
        rows.append([name, f"{seconds:.2f}",
                     " ".join(f"{t:.1f}" for t in times[name].sum(axis=1)),
                     f"{tiles / seconds:.1f}", f"{best[monai] / seconds:.2f}x",
                     f"{paired:.2f}x", f"{np.abs(outputs[name] - reference).max():.2e}"])
    print(f"\n{args.model} (base_channels={args.base_channels}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters), "
          f"{'x'.join(map(str, shape))} float32, tile {args.tile}, overlap {args.overlap}, "
          f"{args.batch} tiles per batch, Gaussian blend, amp={args.amp}, "
          f"{torch.get_num_threads()} CPU threads, {tiles} tiles per run, "
          f"{args.repeats} repeats of {chunks} interleaved chunks")
    print(table(["engine", "best s", "each repeat, s", "tiles/s", f"{short} / this (best)",
                 f"{short} / this (median paired)", f"max |diff| vs {short}"], rows))
    if MONAI_CL in best:
        print(f"\nMONAI / ours at equal settings: {best[MONAI] / best[OURS]:.2f}x; "
              f"MONAI with a channels-last model / ours: {best[MONAI_CL] / best[OURS]:.2f}x")


def count_tiles(model, shape, args) -> int:
    spatial = shape[-model.spatial_dims:]
    slices = shape[0] if model.spatial_dims == 2 else 1
    return slices * int(np.prod([len(tile_starts(n, args.tile, args.overlap)) for n in spatial]))


# -- memory --------------------------------------------------------------------------------------

def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # KiB on Linux


def write_stack(path: Path, slices: int, side: int, seed: int) -> None:
    """A uint16 stack written slice by slice (never whole in memory), then dropped from the page
    cache so that the prediction really reads it from disk."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 20000, side, dtype=np.float32)

    def pages():
        for z in range(slices):
            noise = rng.integers(0, 20000, (side, side), dtype=np.uint16)
            yield noise + (ramp[None, :] + z).astype(np.uint16)

    tifffile.imwrite(path, pages(), shape=(slices, side, side), dtype=np.uint16,
                     photometric="minisblack")
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def memory_test(args) -> None:
    side = 1024
    slices = max(1, round(args.memory_gib * GIB / (side * side * 2)))
    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        folder = Path(folder)
        start = time.perf_counter()
        write_stack(folder / "input.tif", slices, side, args.seed)
        written = time.perf_counter() - start
        rss_before = peak_rss_gib()
        image = read_image(folder / "input.tif", mmap=True)[None]
        model = make_model("tiny_unet", args.memory_base_channels, args.seed)

        def normalise(region):  # pointwise: statistics fixed beforehand, never the whole stack
            return region.astype(np.float32) * (2 / 40000) - 1

        options = dict(tile_size=args.memory_tile, overlap=args.overlap,
                       batch_size=args.memory_batch, preprocess=normalise, channels_last=True)
        spatial = image.shape[1:]
        start = time.perf_counter()
        with TifMemmapWriter(folder / "probabilities.tif", spatial, np.float32) as out, \
                TifMemmapWriter(folder / "labels.tif", spatial, np.uint8) as labels:
            sliding_window_probabilities(model, image, out=out, labels_out=labels, **options)
        seconds = time.perf_counter() - start
        rss_after = peak_rss_gib()
        error = check_slices(model, image, folder, options)
        outputs = sum((folder / f).stat().st_size for f in ("probabilities.tif", "labels.tif"))
        print(f"\nout-of-core prediction: tiny_unet base_channels={args.memory_base_channels}, "
              f"tile {args.memory_tile}, overlap {args.overlap}, {args.memory_batch} tiles per "
              f"batch, {torch.get_num_threads()} CPU threads (input written in {written:.0f} s)")
        print(table(
            ["input", "input GiB", "outputs GiB", "predict s", "Mpixel/s",
             "peak RSS before, GiB", "peak RSS, GiB", "< 1 GiB", "max |diff| of 3 slices"],
            [[f"{slices}x{side}x{side} uint16", f"{slices * side * side * 2 / GIB:.2f}",
              f"{outputs / GIB:.2f}", f"{seconds:.0f}",
              f"{slices * side * side / seconds / 1e6:.1f}", f"{rss_before:.2f}",
              f"{rss_after:.2f}", "yes" if rss_after < 1 else "NO", f"{error:.1e}"]]))


def check_slices(model, image, folder: Path, options) -> float:
    """The streamed result equals an in-memory prediction, on the first, a middle, the last
    slice."""
    probabilities = tifffile.memmap(folder / "probabilities.tif", mode="r")
    error = 0.0
    for z in (0, image.shape[1] // 2, image.shape[1] - 1):
        expected = sliding_window_probabilities(model, np.asarray(image[:, z]), **options)
        error = max(error, float(np.abs(probabilities[z] - expected).max()))
    return error


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.memory_test:
        memory_test(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
