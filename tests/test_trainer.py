"""The training loop on tiny synthetic data: learning, exact resume, cancel, NaN guard."""
import math

import numpy as np
import pytest
import torch

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


def test_resume_is_exact(dagm, tmp_path):
    config = tiny_config(steps=20, val_every=1000, checkpoint_every=1000)
    run(config, dagm, tmp_path / "whole")
    run(config.replace(steps=10), dagm, tmp_path / "split")
    events = run(config, dagm, tmp_path / "split", resume=True)
    assert events[0].start_step == 10
    whole, split = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    for name in whole:
        assert torch.equal(whole[name], split[name]), name


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
    saved = [e for e in events if isinstance(e, CheckpointSaved)]
    assert saved and all(e.path.endswith(".pt") for e in saved)
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 4 + 2  # a line per 5 steps and per validation


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
