"""The training input pipeline: host capacity per batch, and real training against the model.

One command, one table, then one machine-readable line per preset:

    .venv/bin/python benchmarks/pipeline.py                  # CPU: the CPU recipes end to end
    .venv/bin/python benchmarks/pipeline.py --device cuda    # GPU: the presets as they are, bf16

- host capacity: the host's work for one batch alone, on ONE host thread, best of --repeats:
  cutting the windows in their stored dtype into (pinned, on a GPU) memory and starting the
  copy. Code from before issue 12 has no pipeline module; there the host also normalised and
  augmented every batch, and that is what is timed for it (the "host work" column says which).
- end to end: real ``train()`` steps (data, augmentation, loss reads, logging; no validation,
  no checkpoint) against the model-only training step of the same model, batch and precision
  (``napari_unet benchmark``'s step on a fixed batch), and their ratio; both the median step
  (a shared machine's other jobs slow some steps down: the median ignores them).
- step overhead (issue 35): a model so small that the step itself costs little, trained
  through ``train()`` (sampler, normalisation, loss reads, events, logging, schedule) against
  a bare PyTorch loop (the same model, optimizer, loss and precision on one batch kept on the
  device), in steps per second. The two take turns, ``--overhead-chunk`` steps each, for
  ``--overhead-rounds`` rounds, so that a shared machine's load falls on both alike; the table
  gives each loop's median chunk and the median of the paired ratios. Augmentation is off (a
  bare loop has none): the row measures the loop, not the work it is given.
  ``--overhead-only`` runs this row alone (no data needed).

Data: industrial on DAGM 2007 class 1 (512x512, batch 16), isbi2012 on ISBI 2012 (572x572 in,
batch 8), volume3d on four channels of BraTS 2021 (128^3, batch 2); ``--data-root`` (default
../shared/data). On a CPU the end-to-end rows use the CPU recipes of benchmarks/accuracy.py
(smaller crops and models, bf16) so that they finish in minutes; the host rows always use the
presets' full windows and batches.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from napari_unet.engine import Progress, load_dataset, preset_config, train  # noqa: E402
from napari_unet.engine.benchmark import _train_step_fn, time_calls  # noqa: E402
from napari_unet.engine.data.normalization import compute_norm_stats  # noqa: E402
from napari_unet.engine.data.patches import PatchSampler  # noqa: E402
from napari_unet.engine.runtime import memory_format, resolve_amp, resolve_device  # noqa: E402
from napari_unet.engine.training.setup import make_augmenter, make_model, window_sizes  # noqa: E402

DATA = {"industrial": "dagm2007_class1", "isbi2012": "isbi2012", "volume3d": "brats2021"}
RECIPES = {"industrial": "dagm2007", "isbi2012": "isbi2012", "volume3d": "brats2013"}
FOREGROUND = {"isbi2012": 0}
# --tiny (the test suite: every row once, in seconds): small windows and narrow networks for
# the end-to-end rows, one batch and one step everywhere
TINY_PATCH = {"industrial": [64, 64], "isbi2012": [64, 64], "volume3d": [32, 32, 32]}
TINY = ["--host-batches", "1", "--repeats", "1", "--warmup", "1", "--steps", "1",
        "--overhead-chunk", "10", "--overhead-rounds", "2"]


def load(preset: str, data_root: Path):
    return load_dataset(data_root / DATA[preset], foreground_value=FOREGROUND.get(preset))


def end_to_end_config(preset: str, on_cpu: bool, amp: str, compile_: bool, steps: int,
                      tiny: bool = False):
    overrides = dict(fold=None, steps=steps, val_every=10**9, checkpoint_every=10**9,
                     foreground_value=FOREGROUND.get(preset), seed=0)
    if on_cpu:
        from accuracy import CPU_RECIPES
        recipe = {k: v for k, v in CPU_RECIPES[RECIPES[preset]].items()
                  if not k.startswith("val_")}
        overrides.update(recipe, device="cpu")
    else:
        overrides.update(amp=amp, compile=compile_, device="cuda")
    if tiny:
        options = dict(overrides.get("model_options") or {}, base_channels=4)
        overrides.update(patch_size=TINY_PATCH[preset], batch_size=1, model_options=options)
        if on_cpu:  # the same arithmetic on every CPU: the recipes' auto is bf16 only where
            # native, and a CI CPU (AMX, we think) once turned the 4-channel 3D row's loss to
            # nan at step 2: oneDNN's bf16 kernels for such narrow layers; not seen here
            overrides.update(amp="off")
    return preset_config(preset, **overrides)


# -- host capacity ---------------------------------------------------------------------------
def host_work(config, dataset, device):
    """(what is timed, a function doing the host's work for the batch of a step)."""
    torch.manual_seed(0)
    model = make_model(config, dataset.in_channels, max(2, dataset.num_classes))
    input_size, output_size = window_sizes(model, config.patch_size)
    norm = compute_norm_stats(dataset.images, config.normalization)
    sampler = PatchSampler(dataset.images, dataset.masks, input_size, output_size,
                           config.batch_size, norm, seed=0,
                           foreground_oversample=config.foreground_oversample)
    try:
        from napari_unet.engine.training.pipeline import cut_batch
    except ImportError:  # before issue 12: the host cut, normalised and augmented each batch
        augment = make_augmenter(config)

        def before(step):
            x, y = sampler.batch(step)
            augment(x, y, torch.Generator().manual_seed(step))
        return "cut+normalise+augment", before

    pin, previous = device.type == "cuda", []

    def after(step):  # as engine.pipeline does: pinned memory is cached, CPU batches reused
        x, y = cut_batch(sampler, step, pin=pin, out=None if pin else (tuple(previous) or None))
        if pin:
            x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        else:
            previous[:] = [x, y]
    return "cut+pin+copy" if pin else "cut", after


def host_capacity(preset, dataset, device, batches, repeats):
    config = preset_config(preset, device=device.type)
    what, work = host_work(config, dataset, device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        work(0)  # first touch of the files, foreground coordinates
        best = math.inf
        for repeat in range(repeats):
            start = time.perf_counter()
            for step in range(1 + repeat * batches, 1 + (repeat + 1) * batches):
                work(step)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return what, batches * config.batch_size / best


# -- end to end --------------------------------------------------------------------------------
def end_to_end(config, dataset, warmup, steps):
    """(img/s of the median step after the warm-up, the last step's loss). Steps are timed
    between Progress events; where losses are read every few steps (a GPU) the steps between
    two reads are timed together, so the median is over reads."""
    times, last_loss = {}, math.nan
    with tempfile.TemporaryDirectory() as run_dir:
        for event in train(config.replace(steps=warmup + steps), dataset, run_dir=run_dir):
            if isinstance(event, Progress):
                times[event.step] = time.perf_counter()
                last_loss = event.loss
    every = 1 if config.device == "cpu" else config.log_every  # warm-up: a multiple of it
    reads = list(range(warmup, warmup + steps + 1, every))
    per_step = [(times[b] - times[a]) / (b - a) for a, b in zip(reads, reads[1:])]
    return config.batch_size / float(np.median(per_step)), last_loss


def model_only(config, dataset, warmup, steps):
    device = resolve_device(config.device)
    config = config.replace(amp=resolve_amp(device, config.amp)[0])  # as train() runs it
    num_classes = max(2, dataset.num_classes)
    torch.manual_seed(0)
    model = make_model(config, dataset.in_channels, num_classes)
    input_size, output_size = window_sizes(model, config.patch_size)
    fmt = memory_format(config.spatial_dims, config.channels_last)
    model.to(device=device, memory_format=fmt)
    net = torch.compile(model) if config.compile else model
    x = torch.randn(config.batch_size, dataset.in_channels, *input_size, device=device)
    y = torch.randint(0, num_classes, (config.batch_size, *output_size), device=device)
    step = _train_step_fn(config, net, model, num_classes, x.contiguous(memory_format=fmt), y,
                          device)
    latencies = time_calls(step, device, warmup, steps)
    return config.batch_size / float(np.median(latencies))


# -- step overhead (issue 35) ---------------------------------------------------------------------
# the CPU ISBI recipe's network and optimisation (accuracy.py), made tiny: padded UNet base 8,
# 3 levels, batch norm, Adam, Dice + CE; one 64x64 image, batch 2; no augmentation
OVERHEAD_SIZE, OVERHEAD_BATCH = 64, 2


def overhead_config(device: str, amp: str, steps: int):
    return preset_config(
        "industrial", model="unet",
        model_options={"padding": "same", "base_channels": 8, "depth": 3, "norm": "batch",
                       "dropout": 0.0},
        patch_size=[OVERHEAD_SIZE] * 2, batch_size=OVERHEAD_BATCH, steps=steps,
        optimizer="adam", lr=1e-3, weight_decay=1e-5, lr_schedule="cosine", warmup_steps=0,
        loss="dice_ce", normalization="minus_one_one", amp=amp, device=device, fold=None,
        val_every=10**9, checkpoint_every=10**9, seed=0, hflip=0.0, vflip=0.0, rot90=[0],
        crop_resize=None, brightness=0.0, contrast=0.0)


class BareLoop:
    """The same model, optimizer, loss and precision as `config`'s run, one batch of the
    image kept on the device: what a training step costs with no loop around it."""

    def __init__(self, config, image, mask):
        from napari_unet.engine.runtime import autocast
        from napari_unet.engine.training.losses import build_loss
        from napari_unet.engine.training.setup import make_optimizer

        self.device = resolve_device(config.device)
        self.config = config.replace(amp=resolve_amp(self.device, config.amp)[0])
        self.autocast = autocast
        torch.manual_seed(config.seed)
        fmt = memory_format(2, config.channels_last)
        self.model = make_model(config, 1, 2).to(self.device, memory_format=fmt).train()
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.loss_fn = build_loss(config.loss, 2, None)
        x = torch.from_numpy(np.stack([image[None]] * config.batch_size)).float() / 127.5 - 1
        self.x = x.to(self.device).contiguous(memory_format=fmt)
        self.y = torch.from_numpy(np.stack([mask] * config.batch_size)).long().to(self.device)

    def run(self, steps: int):
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast(self.device, self.config.amp):
                logits = self.model(self.x)
            self.loss_fn(logits.float(), self.y).backward()
            self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def step_overhead(device: str, amp: str, warmup: int, chunk: int, rounds: int) -> dict:
    """Steps/s of train() and of the bare loop, taking turns `chunk` steps at a time after
    `warmup` steps each (on a GPU both a multiple of log_every, where train() reads the loss
    and so waits for the device): the median chunk of each, the median paired ratio."""
    from napari_unet.sample_data import em_like

    images, masks = em_like(n=1, size=OVERHEAD_SIZE, seed=0)
    config = overhead_config(device, amp, warmup + chunk * rounds)
    bare = BareLoop(config, images[0], masks[0])
    train_rates, bare_rates = [], []
    with tempfile.TemporaryDirectory() as run_dir:
        events = train(config, [images[0]], [masks[0]], run_dir=run_dir)

        def until(step):
            for event in events:
                if isinstance(event, Progress) and event.step == step:
                    return time.perf_counter()
            raise RuntimeError(f"train() ended before step {step}")
        try:
            until(warmup)
            bare.run(warmup)
            for done in range(warmup + chunk, warmup + chunk * rounds + 1, chunk):
                start = time.perf_counter()
                train_rates.append(chunk / (until(done) - start))
                start = time.perf_counter()
                bare.run(chunk)
                bare_rates.append(chunk / (time.perf_counter() - start))
        finally:
            events.close()
    ratios = [t / b for t, b in zip(train_rates, bare_rates)]
    return {"device": str(bare.device), "amp": bare.config.amp,
            "train_steps_s": float(np.median(train_rates)),
            "bare_steps_s": float(np.median(bare_rates)),
            "train_best": max(train_rates), "bare_best": max(bare_rates),
            "ratio": float(np.median(ratios)), "rounds": rounds, "chunk": chunk}


def overhead_table(row: dict) -> str:
    what = (f"UNet base 8, 3 levels, batch norm, Adam, Dice+CE; 1 image {OVERHEAD_SIZE}x"
            f"{OVERHEAD_SIZE}, batch {OVERHEAD_BATCH}, amp {row['amp']}, {row['device']}, "
            f"{torch.get_num_threads()} threads; {row['rounds']} rounds of {row['chunk']} "
            f"steps each, taking turns")
    rows = [("train()", f"{row['train_steps_s']:.1f}", f"{row['train_best']:.1f}",
             f"{row['ratio']:.3f}", f"{row['train_best'] / row['bare_best']:.3f}"),
            ("bare loop", f"{row['bare_steps_s']:.1f}", f"{row['bare_best']:.1f}", "1.000",
             "1.000")]
    header = ("loop", "steps/s (median chunk)", "steps/s (best chunk)",
              "x bare loop (median paired)", "x bare loop (best)")
    lines = [header] + rows
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([f"step overhead: {what}", *text])


def overhead_line(row: dict) -> str:
    return (f"overhead: device={row['device']} amp={row['amp']} "
            f"train_steps_s={row['train_steps_s']:.2f} bare_steps_s={row['bare_steps_s']:.2f} "
            f"ratio={row['ratio']:.3f} best_ratio={row['train_best'] / row['bare_best']:.3f}")


# -- table ---------------------------------------------------------------------------------------
def format_rows(rows) -> str:
    header = ("preset", "host work", "host img/s (1 thread)", "e2e input", "batch", "amp",
              "end-to-end img/s", "model-only img/s", "ratio", "last loss")
    lines = [header] + [tuple(str(cell) for cell in row) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(DATA), choices=list(DATA))
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--host-batches", type=int, default=20,
                        help="batches per host-capacity measurement")
    parser.add_argument("--repeats", type=int, default=5, help="host capacity: best of N")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed training steps (default 2 on CPU, 10 on a GPU)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed training steps (default 6 on CPU, 30 on a GPU)")
    parser.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "off"],
                        help="precision of the GPU rows (the CPU recipes fix their own)")
    parser.add_argument("--compile", action="store_true", help="torch.compile (GPU rows)")
    parser.add_argument("--host-only", action="store_true", help="skip the end-to-end rows")
    parser.add_argument("--overhead-only", action="store_true",
                        help="only the step-overhead row (tiny model, train() vs a bare loop)")
    parser.add_argument("--overhead-chunk", type=int, default=None,
                        help="steps per turn of the overhead row (default 20)")
    parser.add_argument("--overhead-rounds", type=int, default=None,
                        help="turns of each loop in the overhead row (default 15 on a CPU, "
                             "10 on a GPU)")
    parser.add_argument("--tiny", action="store_true",
                        help="a check that every row runs (the test suite): one batch, one "
                             "step, small windows and narrow networks end to end")
    args = parser.parse_args(argv)
    if args.tiny:  # the tiny settings win over the same options given with --tiny
        args = parser.parse_args([*(sys.argv[1:] if argv is None else argv), *TINY])

    device = resolve_device(args.device)
    on_cpu = device.type == "cpu"
    warmup = args.warmup if args.warmup is not None else (2 if on_cpu else 10)
    steps = args.steps if args.steps is not None else (6 if on_cpu else 30)
    rows, lines = [], []
    for preset in [] if args.overhead_only else args.presets:
        dataset = load(preset, args.data_root)
        what, host_img_s = host_capacity(preset, dataset, device, args.host_batches,
                                          args.repeats)
        e2e = model = ratio = loss = math.nan
        size, batch, amp = "-", preset_config(preset).batch_size, "-"
        if not args.host_only:
            config = end_to_end_config(preset, on_cpu, args.amp, args.compile, warmup + steps,
                                       args.tiny)
            e2e, loss = end_to_end(config, dataset, warmup, steps)
            model = model_only(config, dataset, warmup, steps)
            ratio = e2e / model
            size, batch = "x".join(map(str, config.patch_size)), config.batch_size
            amp = resolve_amp(device, config.amp)[0]  # the CPU recipes' auto: bf16 if native
        rows.append((preset, what, f"{host_img_s:.0f}", size, batch, amp, f"{e2e:.2f}",
                     f"{model:.2f}", f"{ratio:.2f}", f"{loss:.6f}"))
        lines.append(f"pipeline: preset={preset} host_img_s={host_img_s:.0f} "
                     f"end_to_end_img_s={e2e:.2f} model_only_img_s={model:.2f} "
                     f"ratio={ratio:.2f}")
        print(f"{preset} done", file=sys.stderr, flush=True)
    chunk = args.overhead_chunk or 20  # on a GPU a multiple of log_every: a loss read
    overhead = step_overhead(device.type, "off" if on_cpu else args.amp, warmup=chunk,
                             chunk=chunk, rounds=args.overhead_rounds or (15 if on_cpu else 10))
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    if rows:
        print(format_rows(rows))
        print()
    print(overhead_table(overhead))
    print("\n".join([*lines, overhead_line(overhead)]))


if __name__ == "__main__":
    main()
