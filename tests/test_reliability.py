"""Bad input gets a one-line error that says what to do; no fault loses work.

Each case of the README's reliability table is one test here (or named there).
"""
import errno
import json
import signal

import numpy as np
import pytest
import tifffile
import torch
from process_support import cli, read_events_until, start_cli, wait_for_exit

from napari_unet.cli import main
from napari_unet.engine import (
    Message,
    Progress,
    load_checkpoint,
    preset_config,
    sample_dataset,
    train,
)
from napari_unet.engine import checkpoint as checkpoint_module
from napari_unet.engine.training import loop as trainer_module
from napari_unet.errors import CheckpointError, DataError, OutOfMemory, TrainingDiverged

TINY = ["--steps", "2", "--batch-size", "2", "--patch-size", "32", "--base-channels", "4",
        "--amp", "off", "--device", "cpu"]


def tiny(**overrides):
    values = dict(steps=2, batch_size=2, patch_size=[32, 32], amp="off", device="cpu",
                  model_options={"base_channels": 4}, checkpoint_every=1000, val_every=1000)
    values.update(overrides)
    return preset_config(overrides.pop("preset", "industrial"), **values)


def cli_error(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def write(path, array):
    tifffile.imwrite(path, array)
    return str(path)


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("content, words", [(b"", "empty"), (b"hello, not an image", "TIF"),
                                             (None, "truncated")])
def test_unreadable_image_files(tmp_path, capsys, content, words):
    path = tmp_path / "bad.tif"
    if content is None:  # a real TIF cut in half
        tifffile.imwrite(path, np.ones((5, 64, 64), np.uint8))
        path.write_bytes(path.read_bytes()[:500])
    else:
        path.write_bytes(content)
    code, line = cli_error(capsys, "train", "--preset", "industrial", "--images", str(path),
                           "--masks", str(path), "--out", str(tmp_path / "r"), *TINY)
    assert code == 2 and "bad.tif" in line
    assert "Traceback" not in line


def test_image_and_mask_shapes_differ(tmp_path, capsys):
    image = write(tmp_path / "i.tif", np.zeros((2, 40, 40), np.uint8))
    mask = write(tmp_path / "m.tif", np.zeros((2, 40, 41), np.uint8))
    code, line = cli_error(capsys, "train", "--preset", "industrial", "--images", image,
                           "--masks", mask, "--out", str(tmp_path / "r"), *TINY)
    assert code == 2 and "(40, 40)" in line and "(40, 41)" in line


def test_five_classes_for_a_binary_model(tmp_path, capsys):
    image = write(tmp_path / "i.tif", np.zeros((2, 40, 40), np.uint8))
    mask = write(tmp_path / "m.tif", np.arange(2 * 40 * 40).reshape(2, 40, 40).astype(np.uint8) % 5)
    code, line = cli_error(capsys, "train", "--preset", "industrial", "--images", image,
                           "--masks", mask, "--out", str(tmp_path / "r"), *TINY)
    assert code == 2 and "5 classes" in line and "--loss dice_ce" in line


def test_binary_masks_in_0_255_and_0_1_both_train(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32), dtype=np.uint8)
    for scale in (1, 255):
        masks = (images > 128).astype(np.uint8) * scale
        events = list(train(tiny(), list(images), list(masks), run_dir=tmp_path / f"r{scale}"))
        assert type(events[-1]).__name__ == "Finished"


def test_all_background_mask_warns_and_still_trains(tmp_path):
    images = [np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)] * 2
    events = list(train(tiny(), images, [np.zeros((32, 32), np.uint8)] * 2, run_dir=tmp_path / "r"))
    warnings = [e for e in events if isinstance(e, Message) and e.level == "warning"]
    assert warnings and "background" in warnings[0].text
    assert type(events[-1]).__name__ == "Finished"


@pytest.mark.parametrize("kind", ["rgb", "uint16", "float32", "int16", "nan_inf"])
def test_unusual_images_are_handled(tmp_path, kind):
    rng = np.random.default_rng(0)
    base = rng.random((2, 32, 32)).astype(np.float32)
    images = {"rgb": (np.stack([base] * 3, -1) * 255).astype(np.uint8),
              "uint16": (base * 60000).astype(np.uint16),
              "float32": base * 1e-3 - 5,
              "int16": (base * 2000 - 1000).astype(np.int16),
              "nan_inf": np.where(base > 0.9, np.nan, np.where(base < 0.05, np.inf, base))}[kind]
    masks = (base > 0.5).astype(np.uint8)
    events = list(train(tiny(), list(images), list(masks), run_dir=tmp_path / "r"))
    losses = [e.loss for e in events if isinstance(e, Progress)]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_2d_images_for_a_3d_model(tmp_path):
    with pytest.raises(DataError):
        list(train(tiny(preset="volume3d", patch_size=[32, 32, 32], spatial_dims=3),
                   [np.zeros((32, 32), np.uint8)], [np.zeros((32, 32), np.uint8)],
                   run_dir=tmp_path / "r"))


def test_image_smaller_than_the_unpadded_unet_minimum(tmp_path):
    rng = np.random.default_rng(0)
    images = list(rng.integers(0, 255, (2, 100, 90), dtype=np.uint8))
    masks = [(i > 128).astype(np.uint8) for i in images]
    config = preset_config("isbi2012", steps=1, batch_size=1, patch_size=[4, 4], amp="off",
                           model_options={"base_channels": 2, "padding": "valid"},
                           checkpoint_every=1000, val_every=1000)
    events = list(train(config, images, masks, run_dir=tmp_path / "r"))
    from napari_unet.engine import predict_array
    probabilities, labels = predict_array(load_checkpoint(tmp_path / "r"), images[0],
                                          amp="off", device="cpu")
    assert probabilities.shape == (100, 90) and labels.shape == (100, 90)
    assert type(events[-1]).__name__ == "Finished"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("rel") / "run"
    list(train(tiny(), sample_dataset("dagm", n=2, size=32), run_dir=run))
    return run


def test_checkpoint_of_another_model(tiny_run):
    with pytest.raises(CheckpointError, match="tiny_unet model, not unet"):
        load_checkpoint(tiny_run, expect_model="unet")


def test_corrupted_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 this is no checkpoint")
    code, line = cli_error(capsys, "predict", "--run", str(bad), "--input", "x.tif",
                           "--output", str(tmp_path / "o.tif"))
    assert code == 2 and "corrupted" in line and "bad.pt" in line


def test_checkpoint_of_a_newer_format(tiny_run, tmp_path):
    state = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=True)
    state["format_version"] = 99
    torch.save(state, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="upgrade"):
        load_checkpoint(tmp_path / "new.pt")


def test_run_folder_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, line = cli_error(capsys, "train", "--preset", "industrial", "--sample", "dagm",
                           "--out", str(blocker / "run"), *TINY)
    assert code == 2 and "--out" in line


def test_config_with_unknown_key_or_wrong_type(tmp_path, capsys):
    code, line = cli_error(capsys, "train", "--preset", "industrial", "--sample", "dagm",
                           "--out", str(tmp_path / "r"), "--set", "learning_rate=1", *TINY)
    assert code == 2 and "unknown config key" in line and "lr" in line
    config = tmp_path / "c.yaml"
    config.write_text("steps: many\n")
    code, line = cli_error(capsys, "train", "--preset", "industrial", "--sample", "dagm",
                           "--out", str(tmp_path / "r"), "--config", str(config))
    assert code == 2 and "'steps' expects int" in line


# -- faults --------------------------------------------------------------------------------------
def test_sigkill_then_resume_loses_at_most_checkpoint_every(tmp_path):
    run = tmp_path / "r"
    args = ["train", "--preset", "industrial", "--sample", "dagm", "--out", str(run),
            "--events", "jsonl", "--batch-size", "2", "--patch-size", "32", "--base-channels",
            "4", "--amp", "off", "--device", "cpu", "--checkpoint-every", "3"]
    last_saved = 0

    def eighth_step(event):
        nonlocal last_saved
        if event["event"] == "CheckpointSaved":
            last_saved = event["step"]
        return event["event"] == "Progress" and event["step"] >= 8

    with start_cli(*args, "--steps", "100000") as process:
        read_events_until(process, eighth_step)
        process.send_signal(signal.SIGKILL)
        wait_for_exit(process)
    assert last_saved >= 6
    assert not list((run / "checkpoints").glob(".*tmp*"))
    resumed = cli(*args, "--steps", last_saved + 2, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    start = json.loads(resumed.stdout.splitlines()[0])["start_step"]
    # the child may have saved once more between our last read and the kill
    assert start >= last_saved and start % 3 == 0


def test_disk_full_while_writing_a_checkpoint_keeps_the_old_one(tiny_run, monkeypatch):
    path = tiny_run / "checkpoints" / "last.pt"
    before = path.read_bytes()
    good = load_checkpoint(path)

    def full_disk(state, target):
        with open(target, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left.*previous checkpoint is intact"):
        checkpoint_module.save_checkpoint(path, model=good.model, config=good.config,
                                          norm_stats=good.norm_stats, step=99, best_dice=0.0,
                                          data_info=good.data_info)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def _loss_nan_at(step_to_break):
    real = trainer_module.build_loss

    def build(name, channels, regions=None, masked=False, **options):
        loss_fn, calls = real(name, channels, regions, masked, **options), []

        def loss(logits, target):
            calls.append(1)
            value = loss_fn(logits, target)
            return value * float("nan") if len(calls) == step_to_break else value
        return loss
    return build


def test_nan_loss_without_scaler_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "build_loss", _loss_nan_at(5))
    with pytest.raises(TrainingDiverged, match="step 5"):
        list(train(tiny(steps=10, checkpoint_every=2), sample_dataset("dagm", n=2, size=32),
                   run_dir=tmp_path / "r"))
    assert load_checkpoint(tmp_path / "r").step == 4


def test_nan_loss_with_fp16_scaler_skips_the_step(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "build_loss", _loss_nan_at(2))
    events = list(train(tiny(steps=3, amp="fp16"), sample_dataset("dagm", n=2, size=32),
                        run_dir=tmp_path / "r"))
    assert type(events[-1]).__name__ == "Finished"
    weights = load_checkpoint(tmp_path / "r").model.state_dict()
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_out_of_memory_names_the_option_to_lower(tmp_path, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer_module, "train_step", oom)
    with pytest.raises(OutOfMemory, match="--batch-size"):
        list(train(tiny(), sample_dataset("dagm", n=2, size=32), run_dir=tmp_path / "r"))


# -- property-based: the reader over random shapes and dtypes ------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(1, 12), min_size=2, max_size=4),
       dtype=st.sampled_from(["uint8", "uint16", "int16", "float32", "float64", "int32"]),
       seed=st.integers(0, 2**16))
def test_reader_round_trips_any_shape_and_dtype(tmp_path, shape, dtype, seed):
    from napari_unet import _napari
    from napari_unet.choices import MAX_CHANNELS
    from napari_unet.io import read_image

    array = (np.random.default_rng(seed).random(shape) * 100).astype(dtype)
    path = tmp_path / f"img_{seed}_{'x'.join(map(str, shape))}_{dtype}.tif"
    tifffile.imwrite(path, array, photometric="minisblack")
    np.testing.assert_array_equal(np.asarray(read_image(path)), array)
    [(data, options, kind)] = _napari.get_reader(str(path))(str(path))
    np.testing.assert_array_equal(np.asarray(data), array)
    # a 4D file without axis names is CZYX: napari splits axis 0 into one layer per channel
    if kind == "image" and array.ndim == 4 and 1 < array.shape[0] <= MAX_CHANNELS:
        assert options.get("channel_axis") == 0
    if "channel_axis" in options:
        axis = options["channel_axis"]
        assert options["name"] == [f"{path.stem} ch{c}" for c in range(array.shape[axis])]
        for c in range(array.shape[axis]):  # channel c is the file's channel c, in order
            np.testing.assert_array_equal(np.take(data, c, axis), np.take(array, c, axis))


def test_prediction_out_of_memory_retries_with_smaller_tile_batches(tiny_run, monkeypatch):
    from napari_unet.engine import predict

    checkpoint = load_checkpoint(tiny_run)
    real_forward = checkpoint.model.forward
    seen = []

    def forward(x):
        seen.append(x.shape[0])
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return real_forward(x)

    monkeypatch.setattr(checkpoint.model, "forward", forward)
    image = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    events = list(predict(checkpoint, image, tile_size=[32], batch_size=4, amp="off",
                          device="cpu"))
    warnings = [e.text for e in events if isinstance(e, Message)]
    assert len(warnings) == 2 and "1 tile(s)" in warnings[-1]
    assert seen[-1] == 1 and events[-1].probabilities.shape == (64, 64)
