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
import time
from pathlib import Path

from napari_unet.choices import AMP_MODES, BACKENDS, DEVICES, PRESET_NAMES, SAMPLES, TTA_MODES

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
    _add_export(sub.add_parser("export", help="write a bioimage.io package, ONNX or TorchScript"))
    return parser


def _add_common(p):
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p.add_argument("--device", choices=DEVICES, default=None,
                   help="auto: a CUDA GPU, else an Apple GPU (mps), else the CPU")
    p.add_argument("--amp", choices=AMP_MODES, default=None,
                   help="mixed precision (bf16 works on CPU too)")


def _add_data(p, required=True):
    group = p.add_argument_group("data (one of)")
    group.add_argument("--data", metavar="DIR",
                       help="a data folder: ISBI 2012, DAGM 2007, BraTS, or images/ + masks/")
    group.add_argument("--images", metavar="PATH",
                       help="an image file (TIF stack), a folder, or a quoted glob of images")
    group.add_argument("--masks", metavar="PATH",
                       help="the matching mask file, or the folder of masks named as the images")
    group.add_argument("--sample", choices=SAMPLES,
                       help="built-in synthetic data (no download)")
    p.add_argument("--foreground-value", type=int, default=None, metavar="V",
                   help="mask value of the object of interest (ISBI's membrane is 0)")
    p.set_defaults(_data_required=required)


def _add_train(p):
    p.add_argument("--preset", required=True, choices=PRESET_NAMES)
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
    p.add_argument("--ddp-timeout", type=float, default=None, metavar="MINUTES",
                   help="how long a process waits on its peers (default 10)")
    _add_common(p)


def _add_tta(p):
    p.add_argument("--tta", nargs="?", const="mirror", default="off", choices=TTA_MODES,
                   help="test-time augmentation: mirror (all flips; what a bare --tta means) or "
                        "dihedral (flips and quarter turns: twice the passes of mirror)")


def _add_backend(p):
    p.add_argument("--backend", choices=BACKENDS,
                   default="auto",
                   help="who runs the network on the CPU: auto (the fastest installed: "
                        "OpenVINO, then ONNX Runtime for fp32, then torch), or one by name "
                        "(ONNX Runtime and OpenVINO come with the [cpu] extra)")


def _add_evaluate(p):
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a run folder or checkpoint")
    _add_data(p)
    p.add_argument("--fold", type=int, default=None, metavar="K",
                   help="score only fold K's validation part (the run's split)")
    p.add_argument("--tile-size", type=int, nargs="+", default=None)
    p.add_argument("--overlap", type=float, default=0.25)
    _add_tta(p)
    _add_backend(p)
    _add_common(p)


def _add_model_source(p):
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN_DIR", help="a run folder or checkpoint")
    source.add_argument("--model", metavar="PACKAGE.zip", dest="run",
                        help="a bioimage.io package exported by napari_unet export")


def _add_predict(p):
    _add_model_source(p)
    p.add_argument("--input", required=True, metavar="PATH",
                   help="an image, stack or volume (TIF, PNG, JPEG), a folder of them, or a "
                        "quoted glob such as 'scans/*.png'")
    p.add_argument("--output", required=True, metavar="PATH",
                   help="the labels TIF to write; for a folder or glob: the folder that gets "
                        "NAME_labels.tif for each input")
    p.add_argument("--probabilities", metavar="PATH",
                   help="also write float32 probabilities (a folder for a folder or glob)")
    p.add_argument("--tile-size", type=int, nargs="+", default=None)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=4, help="tiles per batch")
    _add_tta(p)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--events", choices=["jsonl"], default=None)
    _add_backend(p)
    _add_common(p)


def _add_export(p):
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a run folder or checkpoint")
    p.add_argument("--format", required=True, choices=["bioimageio", "onnx", "torchscript"])
    p.add_argument("--output", required=True, metavar="PATH",
                   help="the file to write (a .zip for bioimageio)")
    p.add_argument("--test-image", metavar="PATH",
                   help="bioimageio: the image whose middle becomes the package's test input "
                        "(default: the run's data/images.tif, else noise in the data's range)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def _add_benchmark(p):
    p.add_argument("--preset", required=True, choices=PRESET_NAMES)
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
    if args.ddp_timeout is not None:  # read by each worker (engine.distributed)
        from napari_unet.engine.training.distributed import TIMEOUT_VARIABLE, collective_timeout
        os.environ[TIMEOUT_VARIABLE] = str(args.ddp_timeout)
        collective_timeout()  # a bad value: one line now, not one per worker
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
    from napari_unet.engine import predict_file, predict_files
    from napari_unet.io import is_glob

    printer = _printer(args.events)
    options = dict(tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size,
                   tta=args.tta, amp=args.amp or "bf16", device=args.device or "auto",
                   threshold=args.threshold, overwrite=args.overwrite, backend=args.backend)
    if Path(args.input).is_dir() or is_glob(args.input):
        return _predict_many(args, predict_files(args.run, args.input, args.output,
                                                 probabilities_folder=args.probabilities,
                                                 **options), printer)
    events = predict_file(args.run, args.input, args.output, probabilities=args.probabilities,
                          **options)
    _drive(events, printer)
    print(f"wrote {args.output}" + (f" and {args.probabilities}" if args.probabilities else ""),
          file=sys.stderr)
    return 0


def _predict_many(args, events, printer) -> int:
    """Every file that could be read is written; exit 2 with one line per skipped file."""
    from napari_unet.engine.events import FileDone

    files = []
    _drive(events, lambda event: (files.append(event) if isinstance(event, FileDone)
                                  and event.done else None, printer(event)))
    failed = [event for event in files if event.error]
    print(f"wrote {len(files) - len(failed)} of {len(files)} file(s) to {args.output}",
          file=sys.stderr)
    for event in failed:
        print(f"napari_unet: error: skipped {event.path}: {event.error}", file=sys.stderr)
    return EXIT_USER_ERROR if failed else 0


def cmd_export(args) -> int:
    from napari_unet.engine.export.formats import export_model
    from napari_unet.io import read_image

    test_image = args.test_image
    if test_image is None and (Path(args.run) / "data" / "images.tif").is_file():
        test_image = Path(args.run) / "data" / "images.tif"
    image = read_image(test_image) if test_image is not None else None
    path = export_model(args.run, args.format, args.output, image=image,
                        overwrite=args.overwrite)
    print(f"wrote {path}", file=sys.stderr)
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
                        f"or --sample {{{','.join(SAMPLES)}}}")
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
                       amp=args.amp or checkpoint.config.amp, device=args.device or "auto",
                       backend=getattr(args, "backend", "torch"))
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
    from napari_unet.engine.events import Finished

    finished = None
    try:
        for event in events:
            printer(event)
            if isinstance(event, Finished):
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
    """Progress bars on stderr (tqdm: one line that redraws on a terminal, plain lines in a
    log file), other events as lines written above the bar."""

    def __init__(self):
        self.bar = None
        self.files = False  # a many-file prediction: one bar over the files, tiles as postfix

    def __call__(self, event):
        from napari_unet.engine.events import (
            FileDone,
            Finished,
            Message,
            Progress,
            Started,
            TilesDone,
            Validation,
        )

        if not _is_main_process():
            return
        match event:
            case Progress():
                self._advance("steps", event.step, event.total,
                              f"loss {event.loss:.4f} lr {event.lr:.2e} {event.img_s:.1f} img/s")
            case FileDone():
                self.files = event.done < event.total
                self._advance("files", event.done, event.total)
            case TilesDone() if self.files:
                self.bar.set_postfix_str(f"tiles {event.done}/{event.total}")
            case TilesDone():
                self._advance("tiles", event.done, event.total)
            case Started():
                self._write(f"training on {event.device}: {event.train_samples} training and "
                            f"{event.val_samples} validation samples, global batch "
                            f"{event.global_batch_size} ({event.world_size} process(es)), steps "
                            f"{event.start_step}->{event.total_steps}, run {event.run_dir}")
            case Validation():
                per_class = ", ".join(f"{d:.4f}" for d in event.dice_per_class)
                self._write(f"validation at step {event.step}: dice {event.dice:.4f} "
                            f"(per class {per_class}){' best' if event.best else ''}")
            case Message():
                self._write(f"{event.level}: {event.text}")
            case Finished():
                self._close()
                self._write(f"finished at step {event.step}: best dice {event.best_dice:.4f}, "
                            f"checkpoint {event.path}")

    def _advance(self, unit, done, total, postfix=""):
        from tqdm import tqdm

        if self.bar is None or self.key != (unit, total):
            self._close()
            self.key, self.done = (unit, total), 0
            # a log file gets a plain line per tenth instead of a bar redrawn with \r
            self.bar = tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True,
                            mininterval=0.5, disable=not sys.stderr.isatty())
            self.start, self.logged = time.monotonic(), 0
        self.bar.update(done - self.done)
        self.done = done
        if postfix:
            self.bar.set_postfix_str(postfix, refresh=False)
        if self.bar.disable and (done >= total or done - self.logged >= max(1, total // 10)):
            self.logged = done
            meter = tqdm.format_meter(done, total, time.monotonic() - self.start, unit=unit,
                                      postfix=postfix or None)
            self._write(meter)
        if done >= total:
            self._close()

    def _write(self, text):
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)

    def _close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
    from napari_unet.engine.training.distributed import check_process_count, threads_per_process
    check_process_count(args.nproc, args.device or "auto")
    # the machine's cores (or the budget a parent gave: the GUI keeps one) shared out
    env = dict(os.environ, OMP_NUM_THREADS=str(threads_per_process(args.nproc)))
    process = subprocess.Popen(command, env=env)
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
    # Python leaves SIGINT ignored in a process that starts with it ignored (any child of a
    # background job of a non-interactive shell: `make test &`, CI runners), and then Cancel
    # never reaches the run: SIGINT is always Ctrl-C here. SIGTERM (schedulers' pre-emption)
    # too; the torchrun launcher forwards either to its workers as SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    from napari_unet.errors import NapariUnetError

    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
                "benchmark": cmd_benchmark, "export": cmd_export}
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
