"""What each ``napari_unet`` subcommand does, once its arguments are parsed (cli.py).

The engine is reached through its public API only (``from napari_unet import engine``: lazy,
so reading the arguments costs no torch); run-file names come from runs.py.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from napari_unet import builtin, engine, runs
from napari_unet.choices import AUTO_PRESET, SAMPLES, preset_options
from napari_unet.cli_live import check_live_args
from napari_unet.cli_progress import drive, is_main_process, printer
from napari_unet.errors import ConfigError, DataError
from napari_unet.io import atomic_write, input_files, is_glob, read_image, write_tif
from napari_unet.masks import rule_of
from napari_unet.options import FLAGGED
from napari_unet.zarr_files import is_zarr

EXIT_USER_ERROR = 2
EXIT_CANCELLED = 130
BLOCK, MEMORY_LIMIT = [128], "2GiB"  # predict --workers' defaults


def check_train_args(args) -> None:
    """What `train`'s arguments ask that cannot work, one line each, before any data is read
    or anything written (and before torchrun starts its workers)."""
    run = runs.RunFolder(args.out, writer=False)
    if run.path.exists() and not run.path.is_dir():
        raise ConfigError(f"--out {run.path} is a file: give a folder for the run")
    for flag in ("data", "images", "masks"):
        source = getattr(args, flag)
        if source and not is_glob(source) and Path(source).is_dir() \
                and Path(source).resolve() == run.path.resolve():
            raise ConfigError(f"--out {args.out} is the --{flag} folder: the run's files would "
                              f"mix with the data; choose another --out folder")
    if args.resume and args.init_from:
        raise ConfigError("--resume continues the run in --out with its own weights, "
                          "--init-from starts a new run from another's: give one of them")
    if args.init_from and args.init_from != "none" and not Path(args.init_from).exists() \
            and not builtin.builtin_name(args.init_from):
        raise ConfigError(f"--init-from {args.init_from}: no such run folder, checkpoint or "
                          f"built-in model (built-in: {', '.join(builtin.names()) or 'none'}; "
                          f"none: start from nothing)")
    if args.resume and not run.last.is_file():
        raise ConfigError(f"--resume: {run.path} holds no checkpoint to continue "
                          f"({runs.CHECKPOINTS}/{runs.LAST}): leave out --resume to start "
                          f"a new run there")
    if not args.resume and run.last.exists():
        raise ConfigError(f"{run.path} already holds a run: pass --resume to continue it, "
                          f"or choose another --out folder")
    check_live_args(args)
    if args.minutes is not None and args.steps is None and not args.resume and not args.live:
        engine.check_budget(args.minutes)  # what the timing of the first steps takes
    sample = run.path / runs.DATA / runs.SAMPLE_IMAGES  # --sample writes it: predict it after
    if args.predict and not (args.sample and Path(args.predict).resolve() == sample.resolve()):
        if is_glob(args.predict) or (Path(args.predict).is_dir() and not is_zarr(args.predict)):
            raise DataError(f"--predict {args.predict}: give one image (folders and globs: "
                            f"napari_unet predict after training)")
        try:
            input_files(args.predict)
        except DataError as exc:
            raise DataError(f"--predict: {str(exc).splitlines()[0]}") from None
    if args.evaluate and args.fold is None and not _fold_in_config(args):
        raise ConfigError("--evaluate scores the validation fold, and this run has none: add "
                          "--fold K (e.g. --fold 0), or score other data later with "
                          "napari_unet evaluate")


def _fold_in_config(args) -> bool:
    """Whether --set or --config gives a validation fold."""
    given = dict(_parse_set(item) for item in args.set)
    if "fold" in given:
        return given["fold"] is not None
    saved = Path(args.out) / runs.CONFIG
    source = args.config or (str(saved) if args.resume and saved.is_file() else None)
    return source is not None and engine.TrainConfig.from_yaml(Path(source)).fold is not None


def cmd_train(args) -> int:
    """Train in this process (one of a torchrun group, or alone), then evaluate and predict.
    A run folder this command made is removed again when it fails or is cancelled before
    its first checkpoint: nothing is left behind that --resume could not use."""
    started = time.monotonic()
    run_dir = Path(args.out)
    made = not run_dir.exists()
    try:
        config, dataset = planned_config(args, started)
        make_run_dir(run_dir)
        if args.sample and is_main_process():
            _save_sample(dataset, run_dir, args.resume)
        timed = config.minutes is not None and args.steps is None and not args.resume
        events = engine.train(config, dataset, run_dir=run_dir, resume=args.resume,
                              deadline=engine.time_limit(config, started) if timed else None)
        finished = drive(events, printer(args.events))
    except BaseException:
        if made and is_main_process() and not runs.RunFolder(run_dir).last.exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if finished is None or not is_main_process():
        return 0
    if args.evaluate:
        checkpoint = engine.load_checkpoint(run_dir)
        _report_evaluation(args, checkpoint, dataset, config.fold, run_dir)
    if args.predict:
        predict_into_run(args, run_dir)
    return 0


def cmd_evaluate(args) -> int:
    if len(args.run) > 1 and args.fold is not None:
        raise ConfigError("--fold scores one run's validation part: an ensemble of runs "
                          "(several --run) is scored on data none of them trained on, "
                          "without --fold")
    checkpoint = engine.load_models(args.run)  # several: their ensemble
    config = checkpoint.config
    rule = {**rule_of(config), **rule_of(args)}
    _check_background_flag(args, rule.get("unlabeled"))
    dataset = _load_data(args, config.spatial_dims, rule)
    run_dir = Path(args.run[0]) if len(args.run) == 1 and Path(args.run[0]).is_dir() \
        and not builtin.is_inside(args.run[0]) else None  # a built-in model is not written
    for note in dataset.notes:
        print(f"warning: {note}", file=sys.stderr)
    _report_evaluation(args, checkpoint, dataset, args.fold, run_dir)
    return 0


def cmd_predict(args) -> int:
    show = printer(args.events)
    options = dict(tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size,
                   tta=args.tta, amp=args.amp or "auto", device=args.device or "auto",
                   threshold=args.threshold, overwrite=args.overwrite, backend=args.backend,
                   instances=args.instances)
    if args.diameter is not None:
        if args.workers is not None or args.scheduler is not None:
            raise ConfigError("--diameter: predict without --workers (the workers predict "
                              "at the image's own scale)")
        options["diameter"] = engine.check_diameter(args.diameter)
    runs = args.run  # several: an ensemble (engine.load_models)
    args.run = runs[0] if len(runs) == 1 else runs
    if args.workers is not None or args.scheduler is not None:
        if len(runs) > 1:
            raise ConfigError("over --workers, predict with one --run (an ensemble of "
                              f"{len(runs)} runs: without --workers)")
        return _predict_on_workers(args, options, show)
    _check_no_worker_options(args)
    if (Path(args.input).is_dir() and not is_zarr(args.input)) or is_glob(args.input):
        return _predict_many(args, engine.predict_files(
            args.run, args.input, args.output, probabilities_folder=args.probabilities,
            **options), show)
    events = engine.predict_file(args.run, args.input, args.output,
                                 probabilities=args.probabilities, **options)
    drive(events, show)
    print(f"wrote {args.output}" + (f" and {args.probabilities}" if args.probabilities else ""),
          file=sys.stderr)
    return 0


def _check_no_worker_options(args) -> None:
    """--resume, --block and --memory-limit only mean something over --workers."""
    if args.resume:
        raise ConfigError("--resume goes on with the blocks a cancelled --workers (or "
                          "--scheduler) prediction kept; without them a prediction starts "
                          "from scratch (nothing is ever half-written): leave out --resume, "
                          "or add --workers N")
    for flag, value in (("--block", args.block), ("--memory-limit", args.memory_limit)):
        if value is not None:
            raise ConfigError(f"{flag} is for prediction over --workers (block by block): "
                              f"add --workers N, or leave out {flag}")


def _predict_on_workers(args, options, show) -> int:
    """predict --workers / --scheduler: block by block over Dask (engine.predict_volume)."""
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers takes a number of worker processes >= 1")
    if args.workers is not None and args.scheduler is not None:
        raise ConfigError("--workers starts local workers, --scheduler uses those of a running "
                          "scheduler: give one of them")
    if args.scheduler is not None and args.memory_limit is not None:
        raise ConfigError("--memory-limit holds local workers (--workers); a --scheduler's "
                          "workers have the limits they were started with: leave it out")
    if args.probabilities is not None:
        raise ConfigError("over --workers, NAME.zarr holds the probabilities with the labels: "
                          "leave out --probabilities")
    if args.backend not in ("auto", "torch"):
        raise ConfigError("over --workers, predict with the torch backend (other backends: "
                          "without --workers)")
    events = engine.predict_volume(
        args.run, args.input, args.output, workers=args.workers or 1, scheduler=args.scheduler,
        block=args.block or BLOCK, memory_limit=args.memory_limit or MEMORY_LIMIT,
        resume=args.resume,
        overwrite=args.overwrite, tile_size=args.tile_size, overlap=args.overlap,
        tta=args.tta, amp=args.amp or "auto", device=args.device or "cpu",
        batch_size=args.batch_size, instances=args.instances, threshold=args.threshold)
    drive(events, show)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _predict_many(args, events, show) -> int:
    """Every file that could be read is written; exit 2 with one line per skipped file."""
    files = []
    drive(events, lambda event: (files.append(event) if isinstance(event, engine.FileDone)
                                 and event.done else None, show(event)))
    failed = [event for event in files if event.error]
    print(f"wrote {len(files) - len(failed)} of {len(files)} file(s) to {args.output}",
          file=sys.stderr)
    for event in failed:
        print(f"napari_unet: error: skipped {event.path}: {event.error}", file=sys.stderr)
    return EXIT_USER_ERROR if failed else 0


def cmd_export(args) -> int:
    if args.test_image is not None and args.format != "bioimageio":
        raise ConfigError(f"--test-image is the test input of a bioimage.io package: drop it "
                          f"for --format {args.format}, or use --format bioimageio")
    test_image = args.test_image
    sample = Path(args.run) / runs.DATA / runs.SAMPLE_IMAGES
    if test_image is None and sample.is_file():
        test_image = sample
    image = read_image(test_image) if test_image is not None else None
    path = engine.export_model(args.run, args.format, args.output, image=image,
                               overwrite=args.overwrite)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_benchmark(args) -> int:
    note = engine.resolve_amp(engine.resolve_device(args.device or "auto"), args.amp or "auto")[1]
    if note:
        print(f"warning: {note}", file=sys.stderr)
    rows = engine.run_benchmark(
        args.preset, mode=args.mode, batch_size=args.batch_size, size=args.size,
        base_channels=args.base_channels, warmup=args.warmup, steps=args.steps,
        amp=args.amp or "auto", compile=args.compile, channels_last=args.channels_last,
        device=args.device or "auto")
    print(engine.format_table(rows))
    return 0


# -- the training config -------------------------------------------------------------------------
def planned_config(args, started: float):
    """The config and the data. --preset auto: the data first, then the plan made from them
    (printed with its reasons); --minutes (auto's default: DEFAULT_MINUTES) then sets the
    steps from a timing of the first ones, unless --steps is given. A resumed auto or timed
    run keeps the plan and the steps in its config.yaml."""
    saved = Path(args.out) / runs.CONFIG
    timed = args.minutes is not None or args.preset == AUTO_PRESET
    if args.resume and timed and saved.is_file() and args.config is None:
        args.config = str(saved)
    if args.preset == AUTO_PRESET and args.config is None:
        # the plan follows the data's dimensions, unless --set spatial_dims=N says them
        dims = dict(_parse_set(item) for item in args.set).get("spatial_dims", "auto")
        dataset = _load_data(args, dims, rule_of(args))
        config = train_config(args, engine.plan_for_data(dataset, args.device or "auto",
                                                         init_from=_start_of(args),
                                                         live=getattr(args, "live", False)))
        if config.minutes is None and args.steps is None:
            config = config.replace(minutes=engine.DEFAULT_MINUTES)
    else:
        config = train_config(args)
        dataset = _load_data(args, config.spatial_dims, rule_of(config))
    _check_background_flag(args, config.unlabeled)
    per_step = 0.0
    if args.minutes is not None and args.steps is not None:
        printer(args.events)(engine.Message(
            "warning", f"--steps {args.steps} and --minutes {args.minutes:g} given: the run "
                       f"trains {args.steps} steps, however long they take"))
    if config.minutes is not None and args.steps is None and not args.resume \
            and not getattr(args, "live", False):  # a live run's --minutes is its budget
        config, per_step = engine.fit_to_minutes(config, dataset, started)
    if per_step or (config.plan and not args.resume):
        printer(args.events)(engine.Planned(
            lines=tuple(engine.plan_lines(config)), steps=config.steps if per_step else 0,
            seconds_per_step=per_step, minutes=config.minutes or 0.0))
    return config, dataset


def _start_of(args):
    """--init-from; where the user sizes the network (--base-channels, --set model...), no
    built-in start is proposed: its network is fixed."""
    given = dict(_parse_set(item) for item in args.set)
    if args.init_from is None and (args.base_channels is not None or
                                   {"model", "model_options"} & set(given)):
        return "none"
    return args.init_from


def train_config(args, plan=None):
    """The preset (or the plan), then --config's file, then the option flags, then each
    --set KEY=VALUE."""
    overrides = engine.TrainConfig.from_yaml(Path(args.config)).to_dict() if args.config else {}
    overrides.pop("preset", None)
    overrides.update({option.name: getattr(args, option.name) for option in FLAGGED
                      if getattr(args, option.name) is not None})
    for item in args.set:
        key, value = _parse_set(item)
        overrides[key] = value
    start = plan.values if plan is not None else \
        preset_options(args.preset) if args.preset != AUTO_PRESET else {}
    if args.base_channels is not None:  # a model option, not a config field
        options = dict(overrides.get("model_options") or start.get("model_options", {}))
        options["base_channels"] = args.base_channels
        overrides["model_options"] = options
    if plan is not None:
        return plan.config(**overrides)
    if args.init_from is not None:  # a named preset fine-tunes as it is
        overrides["init_from"] = engine.start_name(args.init_from)
    return engine.preset_config(args.preset, **overrides)


def _check_background_flag(args, unlabeled):
    """--background-value names the painted background of --unlabeled ignore: alone it would
    change nothing."""
    if getattr(args, "background_value", None) is not None and unlabeled != "ignore":
        raise ConfigError(f"--background-value {args.background_value} is the painted "
                          "background of masks whose 0 is unknown: add --unlabeled ignore, or "
                          "drop it (with --unlabeled background, 0 is the background)")


def _parse_set(item):
    if "=" not in item:
        raise ConfigError(f"--set {item!r} must look like KEY=VALUE, e.g. --set lr=0.001")
    key, value = item.split("=", 1)
    try:
        return key.strip().replace("-", "_"), yaml.safe_load(value)
    except yaml.YAMLError:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None


# -- data and the run folder ---------------------------------------------------------------------
def _load_data(args, spatial_dims, rule):
    """The data of --data / --images --masks / --sample, masks read under `rule` (the mask
    rule's settings: masks.rule_of)."""
    chosen = [name for name in ("data", "images", "sample") if getattr(args, name)]
    if len(chosen) != 1:
        raise DataError("give exactly one data source: --data DIR, --images P --masks P, "
                        f"or --sample {{{','.join(SAMPLES)}}}")
    if args.sample:
        return engine.sample_dataset(args.sample)
    if args.images and not args.masks:
        raise DataError("--images needs --masks (the labels for those images)")
    # a live run from a model (a built-in one, a run) may start before anything is painted
    unpainted_ok = getattr(args, "live", False) and (
        args.resume or args.init_from not in (None, "none"))
    dataset = engine.load_dataset(args.data, images=args.images, masks=args.masks,
                                  spatial_dims=spatial_dims, unpainted_ok=unpainted_ok, **rule)
    classes = dataset.num_classes
    if getattr(args, "instances", None) == "merge" and classes > 2:
        # instance masks of few ids, which the rule reads as classes: merged as asked
        dataset = dataset.merged()
        dataset.notes.append(f"--instances merge: the mask values 1..{classes - 1} are read "
                             "as object ids, every object as the foreground (not as "
                             f"{classes} classes)")
    return dataset


def make_run_dir(run_dir: Path):
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the run folder {run_dir} ({exc.strerror}): "
                          f"choose a writable --out folder") from None


def _save_sample(dataset, run_dir: Path, resume: bool):
    """Keep the synthetic data beside the run, so the demo can predict and view it."""
    data_dir = run_dir / runs.DATA
    if resume and (data_dir / runs.SAMPLE_IMAGES).exists():
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    images = np.stack([np.asarray(i) for i in dataset.images])
    masks = np.stack([np.asarray(m) for m in dataset.masks])
    if images.shape[1] == 1:
        images = images[:, 0]
    if dataset.spatial_dims == 3 and len(images) == 1:
        images, masks = images[0], masks[0]
    write_tif(data_dir / runs.SAMPLE_IMAGES, images, overwrite=True)
    write_tif(data_dir / runs.SAMPLE_MASKS, masks.astype("uint8"), overwrite=True)


# -- after training ------------------------------------------------------------------------------
def _report_evaluation(args, checkpoint, dataset, fold, run_dir):
    metrics = engine.evaluate(
        checkpoint, dataset, fold=fold, tile_size=getattr(args, "tile_size", None),
        overlap=getattr(args, "overlap", 0.25), tta=getattr(args, "tta", False),
        amp=args.amp or _inference_amp(checkpoint.config.amp), device=args.device or "auto",
        backend=getattr(args, "backend", "torch"), instances=getattr(args, "instances", None))
    line = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()
                    if not isinstance(v, (list, dict)))
    per_class = " ".join(f"dice_class{i}={_fmt(v)}"
                         for i, v in enumerate(metrics["dice_per_class"]))
    for note in metrics.get("notes", ()):
        print(f"warning: {note}", file=sys.stderr)
    print(f"evaluation: {line} {per_class}")
    if "objects" in metrics:
        print("objects: " + " ".join(f"{k}={_fmt(v)}" for k, v in metrics["objects"].items()
                                     if not isinstance(v, (list, dict))))
    if run_dir is not None:
        with atomic_write(run_dir / runs.EVALUATION, overwrite=True) as tmp:
            Path(tmp).write_text(json.dumps(metrics, indent=2))


def _inference_amp(trained: str) -> str:
    """A model trained in full precision is scored so; one trained in mixed precision in what
    this machine computes natively (auto), not in an emulated bf16."""
    return "off" if trained == "off" else "auto"


def predict_into_run(args, run_dir: Path):
    labels, probabilities = runs.prediction_paths(run_dir, args.predict)
    events = engine.predict_file(run_dir, Path(args.predict), labels,
                                 probabilities=probabilities, device=args.device or "auto",
                                 amp=args.amp or "auto", overwrite=True)
    drive(events, printer(args.events))
    print(f"prediction: {labels} {probabilities}", file=sys.stderr)


def _fmt(value):
    return f"{value:.4f}" if isinstance(value, float) else str(value)
