"""`napari_unet train | evaluate | predict | benchmark`: the headless face of the engine.

Exit status: 0 done, 2 a user error (one line on stderr; a traceback only with --debug),
130 cancelled (SIGINT/SIGTERM: a checkpoint is saved first, `--resume` continues).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import typing

from napari_unet import __version__, builtin, engine, runs
from napari_unet.choices import (
    AUTO_PRESET,
    BACKENDS,
    OBJECT_MODES,
    PRESET_CHOICES,
    PRESET_NAMES,
    SAMPLES,
    TTA_MODES,
)
from napari_unet.cli_commands import (
    BLOCK,
    EXIT_CANCELLED,
    EXIT_USER_ERROR,
    MEMORY_LIMIT,
    check_train_args,
    cmd_benchmark,
    cmd_evaluate,
    cmd_export,
    cmd_predict,
    cmd_train,
    make_run_dir,
    planned_config,
    predict_into_run,
)
from napari_unet.cli_live import cmd_train_live
from napari_unet.cli_progress import print_failure
from napari_unet.errors import ConfigError, NapariUnetError
from napari_unet.options import FLAGGED, OPTIONS

# training options whose flags every command (or every command that reads data) takes
MASK_RULE_OPTIONS = ("foreground_value", "unlabeled", "background_value", "ignore_value")
SHARED_OPTIONS = ("amp", "device", *MASK_RULE_OPTIONS)
# what a cancelled command leaves (Ctrl-C, SIGTERM)
CANCELLED = {"train": "the last step's checkpoint is saved (continue with --resume)",
             "predict": "finished outputs are kept and none is half-written (over --workers, "
                        "--resume goes on from the blocks done)"}
TRAIN_UNSAVED = "no checkpoint was written, nothing is kept: start the run again"


# -- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari_unet",
        description="Train, evaluate and run UNet / TinyUNet / 3D-UNet segmentation models.")
    parser.add_argument("--version", action="version", version=f"napari_unet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub.add_parser("train", help="train a model (optionally evaluate and predict)"))
    _add_evaluate(sub.add_parser("evaluate", help="score a trained run on labelled data"))
    _add_predict(sub.add_parser("predict", help="segment an image, stack or volume"))
    _add_benchmark(sub.add_parser("benchmark", help="measure img/s, latency and TFLOP/s"))
    _add_export(sub.add_parser("export", help="write a bioimage.io package, ONNX or TorchScript"))
    return parser


def add_option_flags(p, options):
    """A flag for each training option row (napari_unet.options), None when not given so
    that the preset's value stays."""
    for option in options:
        p.add_argument(option.flag_name, dest=option.name, default=None,
                       help=option.help.replace("%", "%%") or None, **_flag_kind(option))


def _flag_kind(option) -> dict:
    kind = option.value_type
    if kind is bool:  # --compile sets True, --no-channels-last sets False
        return {"action": "store_false" if option.flag_name.startswith("--no-")
                else "store_true"}
    spec = {"metavar": option.metavar, "choices": option.choices}
    if typing.get_origin(kind) is list:  # sizes: one per axis, or one for all
        return {**spec, "type": typing.get_args(kind)[0], "nargs": "+"}
    return {**spec, "type": kind}


def _add_common(p):
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    add_option_flags(p, [OPTIONS["device"], OPTIONS["amp"]])


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
    add_option_flags(p, [OPTIONS[name] for name in MASK_RULE_OPTIONS])
    p.set_defaults(_data_required=required)


def _add_train(p):
    p.add_argument("--preset", default=AUTO_PRESET, choices=PRESET_CHOICES,
                   help="auto (the default): a recipe planned from your data, each choice "
                        "explained; or a named recipe of a reference data set")
    _add_data(p)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the run folder")
    p.add_argument("--config", metavar="YAML", help="options from a config.yaml")
    add_option_flags(p, [option for option in FLAGGED if option.name not in SHARED_OPTIONS])
    p.add_argument("--base-channels", type=int, default=None,
                   help="width of the first level (model size)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set lr_decay_steps=200")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--init-from", metavar="RUN|MODEL",
                   help="fine-tune from a run's weights or a built-in model "
                        f"({', '.join(builtin.names()) or 'none shipped'}); none: start from "
                        "nothing (auto proposes a built-in model when the data look like its)")
    p.add_argument("--evaluate", action="store_true", help="score the validation fold at the end")
    p.add_argument("--predict", metavar="PATH",
                   help=f"segment PATH at the end ({runs.PREDICTIONS}/); with --live also "
                        "every --predict-every seconds")
    p.add_argument("--live", action="store_true",
                   help="a live run: train until Ctrl-C (a normal end) or --minutes, re-reading "
                        "each --masks file when it changes on disk (unpainted pixels unknown: "
                        "--unlabeled ignore unless given)")
    p.add_argument("--predict-every", type=float, default=None, metavar="S",
                   help="--live: predict --predict every S seconds (default 5; longer where a "
                        "prediction takes over a third of the time) into the latest files "
                        f"{runs.PREDICTIONS}/NAME{runs.LABELS_SUFFIX} and "
                        f"NAME{runs.PROBABILITIES_SUFFIX}, replaced atomically, with a "
                        "ViewPredicted event (step, time, path) each time")
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
    p.add_argument("--run", required=True, metavar="RUN_DIR", action="append",
                   help="a run folder or checkpoint; several: their ensemble (as predict)")
    _add_data(p)
    p.add_argument("--fold", type=int, default=None, metavar="K",
                   help="score only fold K's validation part (the run's split)")
    p.add_argument("--tile-size", type=int, nargs="+", default=None)
    p.add_argument("--overlap", type=float, default=0.25)
    _add_instances(p, "also score objects (AP at IoU 0.5 and 0.5-0.95, merges, splits, Rand "
                      "and information scores) against the masks' instance ids, or their "
                      "connected components: ")
    _add_tta(p)
    _add_backend(p)
    _add_common(p)


def _add_instances(p, what):
    p.add_argument("--instances", nargs="?", const="auto", default=None, choices=OBJECT_MODES,
                   help=what + "auto (a bare --instances; the default of a model trained with "
                        "--instances boundary) = its seeded watershed, or the connected "
                        "components of another model's foreground; membranes = the cells "
                        "between an EM model's membranes; off = classes only")


def _add_model_source(p):
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN_DIR", action="append",
                        help="a run folder or checkpoint; several (--run A --run B, e.g. the "
                             "folds of one recipe): their averaged probabilities")
    source.add_argument("--model", metavar="MODEL", dest="run", action="append",
                        help="a built-in model ("
                             f"{', '.join(builtin.names()) or 'none shipped'}) or a bioimage.io "
                             "package exported by napari_unet export (several: their "
                             "ensemble, as --run)")


def _add_predict(p):
    _add_model_source(p)
    p.add_argument("--input", required=True, metavar="PATH",
                   help="an image, stack or volume (TIF, PNG, JPEG), a folder of them, or a "
                        "quoted glob such as 'scans/*.png'")
    p.add_argument("--output", required=True, metavar="PATH",
                   help="the labels TIF to write; for a folder or glob: the folder that gets "
                        f"NAME{runs.LABELS_SUFFIX} for each input")
    p.add_argument("--probabilities", metavar="PATH",
                   help="also write float32 probabilities (a folder for a folder or glob)")
    p.add_argument("--tile-size", type=int, nargs="+", default=None)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=4, help="tiles per batch")
    _add_tta(p)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--diameter", default=None, metavar="PX|auto|off",
                   help="the objects' size in pixels, for a model that knows its own (the "
                        "built-in ones): the image is predicted at the scale that matches; "
                        "auto (their default): measured from a first pass; off: as it is")
    _add_instances(p, "write objects (uint32, one id per object) instead of classes: ")
    big = p.add_argument_group("volumes bigger than a machine (the [zarr] extra; output NAME.zarr)")
    big.add_argument("--workers", type=int, default=None, metavar="N",
                     help="predict block by block on N local Dask worker processes")
    big.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="a running Dask scheduler instead (tcp://host:8786; dask-jobqueue "
                          "for SLURM); its workers must see the files")
    big.add_argument("--block", type=int, nargs="+", default=None, metavar="S",
                     help=f"block size (one size: every axis; default {BLOCK[0]})")
    big.add_argument("--memory-limit", default=None,
                     help=f"per local worker (default {MEMORY_LIMIT}; auto: Dask's share)")
    big.add_argument("--resume", action="store_true",
                     help="keep the blocks a cancelled run wrote; predict the others")
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
                        f"(default: the run's {runs.DATA}/{runs.SAMPLE_IMAGES}, else noise in the "
                        f"data's range)")
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
def _train_or_launch(args) -> int:
    """Train here, or start torchrun, whose workers each run this same command."""
    check_train_args(args)
    if args.live:
        return cmd_train_live(args, planned_config, make_run_dir, predict_into_run)
    if args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc}: use 1 process or more (one per GPU)")
    if args.ddp_timeout is not None:  # read by each worker (engine.training.distributed)
        os.environ[engine.TIMEOUT_VARIABLE] = str(args.ddp_timeout)
        engine.collective_timeout()  # a bad value: one line now, not one per worker
    several = args.nproc > 1 or args.nnodes is not None
    if args.nnodes is not None and args.rdzv_endpoint is None:
        raise ConfigError(f"--nnodes {args.nnodes} needs --rdzv-endpoint HOST:PORT (the "
                          f"machine that every node meets at)")
    for flag, value in (("--node-rank", args.node_rank), ("--rdzv-endpoint", args.rdzv_endpoint)):
        if value is not None and args.nnodes is None:
            raise ConfigError(f"{flag} is for training on several machines: add --nnodes N, "
                              f"or leave out {flag}")
    timed = args.minutes is not None or args.preset == AUTO_PRESET
    if several and args.steps is None and timed:
        raise ConfigError(f"--nproc {args.nproc} needs --steps: the time budget (--minutes, or "
                          f"--preset auto's default) is timed in one process")
    if several and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(args)
    return cmd_train(args)


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
    engine.check_process_count(args.nproc, args.device or "auto")
    # the machine's cores (or the budget a parent gave: the GUI keeps one) shared out
    env = dict(os.environ, OMP_NUM_THREADS=str(engine.threads_per_process(args.nproc)))
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
    commands = {"train": _train_or_launch, "evaluate": cmd_evaluate, "predict": cmd_predict,
                "benchmark": cmd_benchmark, "export": cmd_export}
    try:
        return commands[args.command](args)
    except NapariUnetError as exc:
        if args.debug:
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if getattr(args, "events", None) == "jsonl":
            print_failure(message)
        print(f"napari_unet: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"\nnapari_unet: cancelled; {_cancelled_text(args)}", file=sys.stderr)
        return EXIT_CANCELLED


def _cancelled_text(args) -> str:
    """What a cancelled command leaves, as it is: a run cancelled before its first checkpoint
    (while its steps were timed, say) has none, and its folder is gone (cmd_train)."""
    if args.command == "train" and not runs.RunFolder(args.out, writer=False).last.exists():
        return TRAIN_UNSAVED
    return CANCELLED.get(args.command, "nothing was written")


if __name__ == "__main__":
    sys.exit(main())
