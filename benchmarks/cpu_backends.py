"""CPU backends side by side: torch (fp32, bf16; channels-last in 2D), ONNX Runtime (fp32) and
OpenVINO (fp32, bf16) on the three model families, the network alone, one batch, best of N.

    .venv/bin/python benchmarks/cpu_backends.py                  # the table for RESULTS.md
    .venv/bin/python benchmarks/cpu_backends.py --models tiny_unet --repeats 3
    .venv/bin/python benchmarks/cpu_backends.py --models tiny_unet unet --repeats 2 \
        --end-to-end ../shared/data/isbi2012/train-volume.tif    # whole stack, through the CLI

The exported graphs are made the way ``napari_unet predict --backend`` makes them
(``engine.backends``: torch.onnx.export, ONNX Runtime's CPU provider, OpenVINO compiled for the
window's static shape). Each cell is the best of ``--repeats`` calls after one warm-up, in ms
(the columns take turns call by call, so that the load of a shared machine hits them alike);
``x`` is the speed-up over the faster torch column; ``diff`` the largest absolute difference of
the logits to torch fp32. Seeded weights (speed does not depend on training). Needs the
``cpu`` extra (``pip install 'napari-unet-torch[cpu]'``); a missing runtime gets "-".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from napari_unet.engine.benchmark import time_calls  # noqa: E402
from napari_unet.engine.prediction.backends import ExportedModel, available  # noqa: E402
from napari_unet.engine.runtime import autocast, memory_format  # noqa: E402
from napari_unet.models import build_model  # noqa: E402

# name: (label, model options, input shape): the presets' reference windows
CASES = {
    "tiny_unet": ("TinyUNet base 32, 4 x 512^2", {"base_channels": 32}, (4, 1, 512, 512)),
    "unet": ("UNet 572 (31 M), 1 x 572^2", {}, (1, 1, 572, 572)),
    "unet3d": ("3D-UNet, 1 x 4 x 128^3", {"in_channels": 4, "num_classes": 4},
               (1, 4, 128, 128, 128)),
}
# --tiny (the test suite: every backend once, in seconds): narrow networks, small inputs
TINY_CASES = {
    "tiny_unet": ("TinyUNet base 4, 1 x 64^2", {"base_channels": 4}, (1, 1, 64, 64)),
    "unet": ("UNet base 4, 1 x 188^2", {"base_channels": 4}, (1, 1, 188, 188)),
    "unet3d": ("3D-UNet base 4, 1 x 4 x 64^3", {"in_channels": 4, "num_classes": 4,
                                                 "base_channels": 4}, (1, 4, 64, 64, 64)),
}
COLUMNS = (("torch", "off"), ("torch", "bf16"), ("onnxruntime", "off"), ("openvino", "off"),
           ("openvino", "bf16"))
CPU = torch.device("cpu")


def _runner(model, x, backend: str, amp: str):
    if backend == "torch":
        layout = memory_format(model.spatial_dims, channels_last=True)
        net = model.to(memory_format=layout)
        x = x.contiguous(memory_format=layout)

        def run():
            with torch.inference_mode(), autocast(CPU, amp):
                return net(x).float()
        return run
    exported = ExportedModel(model, backend, amp)
    return lambda: exported(x)


def measure(name: str, repeats: int, cases=CASES) -> dict:
    """One row. The columns take turns, one call each per round, best of ``repeats`` rounds:
    on a shared machine a burst of load then hits every column alike."""
    label, options, shape = cases[name]
    torch.manual_seed(0)
    model = build_model(name, **options).eval()
    x = torch.randn(shape)
    with torch.inference_mode():
        reference = model(x).float()
    runs, diffs = {}, {}
    for backend, amp in COLUMNS:
        key = f"{backend} {'bf16' if amp == 'bf16' else 'fp32'}"
        if available(backend):
            runs[key] = _runner(model, x, backend, amp)
            diffs[key] = float((runs[key]() - reference).abs().max())  # also the warm-up
    best = {key: float("inf") for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            best[key] = min(best[key], min(time_calls(run, CPU, warmup=0, steps=1)))
    for key in runs:
        print(f"  {name} {key}: {best[key] * 1000:.0f} ms (diff {diffs[key]:.1e})",
              file=sys.stderr, flush=True)
    return {"model": label, **{f"{b} {'bf16' if a == 'bf16' else 'fp32'}": None
                               for b, a in COLUMNS},
            **{key: (best[key] * 1000, diffs[key]) for key in runs}}


def format_rows(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k != "model"]
    lines = ["| model, input | " + " | ".join(keys) + " |",
             "| --- |" + " --- |" * len(keys)]
    for row in rows:
        torch_best = min(row[k][0] for k in keys if k.startswith("torch") and row[k])
        cells = []
        for k in keys:
            if row[k] is None:
                cells.append("-")
                continue
            ms, diff = row[k]
            cells.append(f"{ms:.0f} ms ({torch_best / ms:.2f}x, diff {diff:.0e})")
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def end_to_end(stack: Path, repeats: int, families, backends) -> str:
    """Wall-clock seconds of `napari_unet predict` on a whole stack, per backend (seeded runs
    written like a trained one; model load, export, tiling, blending and writing included)."""
    import subprocess
    import tempfile
    import time

    from napari_unet.engine import preset_config
    from napari_unet.engine.checkpoint import save_checkpoint
    from napari_unet.engine.training.setup import make_model, window_sizes
    from napari_unet.runs import RunFolder

    presets = {"tiny_unet": ("industrial", {"base_channels": 32}, 1),
               "unet": ("isbi2012", {}, 2)}
    lines = ["| model, stack | " + " | ".join(f"{b} {a}" for b, a in backends) + " |",
             "| --- |" + " --- |" * len(backends)]
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            preset, options, classes = presets[family]
            config = preset_config(preset, model_options=options)
            torch.manual_seed(0)
            model = make_model(config, 1, classes)
            window, output = window_sizes(model, config.patch_size)
            run = Path(tmp) / family
            save_checkpoint(RunFolder(run).best, model=model, config=config,
                            norm_stats={"mode": "minus_one_one", "low": [0.0], "high": [255.0],
                                        "mean": [], "std": []}, step=0, best_dice=0.0,
                            data_info={"num_classes": 2, "in_channels": 1, "spatial_dims": 2,
                                       "input_size": list(window),
                                       "output_size": list(output)})
            best = {column: float("inf") for column in backends}
            for _ in range(repeats):
                for backend, amp in backends:
                    start = time.perf_counter()
                    subprocess.run([sys.executable, "-m", "napari_unet.cli", "predict", "--run",
                                    str(run), "--input", str(stack), "--output",
                                    str(Path(tmp) / "labels.tif"), "--overwrite", "--device",
                                    "cpu", "--amp", amp, "--backend", backend], check=True,
                                   capture_output=True)
                    best[(backend, amp)] = min(best[(backend, amp)],
                                               time.perf_counter() - start)
                    print(f"  {family} {backend} {amp}: {best[(backend, amp)]:.1f} s",
                          file=sys.stderr, flush=True)
            base = best[backends[0]]
            lines.append(f"| {CASES[family][0].split(',')[0]}, {stack.name} | " + " | ".join(
                f"{best[c]:.1f} s ({base / best[c]:.2f}x)" for c in backends) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--repeats", type=int, default=5, help="best of N timed calls")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--end-to-end", metavar="STACK", type=Path, default=None,
                        help="instead: time `napari_unet predict` on this whole stack, torch "
                             "bf16 (today's default) against the backends")
    parser.add_argument("--tiny", action="store_true",
                        help="a check that every backend runs (the test suite): narrow "
                             "networks on small inputs, one call each")
    args = parser.parse_args(argv)
    if args.end_to_end is not None:
        columns = [("torch", "bf16"), ("openvino", "bf16"), ("openvino", "off")]
        families = [m for m in args.models if m != "unet3d"]
        print(end_to_end(args.end_to_end, args.repeats, families, columns))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; best of "
          f"{args.repeats}", file=sys.stderr)
    repeats, cases = (1, TINY_CASES) if args.tiny else (args.repeats, CASES)
    rows = [measure(name, repeats, cases) for name in args.models]
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
