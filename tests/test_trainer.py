"""The training loop on tiny synthetic data: learning, exact resume, cancel, NaN guard."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_unet.choices import IGNORE_CLASS
from napari_unet.engine import (
    CheckpointSaved,
    Finished,
    Progress,
    Started,
    Validation,
    evaluate,
    load_checkpoint,
    preset_config,
    sample_dataset,
    train,
)
from napari_unet.engine.data.dataset import Dataset, split_folds
from napari_unet.engine.events import Message
from napari_unet.errors import ConfigError, DataError, TrainingDiverged


def tiny_config(**overrides):
    values = dict(steps=30, batch_size=4, patch_size=[64, 64], lr=2e-3, amp="off",
                  model_options={"base_channels": 8}, val_every=10, checkpoint_every=10,
                  log_every=5, fold=0, folds=4, lr_decay_steps=1000)
    values.update(overrides)
    return preset_config("industrial", **values)


@pytest.fixture(scope="module")
def dagm():
    return sample_dataset("dagm", n=8, size=64, seed=1)


def run(config, data, run_dir, **kw):
    return list(train(config, data, run_dir=run_dir, **kw))


def test_loss_falls_and_dice_rises(tmp_path):
    em = sample_dataset("em", n=8, size=64, seed=1)
    events = run(tiny_config(steps=60, val_every=20, loss="dice_ce"), em, tmp_path / "r")
    assert isinstance(events[0], Started)
    losses = [e.loss for e in events if isinstance(e, Progress)]
    dice = [e.dice for e in events if isinstance(e, Validation)]
    assert len(losses) == 60 and len(dice) == 3
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert dice[-1] > dice[0] and dice[-1] > 0.6
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.best_dice == max(dice)
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tmp_path / "r" / name).exists(), name


def _weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt").model.state_dict()


def _interrupted_at(config, data, run_dir, step):
    """Train until `step`, then close the generator (a cancel: the checkpoint of `step`)."""
    events = train(config, data, run_dir=run_dir)
    seen = []
    for event in events:
        seen.append(event)
        if isinstance(event, Progress) and event.step == step:
            break
    events.close()
    return seen


def _assert_same_state(whole_dir, split_dir, name="last.pt"):
    """Weights, optimizer, schedule and scaler states, step and best Dice, bit for bit."""
    whole = torch.load(whole_dir / "checkpoints" / name, weights_only=True)
    split = torch.load(split_dir / "checkpoints" / name, weights_only=True)
    assert whole["step"] == split["step"] and whole["best_dice"] == split["best_dice"]
    assert whole.keys() == split.keys()
    for key in ("model_state", "optimizer", "scheduler", "scaler", "ema_state", "ema_averaged"):
        if key in whole:
            _assert_equal_nested(whole[key], split[key], key)


def _assert_equal_nested(a, b, where):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal_nested(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal_nested(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), (where, a, b)  # NaN == NaN here


def _step_of_train_step(monkeypatch):
    """Make trainer._train_step publish the step it is running (for losses that need it)."""
    import inspect

    from napari_unet.engine.training import loop as trainer_module

    real = trainer_module.train_step
    signature = inspect.signature(real)
    current = {}

    def step_aware(*args, **kwargs):
        current["step"] = signature.bind(*args, **kwargs).arguments["step"]
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step", step_aware)
    return current


def _nan_loss_at(monkeypatch, nan_step):
    """fp16: a NaN loss at one step makes the scaler skip it and halve its scale."""
    from napari_unet.engine.training import loop as trainer_module

    current = _step_of_train_step(monkeypatch)
    real = trainer_module.build_loss

    def build(*args, **kwargs):
        loss_fn = real(*args, **kwargs)
        return lambda logits, target: loss_fn(logits, target) * (
            float("nan") if current["step"] == nan_step else 1.0)

    monkeypatch.setattr(trainer_module, "build_loss", build)


RESUME_VARIANTS = {
    "exponential decay every step": dict(lr_decay_steps=1, lr_decay_rate=0.9),
    "cosine": dict(lr_schedule="cosine"),
    "warm-up across the split, then poly": dict(warmup_steps=8, lr_schedule="poly"),
    "dropout (UNet)": dict(preset="isbi2012", model_options={"base_channels": 4, "depth": 3,
                                                             "padding": "same"},
                           loss="dice_ce", lr_schedule="cosine"),
    "fp16 scaler after a skipped step": dict(amp="fp16", lr_schedule="cosine"),
    "validations before and after the split": dict(val_every=3, lr_schedule="cosine",
                                                   val_tile_size=[64, 64]),
    "weight EMA with batch norm, validated": dict(
        preset="isbi2012", model_options={"base_channels": 4, "depth": 3, "padding": "same",
                                          "norm": "batch", "dropout": 0.0},
        loss="dice_ce", lr_schedule="cosine", ema=0.8, val_every=3, val_tile_size=[64, 64]),
    "sparse labels (strokes), validated": dict(sparse=True, loss="dice_ce", val_every=3,
                                               lr_schedule="cosine", val_tile_size=[64, 64]),
}


def _strokes_only(dataset):
    """The data set with every pixel off a few lines unlabelled (IGNORE_CLASS)."""
    masks = []
    for mask in dataset.masks:
        sparse = np.full_like(mask, IGNORE_CLASS)
        sparse[::7] = mask[::7]
        sparse[:, 20:24] = mask[:, 20:24]
        masks.append(sparse)
    return Dataset(list(dataset.images), masks, list(dataset.names), dataset.spatial_dims)


@pytest.mark.parametrize("variant", list(RESUME_VARIANTS))
def test_resume_is_bit_identical_to_an_uninterrupted_run(dagm, tmp_path, monkeypatch, variant):
    options = dict(RESUME_VARIANTS[variant])
    preset = options.pop("preset", "industrial")
    if options.pop("sparse", False):
        dagm = _strokes_only(dagm)
    values = dict(steps=12, batch_size=2, patch_size=[32, 32], lr=2e-3, amp="off",
                  model_options={"base_channels": 4}, val_every=1000, checkpoint_every=1000,
                  log_every=1, fold=0, folds=4, lr_decay_steps=1000)
    values.update(options)
    config = preset_config(preset, **values)
    if config.amp == "fp16":
        _nan_loss_at(monkeypatch, nan_step=2)
    whole = run(config, dagm, tmp_path / "whole")
    before = _interrupted_at(config, dagm, tmp_path / "split", step=5)
    after = run(config, dagm, tmp_path / "split", resume=True)
    assert after[0].start_step == 5

    def trace(events):  # what the user sees: losses, learning rates, validations
        return [(type(e).__name__, e.step, str(e.loss), e.lr) if isinstance(e, Progress)
                else (type(e).__name__, e.step, e.dice, e.best) if isinstance(e, Validation)
                else type(e).__name__ for e in events
                if isinstance(e, (Progress, Validation, Finished))]

    assert trace(before)[:5] == trace(whole)[:5]
    assert trace(after) == trace(whole)[-len(trace(after)):]
    lrs = [e.lr for e in whole if isinstance(e, Progress)]
    assert len(set(lrs)) == len(lrs), "the schedule must change at every step"
    if config.ema:
        state = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)
        assert state["ema_averaged"] == 12
        averaged, trained = state["ema_state"], state["model_state"]
        assert not all(torch.equal(averaged[k], trained[k]) for k in trained)
        # prediction gets the averaged weights
        loaded = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt").model
        assert all(torch.equal(v, averaged[k]) for k, v in loaded.state_dict().items())
    if "validations" in variant:
        assert [e.step for e in whole if isinstance(e, Validation)] == [3, 6, 9, 12]
        _assert_same_state(tmp_path / "whole", tmp_path / "split", "best.pt")
    if config.amp == "fp16":
        scale = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt",
                           weights_only=True)["scaler"]["scale"]
        assert scale == 2.0 ** 15, "the NaN step halved the scale once"
    _assert_same_state(tmp_path / "whole", tmp_path / "split")


def test_the_best_dice_survives_a_resume(dagm, tmp_path, monkeypatch):
    """A resumed run knows its best Dice so far: a worse validation is not called best."""
    from napari_unet.engine.training import loop as trainer_module

    dice = {3: 0.9, 6: 0.5, 9: 0.6, 12: 0.7}
    current = _step_of_train_step(monkeypatch)

    def scripted(*args, **kwargs):
        value = dice[current["step"] + 1]
        return {"dice": value, "dice_per_class": [1.0, value], "mean_dice": (1 + value) / 2}

    monkeypatch.setattr(trainer_module, "validate", scripted)
    config = tiny_config(steps=12, batch_size=2, val_every=3, checkpoint_every=1000)
    _interrupted_at(config, dagm, tmp_path / "r", step=7)
    events = run(config, dagm, tmp_path / "r", resume=True)
    assert [(e.step, e.best) for e in events if isinstance(e, Validation)] == [
        (9, False), (12, False)]
    assert events[-1].best_dice == 0.9
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "best.pt").step == 3


def test_cancel_leaves_a_loadable_checkpoint(dagm, tmp_path):
    events = train(tiny_config(steps=1000, checkpoint_every=1000, val_every=1000), dagm,
                   run_dir=tmp_path / "r")
    for event in events:
        if isinstance(event, Progress) and event.step == 7:
            break
    events.close()
    checkpoint = load_checkpoint(tmp_path / "r")
    assert checkpoint.step == 7
    resumed = train(tiny_config(steps=9), dagm, run_dir=tmp_path / "r", resume=True)
    assert next(resumed).start_step == 7
    resumed.close()


def test_existing_run_is_never_overwritten(dagm, tmp_path):
    run(tiny_config(steps=2), dagm, tmp_path / "r")
    with pytest.raises(ConfigError, match="--resume"):
        run(tiny_config(steps=2), dagm, tmp_path / "r")


def test_nan_loss_stops_with_a_message(dagm, tmp_path):
    with pytest.raises(TrainingDiverged, match="lower --lr"):
        run(tiny_config(steps=5, lr=1e30, optimizer="sgd"), dagm, tmp_path / "r")


def test_evaluate_reproduces_validation_dice(dagm, tmp_path):
    events = run(tiny_config(steps=20, val_every=20), dagm, tmp_path / "r")
    validation = [e for e in events if isinstance(e, Validation)][-1]
    metrics = evaluate(load_checkpoint(tmp_path / "r"), dagm, fold=0, amp="off", device="cpu")
    assert metrics["foreground_dice"] == pytest.approx(validation.dice, abs=1e-6)


def test_checkpoint_events_and_metrics_log(dagm, tmp_path):
    events = run(tiny_config(steps=20), dagm, tmp_path / "r")
    saved = [(e.step, Path(e.path).name) for e in events if isinstance(e, CheckpointSaved)]
    # last.pt every 10 steps but the final one (written after the loop); best.pt when better
    assert (10, "last.pt") in saved and all(name in ("last.pt", "best.pt") for _, name in saved)
    assert [step for step, name in saved if name == "last.pt"] == [10]
    validations = [e for e in events if isinstance(e, Validation)]
    best_steps = [e.step for e in validations if e.best]
    assert [step for step, name in saved if name == "best.pt"] == best_steps and best_steps
    records = [json.loads(line) for line in
               (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    # a line per 5 steps and one per validation, nothing else
    assert [r["step"] for r in records if "loss" in r] == [5, 10, 15, 20]
    assert [r["step"] for r in records if "val_dice" in r] == [10, 20]
    assert len(records) == 6
    assert [r["val_dice"] for r in records if "val_dice" in r] == [e.dice for e in validations]


def test_mismatched_shapes_are_a_data_error(tmp_path):
    images = [np.zeros((32, 32), np.uint8)]
    masks = [np.zeros((30, 32), np.uint8)]
    with pytest.raises(DataError, match="same pixels"):
        run(tiny_config(fold=None), images, tmp_path / "r", masks=masks)


def test_3d_data_with_a_2d_model(tmp_path):
    data = sample_dataset("blobs3d", n=2, size=32)
    with pytest.raises(DataError, match="3D"):
        run(tiny_config(fold=None), data, tmp_path / "r")


def test_bf16_training_on_cpu(dagm, tmp_path):
    events = run(tiny_config(steps=4, amp="bf16"), dagm, tmp_path / "r")
    assert all(math.isfinite(e.loss) for e in events if isinstance(e, Progress))


@pytest.mark.parametrize("validation", [True, False])
def test_the_fitted_threshold_is_the_best_on_whole_images_and_the_run_keeps_it(
        dagm, tmp_path, validation):
    """fit_threshold: after training, the GRID threshold with the best Dice on the validation
    part (else the training images) is written into the final checkpoint and config.yaml,
    prediction and evaluation use it, and a message says so."""
    from napari_unet.engine.training.threshold import (
        GRID,
        MIN_GAIN,
        fit_threshold,
        spread,
        spread_order,
    )
    from napari_unet.runs import read_config_value

    config = tiny_config(steps=12, fit_threshold=True,
                         **({} if validation else dict(fold=None)))
    events = run(config, dagm, tmp_path / "run")
    finished = events[-1]
    checkpoint = load_checkpoint(finished.path)
    chosen = checkpoint.config.threshold
    fitted_on = dagm.subset(split_folds(len(dagm), 0, 4, config.split_seed)[1]) \
        if validation else dagm
    dice = {t: evaluate(checkpoint, fitted_on, threshold=t, amp="off", device="cpu")
            ["foreground_dice"] for t in (*GRID, 0.5)}
    notes = [e.text for e in events if isinstance(e, Message) and "threshold" in e.text]
    assert len(notes) == 1, notes
    if chosen == 0.5:
        assert max(dice.values()) < dice[0.5] + MIN_GAIN + 1e-3, (dice, notes)
    else:
        assert dice[chosen] >= max(dice.values()) - 1e-3, (chosen, dice)
        assert dice[chosen] >= dice[0.5] + MIN_GAIN - 1e-3
        assert checkpoint.config.plan["threshold"].startswith("fitted after training")
        assert float(read_config_value(tmp_path / "run", "threshold")) == chosen
        # prediction uses the run's threshold unless given one
        assert evaluate(checkpoint, fitted_on, amp="off", device="cpu")["foreground_dice"] \
            == pytest.approx(dice[chosen], abs=1e-6)
    # past its time limit the fit stops at the first image that holds an object
    late = fit_threshold(checkpoint, fitted_on, checkpoint.config, "cpu", until=0.0)
    order = spread_order(spread([m.size for m in fitted_on.masks]))
    first = next(k for k, i in enumerate(order) if np.asarray(fitted_on.masks[i]).any())
    assert late[3] == first + 1
    assert fit_threshold(checkpoint, fitted_on, checkpoint.config, "cpu")[3] == len(fitted_on)
