"""A live run (engine.training.live): new paint reaches the sampler while the run goes on,
erased paint is gone, the optimiser keeps its state, the view is predicted, and a stopped run
is a normal run folder."""
import os
import signal
import time

import numpy as np
import pytest
import tifffile
from process_support import cli, deadline, read_events_until, start_cli, wait_for_exit

from napari_unet import live_inbox
from napari_unet.choices import IGNORE_CLASS
from napari_unet.cli import main
from napari_unet.cli_live import MaskWatcher
from napari_unet.engine import (
    Finished,
    LiveControl,
    MasksUpdated,
    Progress,
    ViewPredicted,
    load_checkpoint,
    predict_array,
    preset_config,
    train_live,
)
from napari_unet.engine.data.normalization import compute_norm_stats
from napari_unet.engine.data.patches import PatchSampler
from napari_unet.engine.training import live
from napari_unet.errors import ConfigError

U = IGNORE_CLASS
SIZE = 64


def live_config(**overrides):
    values = dict(batch_size=2, patch_size=[32, 32], lr=2e-3, amp="off", device="cpu",
                  model_options={"base_channels": 4}, checkpoint_every=1000, log_every=1,
                  unlabeled="ignore")
    values.update(overrides)
    return preset_config("industrial", **values)


def image_and_paint():
    """A bright square on dark, and strokes: background (1) on the left, object (2) inside."""
    rng = np.random.default_rng(0)
    image = rng.normal(0.2, 0.05, (SIZE, SIZE)).astype(np.float32)
    image[20:44, 20:44] += 0.6
    paint = np.zeros((SIZE, SIZE), np.uint8)
    paint[5, 2:15] = 1
    paint[30, 25:35] = 2
    return image, paint


# -- the sampler ---------------------------------------------------------------------------------
def test_a_mask_update_reaches_the_next_batch_and_erasing_removes_it():
    mask = np.full((SIZE, SIZE), U, np.uint8)
    mask[:4, :4] = 0
    image = np.zeros((1, SIZE, SIZE), np.float32)
    sampler = PatchSampler([image], [mask], (16, 16), (16, 16), 8,
                           compute_norm_stats([image], "none"), sparse=True)
    before = sampler.plan(0)
    assert all(start == (0, 0) for _, start in before)  # only the corner is painted
    stroke = np.full((4, 4), 1, np.uint8)
    sampler.update_mask(0, stroke, offset=(50, 50))  # a region travels, not the mask
    assert sampler.labelled_pixels(0) == 32
    starts = {start for _, start in sampler.plan(1)}
    assert any(start != (0, 0) for start in starts), starts  # drawn from the new paint
    sampler.update_mask(0, np.full((4, 4), U, np.uint8), offset=(50, 50))  # erased
    assert sampler.labelled_pixels(0) == 16
    assert all(start == (0, 0) for _, start in sampler.plan(2))


def test_an_unpainted_sample_of_sparse_masks_gives_no_window():
    painted = np.full((SIZE, SIZE), U, np.uint8)
    painted[10, 10] = 1
    unpainted = np.full((SIZE, SIZE), U, np.uint8)
    image = np.zeros((1, SIZE, SIZE), np.float32)
    sampler = PatchSampler([image, image], [unpainted, painted], (16, 16), (16, 16), 16,
                           compute_norm_stats([image], "none"), sparse=True)
    assert {index for index, _ in sampler.plan(0)} == {1}


# -- the run -------------------------------------------------------------------------------------
@pytest.fixture
def states(monkeypatch):
    """The _LiveState of each live run started meanwhile (its run, sampler, optimiser)."""
    seen = []
    original = live._LiveState.__init__

    def keep(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self)

    monkeypatch.setattr(live._LiveState, "__init__", keep)
    return seen


def _adam_steps(run):
    return [int(state["step"]) for state in run.optimizer.state.values()]


def test_a_live_run_takes_new_paint_keeps_its_optimiser_and_stops_as_a_run(tmp_path, states):
    image, paint = image_and_paint()
    control = LiveControl()
    control.set_view(image, region=(slice(8, 56), slice(16, 48)), key=7)
    events = train_live(live_config(), [image], [paint], run_dir=tmp_path / "run",
                        control=control, every=0.01)
    seen, phase, steps_before = [], "start", None
    for event in events:
        seen.append(event)
        state = states[0] if states else None
        if isinstance(event, Progress) and phase == "start" and event.step >= 3:
            steps_before = _adam_steps(state.run)
            more = paint.copy()
            more[50:53, 40:50] = 2  # a new object stroke
            control.update_mask(0, more)
            phase = "painted"
        elif isinstance(event, MasksUpdated) and phase == "painted":
            assert event.labelled == 13 + 10 + 30 and event.samples == (0,)
            coords = state.run.sampler._labelled_coords(0)
            assert {(51, 45), (30, 30)} <= {tuple(c) for c in coords}
            assert _adam_steps(state.run) == steps_before  # the same optimiser, its state
            erased = paint.copy()
            erased[30, 25:35] = 0  # the first object stroke erased
            control.update_mask(0, erased[28:32, 20:40], offset=(28, 20))
            phase = "erased"
        elif isinstance(event, MasksUpdated) and phase == "erased":
            assert event.labelled == 13 + 30  # only the region changed
            coords = {tuple(c) for c in state.run.sampler._labelled_coords(0)}
            assert (30, 30) not in coords and (51, 45) in coords
            phase = "trained"
        elif isinstance(event, Progress) and phase == "trained":
            assert min(_adam_steps(state.run)) > max(steps_before)  # it went on stepping
            phase = "viewing"
        elif isinstance(event, ViewPredicted) and phase == "viewing":
            latest, done, region = control.latest()
            assert latest == event and done.probabilities.shape[-2:] == (48, 32)
            assert done.labels.shape == (48, 32) and event.period >= 0.01
            assert event.view == 7 and event.region == (8, 56, 16, 48)  # which view it was
            control.stop()
            phase = "stopping"
    assert phase == "stopping" and isinstance(seen[-1], Finished)
    run_dir = tmp_path / "run"
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint.config.steps == seen[-1].step  # a run of the steps it took
    assert (checkpoint.config.unlabeled, checkpoint.config.ignore_value) == ("background", U)
    kept = tifffile.imread(run_dir / "data" / "masks" / "sample0.tif")
    assert (kept != U).sum() == 43 and kept[5, 2] == 0 and kept[51, 45] == 1
    assert tifffile.imread(run_dir / "data" / "images" / "sample0.tif").shape == (SIZE, SIZE)
    probabilities, labels = predict_array(checkpoint, image[None], device="cpu")
    assert labels.shape == (SIZE, SIZE)


def test_a_live_run_waits_for_paint_and_warns_of_a_class_it_cannot_learn(tmp_path, states):
    image, _ = image_and_paint()
    control = LiveControl()
    events = train_live(live_config(), [image], [np.zeros((SIZE, SIZE), np.uint8)],
                        run_dir=tmp_path / "run", control=control, every=60)
    texts = []
    for event in events:
        texts.append(getattr(event, "text", ""))
        if "waits for paint" in texts[-1]:
            paint = np.zeros((SIZE, SIZE), np.uint8)
            paint[0, :10], paint[30, 30:40], paint[40, 40:45] = 1, 2, 3  # 3: a third class
            control.update_mask(0, paint)
        if isinstance(event, MasksUpdated):
            assert event.labelled == 20  # class 2 (value 3) is left out
        if isinstance(event, Progress):
            control.stop()
    assert any("class 2 is left out" in text for text in texts), texts
    assert isinstance(event, Finished)


def test_a_live_run_from_a_trained_start_shows_its_view_at_once_with_nothing_painted(
        tmp_path):
    """Issue 34: from a built-in model or a run, the view comes at once (no period's wait,
    no step, no paint); paint then trains on."""
    image, paint = image_and_paint()
    first = tmp_path / "first"
    for _ in train_live(live_config(), [image], [paint], run_dir=first, control=LiveControl(),
                        deadline=0.0):
        pass  # a run of 0 steps: its weights as the start
    control = LiveControl()
    control.set_view(image)
    events = train_live(live_config(), [image], [np.zeros((SIZE, SIZE), np.uint8)],
                        run_dir=tmp_path / "run", control=control, every=60,
                        init_from=first, deadline=time.monotonic() + deadline(30))
    views = []
    for event in events:
        if isinstance(event, ViewPredicted):
            views.append(event)
            assert event.step == 0 and event.labelled == 0 and event.time < 60
            _, done, _ = control.latest()
            assert done.labels.shape == (SIZE, SIZE)
            control.update_mask(0, paint)  # then the user paints: it trains
        if isinstance(event, Progress):
            assert views  # the view came first
            control.stop()
    assert len(views) == 1 and isinstance(event, Finished)
    # painted from the start: the start's view still comes before the first step
    control = LiveControl()
    control.set_view(image)
    for event in train_live(live_config(), [image], [paint], run_dir=tmp_path / "painted",
                            control=control, every=60, init_from=first,
                            deadline=time.monotonic() + deadline(30)):
        assert not isinstance(event, Progress), "a step before the start's view"
        if isinstance(event, ViewPredicted):
            assert event.step == 0
            control.stop()


def test_bad_live_settings_are_one_line_errors(tmp_path):
    image, paint = image_and_paint()
    with pytest.raises(ConfigError, match="leave out --fold"):
        next(train_live(live_config(fold=0), [image], [paint], run_dir=tmp_path / "a",
                        control=LiveControl()))
    with pytest.raises(ConfigError, match="seconds > 0"):
        next(train_live(live_config(), [image], [paint], run_dir=tmp_path / "b",
                        control=LiveControl(), every=0))


# -- the command line ----------------------------------------------------------------------------
LIVE = ["--preset", "industrial", "--patch-size", "32", "--base-channels", "4", "--batch-size",
        "2", "--amp", "off", "--device", "cpu"]


def test_train_live_refuses_a_view_the_model_cannot_read(tmp_path, capsys):
    image, paint = image_and_paint()
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "paint.tif", paint)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((SIZE, SIZE, 3), np.uint8))
    code = main(["train", "--live", *LIVE, "--images", str(tmp_path / "image.tif"), "--masks",
                 str(tmp_path / "paint.tif"), "--predict", str(tmp_path / "rgb.tif"),
                 "--out", str(tmp_path / "run")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("napari_unet: error: --predict")
    assert not (tmp_path / "run").exists()


class _Control:
    def __init__(self):
        self.updates, self.views = [], []

    def update_mask(self, index, values, offset=None):
        self.updates.append((index, np.asarray(values)) + ((offset,) if offset else ()))

    def set_view(self, image, region=None, key=-1):
        self.views.append((np.asarray(image), region, key))


def test_another_process_sends_regions_and_views_through_the_inbox_in_order(tmp_path):
    """What the Train widget will use: only the changed region travels, read in the order
    sent, each message once; a message caught half-written waits for the next poll."""
    path = tmp_path / "paint.tif"
    tifffile.imwrite(path, np.zeros((SIZE, SIZE), np.uint8))
    run = tmp_path / "run"
    watcher, control = MaskWatcher(path, ["image"], run), _Control()
    live_inbox.send_mask(run, 0, np.full((2, 3), 2, np.uint8), offset=(10, 20))
    live_inbox.send_view(run, np.ones((SIZE, SIZE), np.float32), (slice(0, 32), slice(8, None)),
                         key=3)
    live_inbox.send_mask(run, 0, np.full((1, 1), 1, np.uint8), offset=(5, 5))
    whole = live_inbox.send_mask(tmp_path / "other", 0, np.zeros((40, 40), np.uint8)).read_bytes()
    (live_inbox.inbox(run) / "99999999999999999999-half-mask.npz").write_bytes(whole[:200])
    watcher.poll(control)
    assert [(index, values.shape, offset) for index, values, offset in control.updates] == \
        [(0, (2, 3), (10, 20)), (0, (1, 1), (5, 5))]
    assert control.views[0][1:] == ((slice(0, 32), slice(8, None)), 3)  # the region, its key
    assert control.views[0][0].shape == (SIZE, SIZE)
    watcher.poll(control)
    assert len(control.updates) == 2 and len(control.views) == 1  # each read once
    assert [p.name for p in live_inbox.inbox(run).iterdir()] == [
        "99999999999999999999-half-mask.npz"]  # left for the next poll


def test_the_mask_watcher_waits_for_a_file_to_hold_still_and_survives_a_half_written_one(
        tmp_path):
    path = tmp_path / "paint.tif"
    _, paint = image_and_paint()
    tifffile.imwrite(path, paint)
    watcher, control = MaskWatcher(path, ["image"]), _Control()  # a file: all its samples
    watcher.poll(control)
    assert control.updates == []  # unchanged since it was read
    whole = path.read_bytes()
    path.write_bytes(whole[:100])  # a tool writing in place, caught halfway
    for _ in range(3):
        watcher.poll(control)  # seen, held still, unreadable: no update, no crash
    assert control.updates == []
    painted = paint.copy()
    painted[60, :] = 2
    tifffile.imwrite(path, painted)
    os.utime(path, ns=(1, 1))  # a signature of its own, whatever the clock's resolution
    watcher.poll(control)
    assert control.updates == []  # changed: read once it holds still (debounce)
    watcher.poll(control)
    assert len(control.updates) == 1 and control.updates[0][0] == 0
    assert (control.updates[0][1] == painted).all()
    watcher.poll(control)
    assert len(control.updates) == 1  # read once


def _fraction_painted_as_object(path):
    return float((tifffile.imread(path) == 1).mean())


def test_train_live_follows_a_mask_file_changed_while_it_runs(tmp_path):
    """The CLI test of issue 34: a mask file changed during `train --live`; the next
    predictions follow it. Every wait ends on an event (deadlines are ceilings)."""
    image, _ = image_and_paint()
    tifffile.imwrite(tmp_path / "image.tif", image)
    mask = tmp_path / "paint.tif"
    tifffile.imwrite(mask, np.ones((SIZE, SIZE), np.uint8))  # all painted background
    run = tmp_path / "run"
    labels = run / "predictions" / "image_labels.tif"
    with start_cli("train", "--live", *LIVE, "--lr", "0.01", "--images", tmp_path / "image.tif",
                   "--masks", mask, "--out", run, "--predict", tmp_path / "image.tif",
                   "--predict-every", "0.5", "--events", "jsonl") as process:
        read_events_until(process, lambda e: e["event"] == "ViewPredicted"
                          and _fraction_painted_as_object(labels) < 0.05, timeout=deadline(120))
        scratch = tmp_path / "scratch.tif"
        tifffile.imwrite(scratch, np.full((SIZE, SIZE), 2, np.uint8))  # now all object
        os.replace(scratch, mask)
        updated = read_events_until(process, lambda e: e["event"] == "MasksUpdated",
                                    timeout=deadline(60))[-1]
        assert updated["labelled"] == SIZE * SIZE and updated["seconds"] < deadline(60)
        view = read_events_until(process, lambda e: e["event"] == "ViewPredicted"
                                 and e["step"] > updated["step"]
                                 and _fraction_painted_as_object(labels) > 0.95,
                                 timeout=deadline(120))[-1]
        assert view["path"] == str(run / "predictions" / "image_probabilities.tif")
        process.send_signal(signal.SIGINT)  # Stop: a normal end
        rest = read_events_until(process, None)
        assert wait_for_exit(process) == 0
    assert any(event["event"] == "Finished" for event in rest)
    assert load_checkpoint(run).config.steps >= view["step"]
    # a normal run: it goes on from its own training set as any run does
    resumed = cli("train", "--resume", "--data", run / "data", "--out", run, "--steps",
                  str(load_checkpoint(run).config.steps + 1), "--device", "cpu")
    assert resumed.returncode == 0, resumed.stderr
    kept = tifffile.imread(run / "data" / "masks" / "image.tif")  # named as the image
    assert (kept == 1).all()  # the strokes as they were at the stop, as classes


def test_train_live_with_preset_auto_trains_the_live_plan(tmp_path, capsys):
    """`train --live --preset auto` plans the live recipe (printed with its reasons and kept
    in config.yaml), not the batch plan's cosine over minutes."""
    image, paint = image_and_paint()
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "paint.tif", paint)
    code = main(["train", "--live", "--preset", "auto", "--init-from", "none", "--amp", "off",
                 "--device", "cpu", "--minutes", "0.002", "--images",
                 str(tmp_path / "image.tif"), "--masks", str(tmp_path / "paint.tif"),
                 "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    config = load_checkpoint(tmp_path / "run").config
    assert config.lr_schedule == "constant" and config.model_options["base_channels"] == 8
    assert "live run" in config.plan["model_options"]


def test_train_live_from_nothing_refuses_masks_with_nothing_painted(tmp_path, capsys):
    """Only a live run that starts from a model (--init-from) may wait for the first paint."""
    image, _ = image_and_paint()
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "empty.tif", np.zeros((SIZE, SIZE), np.uint8))
    code = main(["train", "--live", *LIVE, "--images", str(tmp_path / "image.tif"), "--masks",
                 str(tmp_path / "empty.tif"), "--out", str(tmp_path / "run")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "no mask holds a labelled pixel" in lines[0]
    assert not (tmp_path / "run").exists()
