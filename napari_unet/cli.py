"""`napari_unet train | evaluate | predict | benchmark`: the headless face of the engine.

Exit status: 0 done, 2 a user error (one line on stderr; a traceback only with --debug),
130 cancelled (SIGINT/SIGTERM: a checkpoint is saved first, `--resume` continues).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

EXIT_USER_ERROR = 2
EXIT_CANCELLED = 130


# -- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari_unet",
        description="Train, evaluate and run UNet / TinyUNet / 3D-UNet segmentation models.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub.add_parser("train", help="train a model (optionally evaluate and predict)"))
    _add_evaluate(sub.add_parser("evaluate", help="score a trained run on labelled data"))
    _add_predict(sub.add_parser("predict", help="segment an image, stack or volume"))
    _add_benchmark(sub.add_parser("benchmark", help="measure img/s, latency and TFLOP/s"))
    return parser


def _add_common(p):
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--amp", choices=["bf16", "fp16", "off"], default=None,
                   help="mixed precision (bf16 works on CPU too)")


def _add_data(p, required=True):
    group = p.add_argument_group("data (one of)")
    group.add_argument("--data", metavar="DIR",
                       help="a data folder: ISBI 2012, DAGM 2007, BraTS, or images/ + masks/")
    group.add_argument("--images", metavar="PATH", help="an image file (TIF stack) or folder")
    group.add_argument("--masks", metavar="PATH", help="the matching mask file or folder")
    group.add_argument("--sample", choices=["dagm", "em", "blobs3d"],
                       help="built-in synthetic data (no download)")
    p.add_argument("--foreground-value", type=int, default=None, metavar="V",
                   help="mask value of the object of interest (ISBI's membrane is 0)")
    p.set_defaults(_data_required=required)


def _add_train(p):
    p.add_argument("--preset", required=True, choices=["industrial", "isbi2012", "volume3d"])
    _add_data(p)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the run folder")
    p.add_argument("--config", metavar="YAML", help="options from a config.yaml")
    p.add_argument("--fold", type=int, default=None, metavar="K")
    p.add_argument("--folds", type=int, default=None, metavar="N")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, metavar="B", help="per process")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--patch-size", type=int, nargs="+", default=None, metavar="S")
    p.add_argument("--base-channels", type=int, default=None,
                   help="width of the first level (model size)")
    p.add_argument("--loss", default=None)
    p.add_argument("--val-every", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set lr_decay_steps=200")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--init-from", metavar="RUN", help="fine-tune from another run's weights")
    p.add_argument("--evaluate", action="store_true", help="score the validation fold at the end")
    p.add_argument("--predict", metavar="PATH", help="segment PATH at the end (predictions/)")
    p.add_argument("--events", choices=["jsonl"], default=None,
                   help="print machine-readable JSON events instead of a progress bar")
    p.add_argument("--nproc", type=int, default=1, help="processes (GPUs) via torchrun")
    p.add_argument("--nnodes", default=None, help="torchrun --nnodes (several machines)")
    p.add_argument("--node-rank", type=int, default=None)
    p.add_argument("--rdzv-endpoint", default=None, metavar="HOST:PORT")
    _add_common(p)


def _add_tta(p):
    # the engine's inference.TTA_MODES, spelt out so that building the parser imports no torch
    p.add_argument("--tta", nargs="?", const="mirror", default="off",
                   choices=("off", "mirror", "dihedral"),
                   help="test-time augmentation: mirror (all flips; what a bare --tta means) or "
                        "dihedral (flips and quarter turns: twice the passes of mirror)")


def _add_evaluate(p):
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a run folder or checkpoint")
    _add_data(p)
    p.add_argument("--fold", type=int, default=None, metavar="K",
                   help="score only fold K's validation part (the run's split)")
    p.add_argument("--tile-size", type=int, nargs="+", default=None)
    p.add_argument("--overlap", type=float, default=0.25)
    _add_tta(p)
    _add_common(p)


def _add_predict(p):
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a run folder or checkpoint")
    p.add_argument("--input", required=True, metavar="PATH", help="TIF image, stack or volume")
    p.add_argument("--output", required=True, metavar="PATH", help="labels TIF to write")
    p.add_argument("--probabilities", metavar="PATH", help="also write float32 probabilities")
    p.add_argument("--tile-size", type=int, nargs="+", default=None)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=4, help="tiles per batch")
    _add_tta(p)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--events", choices=["jsonl"], default=None)
    _add_common(p)


def _add_benchmark(p):
    p.add_argument("--preset", required=True, choices=["industrial", "isbi2012", "volume3d"])
    p.add_argument("--mode", choices=["train", "predict", "both"], default="both")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--size", type=int, nargs="+", default=None, help="input size (pixels)")
    p.add_argument("--base-channels", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=True)
    _add_common(p)


# -- commands ------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from napari_unet.engine import load_checkpoint, train
    from napari_unet.errors import ConfigError

    if args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc}: use 1 process or more (one per GPU)")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(args)
    config = _train_config(args)
    dataset = _load_data(args, config.spatial_dims, config.foreground_value)
    run_dir = Path(args.out)
    _make_run_dir(run_dir)
    if args.sample and _is_main_process():
        _save_sample(dataset, run_dir, args.resume)
    printer = _printer(args.events)
    events = train(config, dataset, run_dir=run_dir, resume=args.resume,
                   init_from=args.init_from)
    finished = _drive(events, printer)
    if finished is None or not _is_main_process():
        return 0
    if args.evaluate:
        checkpoint = load_checkpoint(run_dir)
        _report_evaluation(args, checkpoint, dataset, config.fold, run_dir)
    if args.predict:
        _predict_into_run(args, run_dir)
    return 0


def cmd_evaluate(args) -> int:
    from napari_unet.engine import load_checkpoint

    checkpoint = load_checkpoint(args.run)
    config = checkpoint.config
    dataset = _load_data(args, config.spatial_dims, _foreground(args, config))
    run_dir = Path(args.run) if Path(args.run).is_dir() else None
    _report_evaluation(args, checkpoint, dataset, args.fold, run_dir)
    return 0


def cmd_predict(args) -> int:
    from napari_unet.engine import predict_file

    printer = _printer(args.events)
    events = predict_file(args.run, args.input, args.output, probabilities=args.probabilities,
                          tile_size=args.tile_size, overlap=args.overlap,
                          batch_size=args.batch_size, tta=args.tta, amp=args.amp or "bf16",
                          device=args.device or "auto", threshold=args.threshold,
                          overwrite=args.overwrite)
    _drive(events, printer)
    print(f"wrote {args.output}" + (f" and {args.probabilities}" if args.probabilities else ""),
          file=sys.stderr)
    return 0


def cmd_benchmark(args) -> int:
    from napari_unet.engine.benchmark import format_table, run_benchmark

    rows = run_benchmark(args.preset, mode=args.mode, batch_size=args.batch_size,
                         size=args.size, base_channels=args.base_channels, warmup=args.warmup,
                         steps=args.steps, amp=args.amp or "off", compile=args.compile,
                         channels_last=args.channels_last, device=args.device or "auto")
    print(format_table(rows))
    return 0


# -- helpers -------------------------------------------------------------------------------------
def _train_config(args):
    from napari_unet.engine import TrainConfig, preset_config

    base = TrainConfig.from_yaml(args.config).to_dict() if args.config else {}
    base.pop("preset", None)
    overrides = dict(base)
    overrides.update({k: v for k, v in dict(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, amp=args.amp,
        compile=args.compile, channels_last=args.channels_last, device=args.device,
        seed=args.seed, fold=args.fold, folds=args.folds, patch_size=args.patch_size,
        loss=args.loss, val_every=args.val_every, checkpoint_every=args.checkpoint_every,
        foreground_value=args.foreground_value).items() if v is not None})
    for item in args.set:
        key, value = _parse_set(item)
        overrides[key] = value
    if args.base_channels is not None:
        options = dict(overrides.get("model_options") or _preset_options(args.preset))
        options["base_channels"] = args.base_channels
        overrides["model_options"] = options
    return preset_config(args.preset, **overrides)


def _preset_options(preset):
    from napari_unet.engine import PRESETS
    return PRESETS[preset].get("model_options", {})


def _parse_set(item):
    import yaml
    from napari_unet.errors import ConfigError

    if "=" not in item:
        raise ConfigError(f"--set {item!r} must look like KEY=VALUE, e.g. --set lr=0.001")
    key, value = item.split("=", 1)
    try:
        return key.strip().replace("-", "_"), yaml.safe_load(value)
    except yaml.YAMLError:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None


def _foreground(args, config):
    return args.foreground_value if args.foreground_value is not None else config.foreground_value


def _load_data(args, spatial_dims, foreground_value):
    from napari_unet.engine import load_dataset, sample_dataset
    from napari_unet.errors import DataError

    chosen = [name for name in ("data", "images", "sample") if getattr(args, name)]
    if len(chosen) != 1:
        raise DataError("give exactly one data source: --data DIR, --images P --masks P, "
                        "or --sample {dagm,em,blobs3d}")
    if args.sample:
        return sample_dataset(args.sample)
    if args.images and not args.masks:
        raise DataError("--images needs --masks (the labels for those images)")
    return load_dataset(args.data, images=args.images, masks=args.masks,
                        foreground_value=foreground_value, spatial_dims=spatial_dims)


def _make_run_dir(run_dir: Path):
    from napari_unet.errors import ConfigError

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the run folder {run_dir} ({exc.strerror}): "
                          f"choose a writable --out folder") from None


def _save_sample(dataset, run_dir: Path, resume: bool):
    """Keep the synthetic data beside the run, so the demo can predict and view it."""
    import numpy as np
    from napari_unet.io import write_tif

    data_dir = run_dir / "data"
    if resume and (data_dir / "images.tif").exists():
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    images = np.stack([np.asarray(i) for i in dataset.images])
    masks = np.stack([np.asarray(m) for m in dataset.masks])
    if images.shape[1] == 1:
        images = images[:, 0]
    if dataset.spatial_dims == 3 and len(images) == 1:
        images, masks = images[0], masks[0]
    write_tif(data_dir / "images.tif", images, overwrite=True)
    write_tif(data_dir / "masks.tif", masks.astype("uint8"), overwrite=True)


def _report_evaluation(args, checkpoint, dataset, fold, run_dir):
    from napari_unet.engine import evaluate
    from napari_unet.io import atomic_write

    metrics = evaluate(checkpoint, dataset, fold=fold, tile_size=getattr(args, "tile_size", None),
                       overlap=getattr(args, "overlap", 0.25), tta=getattr(args, "tta", False),
                       amp=args.amp or checkpoint.config.amp, device=args.device or "auto")
    line = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items() if not isinstance(v, list))
    per_class = " ".join(f"dice_class{i}={_fmt(v)}" for i, v in enumerate(metrics["dice_per_class"]))
    print(f"evaluation: {line} {per_class}")
    if run_dir is not None:
        with atomic_write(run_dir / "evaluation.json", overwrite=True) as tmp:
            Path(tmp).write_text(json.dumps(metrics, indent=2))


def _predict_into_run(args, run_dir: Path):
    from napari_unet.engine import predict_file

    source = Path(args.predict)
    stem = source.name.split(".")[0]
    labels = run_dir / "predictions" / f"{stem}_labels.tif"
    probabilities = run_dir / "predictions" / f"{stem}_probabilities.tif"
    events = predict_file(run_dir, source, labels, probabilities=probabilities,
                          device=args.device or "auto", amp=args.amp or "bf16", overwrite=True)
    _drive(events, _printer(args.events))
    print(f"prediction: {labels} {probabilities}", file=sys.stderr)


def _fmt(value):
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


def _drive(events, printer):
    """Run an event generator to its end, printing; close it (= cancel) on interruption."""
    finished = None
    try:
        for event in events:
            printer(event)
            if type(event).__name__ == "Finished":
                finished = event
    finally:
        events.close()
    return finished


def _printer(mode):
    from napari_unet.engine.events import to_json

    if mode == "jsonl":
        def emit(event):
            if _is_main_process():
                print(to_json(event), flush=True)
        return emit
    return _HumanPrinter()


class _HumanPrinter:
    """A one-line progress bar on stderr, other events as lines."""

    def __call__(self, event):
        if not _is_main_process():
            return
        name = type(event).__name__
        if name == "Progress":
            width = 30
            filled = int(width * event.step / max(1, event.total))
            bar = "#" * filled + "-" * (width - filled)
            sys.stderr.write(f"\r[{bar}] {event.step}/{event.total} loss {event.loss:.4f} "
                             f"lr {event.lr:.2e} {event.img_s:.1f} img/s")
            sys.stderr.flush()
        elif name == "TilesDone":
            sys.stderr.write(f"\rtiles {event.done}/{event.total}")
            if event.done == event.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif name == "Started":
            print(f"training on {event.device}: {event.train_samples} training and "
                  f"{event.val_samples} validation samples, global batch "
                  f"{event.global_batch_size} ({event.world_size} process(es)), steps "
                  f"{event.start_step}->{event.total_steps}, run {event.run_dir}", file=sys.stderr)
        elif name == "Validation":
            per_class = ", ".join(f"{d:.4f}" for d in event.dice_per_class)
            print(f"\nvalidation at step {event.step}: dice {event.dice:.4f} "
                  f"(per class {per_class}){' best' if event.best else ''}", file=sys.stderr)
        elif name == "Message":
            print(f"\n{event.level}: {event.text}", file=sys.stderr)
        elif name == "Finished":
            print(f"\nfinished at step {event.step}: best dice {event.best_dice:.4f}, "
                  f"checkpoint {event.path}", file=sys.stderr)


def _launch_torchrun(args) -> int:
    """Re-run this same command under torchrun; DDP then comes from its environment."""
    argv = _strip_launch_args(sys.argv[1:])
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}"]
    if args.nnodes:
        command += [f"--nnodes={args.nnodes}", f"--node_rank={args.node_rank or 0}",
                    f"--rdzv_endpoint={args.rdzv_endpoint}", "--rdzv_backend=c10d"]
    else:
        command += ["--standalone"]
    command += ["-m", "napari_unet.cli", *argv]
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:  # torchrun forwards the signal; the workers save a checkpoint
        process.send_signal(signal.SIGINT)
        process.wait()
        return EXIT_CANCELLED


def _strip_launch_args(argv):
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        name = item.split("=", 1)[0]
        if name in ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint"):
            skip = "=" not in item
            continue
        out.append(item)
    return out


def _version():
    from napari_unet import __version__
    return f"napari_unet {__version__}"


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        pass  # the parent only launches torchrun; SIGINT is forwarded
    else:
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # schedulers' pre-emption
    from napari_unet.errors import NapariUnetError

    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
                "benchmark": cmd_benchmark}
    try:
        return commands[args.command](args)
    except NapariUnetError as exc:
        if args.debug:
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if getattr(args, "events", None) == "jsonl" and _is_main_process():
            from napari_unet.engine.events import Failed, to_json
            print(to_json(Failed(error=message)), flush=True)
        print(f"napari_unet: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\nnapari_unet: cancelled; the last step's checkpoint is saved "
              "(continue with --resume)", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
