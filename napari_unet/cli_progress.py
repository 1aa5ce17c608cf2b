"""What the CLI prints while the engine works: JSON lines (``--events jsonl``) or progress
bars on stderr (tqdm, an optional dependency, imported when a bar is first drawn)."""
from __future__ import annotations

import math
import os
import sys
import time

from napari_unet import engine

LIVE_LINE_S = 10.0  # a live run's progress: a line this often


def is_main_process() -> bool:
    """Whether this is the process that prints (rank 0 of a torchrun group, or alone)."""
    return int(os.environ.get("RANK", 0)) == 0


def drive(events, printer):
    """Run an event generator to its end, printing; close it (= cancel) on interruption.
    Returns the Finished event, or None."""
    finished = None
    try:
        for event in events:
            printer(event)
            if isinstance(event, engine.Finished):
                finished = event
    finally:
        events.close()
    return finished


def printer(mode):
    """A function that shows one event: a JSON line for `mode` "jsonl", else human lines."""
    if mode == "jsonl":
        def emit(event):
            if is_main_process():
                print(engine.to_json(event), flush=True)
        return emit
    return HumanPrinter()


def print_failure(message: str) -> None:
    """A user error as the Failed event a parent reading JSON lines waits for."""
    if is_main_process():
        print(engine.to_json(engine.Failed(error=message)), flush=True)


def finished_score(event) -> str:
    """A finished run's best Dice, or that it had no validation (NaN: no --fold)."""
    if math.isnan(event.best_dice):
        return "no validation (no --fold: nothing was held out to score)"
    return f"best dice {event.best_dice:.4f}"


def planned_text(event) -> str:
    """The plan as a user reads it (the CLI prints it; the Train widget shows it)."""
    lines = ["plan, from the data (each value and why):" if event.lines else "plan:"]
    lines += [f"  {line}" for line in event.lines]
    if event.steps:
        lines.append(f"  steps = {event.steps}: {event.seconds_per_step:.2f} s a step, measured "
                     f"now, fills {event.minutes:g} minutes (validations included)")
    return "\n".join(lines)


class HumanPrinter:
    """Progress bars on stderr (tqdm: one line that redraws on a terminal, plain lines in a
    log file), other events as lines written above the bar."""

    def __init__(self):
        self.bar = None
        self.files = False  # a many-file prediction: one bar over the files, tiles as postfix

    def __call__(self, event):
        if not is_main_process():
            return
        match event:
            case engine.Progress() if not event.total:  # a live run: no end known
                if time.monotonic() - getattr(self, "live_line", 0.0) >= LIVE_LINE_S:
                    self.live_line = time.monotonic()
                    self._write(f"step {event.step}: loss {event.loss:.4f} "
                                f"{event.img_s:.1f} img/s")
            case engine.MasksUpdated():
                self._write(f"paint: {event.labelled} labelled pixels in training from step "
                            f"{event.step} ({event.seconds:.1f} s after the change)")
            case engine.ViewPredicted():
                self._write(f"view: step {event.step} at {event.time:.1f} s (predicted in "
                            f"{event.seconds:.1f} s, next in {event.period:.1f} s)"
                            + (f" {event.path}" if event.path else ""))
            case engine.Progress():
                self._advance("steps", event.step, event.total,
                              f"loss {event.loss:.4f} lr {event.lr:.2e} {event.img_s:.1f} img/s")
            case engine.FileDone():
                self.files = event.done < event.total
                self._advance("files", event.done, event.total)
            case engine.TilesDone() if self.files:
                self.bar.set_postfix_str(f"{event.unit} {event.done}/{event.total}")
            case engine.TilesDone():
                self._advance(event.unit, event.done, event.total)
            case engine.Started():
                self._write(f"training on {event.device}: {event.train_samples} training and "
                            f"{event.val_samples} validation samples, global batch "
                            f"{event.global_batch_size} ({event.world_size} process(es)), steps "
                            f"{event.start_step}->{event.total_steps}, run {event.run_dir}")
            case engine.Validation():
                per_class = ", ".join(f"{d:.4f}" for d in event.dice_per_class)
                self._write(f"validation at step {event.step}: dice {event.dice:.4f} "
                            f"(per class {per_class}){' best' if event.best else ''}")
            case engine.Planned():
                self._write(planned_text(event))
            case engine.Message():
                self._write(f"{event.level}: {event.text}")
            case engine.Finished():
                self._close()
                self._write(f"finished at step {event.step}: {finished_score(event)}, "
                            f"checkpoint {event.path}")

    def _advance(self, unit, done, total, postfix=""):
        from tqdm import tqdm  # optional: only a human watching a terminal needs it

        if self.bar is not None and unit == "steps" == self.key[0] and done > self.done:
            self.bar.total, self.key = total, (unit, total)  # a run re-fitted its steps
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
        from tqdm import tqdm  # optional, as above

        tqdm.write(text, file=sys.stderr)

    def _close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
