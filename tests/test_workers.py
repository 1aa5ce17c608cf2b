"""Prediction over Dask workers (engine.prediction.workers): one region predicted as in the
whole image, blocks on a LocalCluster equal to one process, a retried block, a resumed run."""
import numpy as np
import pytest
import tifffile
import torch

from napari_unet.cli import main
from napari_unet.engine import preset_config
from napari_unet.engine.checkpoint import save_checkpoint
from napari_unet.engine.labels import LabelHead
from napari_unet.engine.prediction import workers
from napari_unet.engine.prediction.regions import predict_region
from napari_unet.engine.prediction.sliding_window import sliding_window_probabilities
from napari_unet.engine.training.setup import make_model
from napari_unet.io import read_image
from napari_unet.zarr_files import open_zarr

SMALL = {"volume3d": {"base_channels": 4, "max_channels": 8}, "industrial": {"base_channels": 4},
         "isbi2012": {"base_channels": 4}}


def model_of(preset, classes=2):
    config = preset_config(preset, patch_size=[32], model_options=SMALL[preset], amp="off",
                           device="cpu")
    torch.manual_seed(0)
    return config, make_model(config, 1, classes)


@pytest.mark.parametrize("preset,shape,classes", [("volume3d", (1, 20, 70, 50), 3),
                                                   ("industrial", (1, 5, 90, 70), 2)])
def test_a_region_is_predicted_as_in_the_whole_image(preset, shape, classes):
    _, model = model_of(preset, classes)
    head = LabelHead.for_outputs(model.num_classes)
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    for tta in ("off", "mirror"):
        whole = sliding_window_probabilities(model, image, tile_size=32, head=head,
                                             batch_size=3, tta=tta)
        region = tuple(slice(n // 3, n // 3 + n // 2) for n in shape[1:])
        part = predict_region(model, image, region, head=head, tile_size=32, batch_size=3,
                              tta=tta)
        np.testing.assert_allclose(part, whole[(Ellipsis, *region)], atol=1e-6)


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("volume")
    config, model = model_of("volume3d")
    save_checkpoint(folder / "run" / "checkpoints" / "best.pt", model=model, config=config,
                    norm_stats=dict(mode="zscore", low=[], high=[], mean=[100.0], std=[50.0]),
                    step=1, best_dice=0.5, data_info={"num_classes": 2, "in_channels": 1})
    image = np.random.default_rng(1).integers(0, 255, (24, 72, 64)).astype(np.uint8)
    tifffile.imwrite(folder / "v.tif", image)
    assert main(["predict", "--run", str(folder / "run"), "--input", str(folder / "v.tif"),
                 "--output", str(folder / "l.tif"), "--probabilities", str(folder / "p.tif"),
                 "--device", "cpu", "--amp", "off", "--tile-size", "32",
                 "--backend", "torch"]) == 0
    return folder


def _same_as_one_process(folder, output):
    probabilities = np.asarray(open_zarr(output).array)[0]
    np.testing.assert_allclose(probabilities, tifffile.imread(folder / "p.tif"), atol=1e-6)
    labels = np.asarray(read_image(output / "labels" / "prediction"))
    assert np.array_equal(labels, tifffile.imread(folder / "l.tif"))


def test_two_local_workers_equal_one_process(volume_run, tmp_path):
    output = tmp_path / "out.zarr"
    assert main(["predict", "--run", str(volume_run / "run"), "--input",
                 str(volume_run / "v.tif"), "--output", str(output), "--workers", "2",
                 "--block", "12", "32", "32", "--tile-size", "32", "--device", "cpu",
                 "--amp", "off", "--memory-limit", "1GiB"]) == 0
    _same_as_one_process(volume_run, output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]  # no scratch left


@pytest.fixture
def in_process_cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def test_a_failed_block_is_retried_and_a_cancelled_run_resumes(volume_run, tmp_path,
                                                               monkeypatch, in_process_cluster):
    from napari_unet.engine.prediction import regions

    failures = []
    original = regions.predict_region

    def flaky(model, image, region, **options):
        if not failures:
            failures.append(region)
            raise OSError("a worker lost its disk for a moment")
        return original(model, image, region, **options)

    monkeypatch.setattr(regions, "predict_region", flaky)
    options = dict(scheduler=in_process_cluster, block=(12, 32, 32), tile_size=[32],
                   device="cpu", amp="off")  # compared with the fp32 prediction
    output = tmp_path / "out.zarr"
    run = workers.predict_volume(volume_run / "run", volume_run / "v.tif", output, **options)
    assert next(run).done == 0
    assert next(run).done == 1
    run.close()  # cancelled after one block
    assert failures and not output.exists()
    events = list(workers.predict_volume(volume_run / "run", volume_run / "v.tif", output,
                                         resume=True, **options))
    assert events[0].done >= 1 and events[-1].done == events[-1].total == 12
    _same_as_one_process(volume_run, output)


def test_worker_options_that_cannot_work_are_one_line_errors(volume_run, tmp_path, capsys):
    args = ["predict", "--run", str(volume_run / "run"), "--input", str(volume_run / "v.tif")]
    assert main([*args, "--output", str(tmp_path / "x.tif"), "--workers", "2"]) == 2
    assert "NAME.zarr" in capsys.readouterr().err
    assert main([*args, "--output", str(tmp_path / "x.zarr"), "--workers", "0"]) == 2
    assert main([*args, "--output", str(tmp_path / "x.zarr"), "--workers", "1",
                 "--backend", "onnxruntime"]) == 2
    assert "torch backend" in capsys.readouterr().err
    # issue 32: checked before the scratch store (.x.zarr.blocks) is made
    assert main([*args, "--output", str(tmp_path / "x.zarr"), "--workers", "2",
                 "--memory-limit", "nonsense"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        ("napari_unet: error: --memory-limit nonsense: give a size per worker such as 2GiB or "
         "500MB (or auto: a share of this machine's memory)")]
    assert main([*args, "--output", str(tmp_path / "x.zarr"), "--workers", "1",
                 "--block", "12", "32"]) == 2
    assert "one per axis of the 3D image" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == []


def test_objects_over_workers_equal_those_of_one_process(volume_run, tmp_path,
                                                         in_process_cluster, monkeypatch):
    from napari_unet.engine import predict_file
    from napari_unet.engine.events import Message
    from napari_unet.engine.prediction import objects as predict

    # objects made block by block here too (from the Zarr store; from memory maps in one
    # process), blocks smaller than the objects, so ids are stitched across their faces
    monkeypatch.setattr(predict, "BLOCK_VOXELS", 1000)
    monkeypatch.setattr(predict, "BLOCK_SIDE", 16)
    monkeypatch.setattr(predict, "BLOCK_HALO", 4)

    list(predict_file(volume_run / "run", volume_run / "v.tif", tmp_path / "objects.tif",
                      tile_size=[32], device="cpu", amp="off", backend="torch",
                      instances="auto"))
    expected = tifffile.imread(tmp_path / "objects.tif")
    events = list(workers.predict_volume(
        volume_run / "run", volume_run / "v.tif", tmp_path / "out.zarr",
        scheduler=in_process_cluster, block=(12, 32, 32), tile_size=[32], device="cpu",
        amp="off", instances="auto"))
    assert any(isinstance(e, Message) and "objects" in e.text for e in events)
    objects = np.asarray(read_image(tmp_path / "out.zarr" / "labels" / "prediction"))
    assert objects.dtype == np.uint32 and expected.max() > 1
    np.testing.assert_array_equal(objects, expected)  # one id per object across blocks


def test_workers_killed_on_a_block_are_one_line_about_memory():
    from distributed.scheduler import KilledWorker

    from napari_unet.errors import OutOfMemory

    class Killed:
        def result(self):
            raise KilledWorker("run_block-1", "tcp://127.0.0.1:1", 3)

    job = workers.VolumeJob("run", "in.zarr", "store", (64, 64, 64), (128, 128, 128), 0.25,
                            "off", "off", "cpu", 4, 1, {})
    with pytest.raises(OutOfMemory, match=r"block of 64x64x64 with tiles of 128x128x128 .*"
                                          r"over their limit of 2GiB.*raise --memory-limit"):
        workers._result(Killed(), "2GiB", job)


def test_local_workers_are_never_paused_over_the_models_memory():
    """Dask pauses a worker at 80 % of its limit until data it manages is freed: torch's
    memory is not, so a paused worker would wait forever. Off, also after a restart."""
    import dask
    from distributed import Client

    def pausing():
        return dask.config.get("distributed.worker.memory.pause")

    with workers._cluster(None, 1, "1GiB") as address, Client(address) as client:
        assert list(client.run(pausing).values()) == [False]
        client.restart()
        assert list(client.run(pausing).values()) == [False]
    assert dask.config.get("distributed.worker.memory.pause") == 0.8  # ours only


# -- issue 32: nothing left behind, blocks called blocks ----------------------------------------
def test_a_run_that_fails_before_a_block_is_done_leaves_no_scratch_store(volume_run, tmp_path,
                                                                        monkeypatch):
    import contextlib

    @contextlib.contextmanager
    def no_cluster(*args):
        raise OSError("the cluster would not start")
        yield

    monkeypatch.setattr(workers, "_cluster", no_cluster)
    run = workers.predict_volume(volume_run / "run", volume_run / "v.tif", tmp_path / "o.zarr",
                                 block=(12, 32, 32), tile_size=[32], device="cpu")
    first = next(run)  # the store is made: the first event says what is to do
    assert (first.done, first.total, first.unit) == (0, 12, "blocks")
    assert (tmp_path / ".o.zarr.blocks").is_dir()
    with pytest.raises(OSError, match="would not start"):
        next(run)
    assert sorted(tmp_path.iterdir()) == []  # no block was done: nothing to --resume


def test_a_finished_write_removes_the_stale_blocks_of_its_output(volume_run, tmp_path):
    """A cancelled run's blocks (kept for --resume) are stale once the output is written,
    by workers or by one process."""
    from napari_unet.engine import predict_file
    from napari_unet.zarr_files import blocks_store

    output = tmp_path / "out.zarr"
    stale = blocks_store(output)
    (stale / workers.DONE).mkdir(parents=True)
    (stale / workers.DONE / "0_0_0").touch()
    list(predict_file(volume_run / "run", volume_run / "v.tif", output, tile_size=[32],
                      device="cpu", amp="off", backend="torch"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_the_progress_of_workers_counts_blocks(capsys):
    from napari_unet.cli_progress import HumanPrinter
    from napari_unet.engine.events import TilesDone, from_json, to_json

    event = TilesDone(2, 4, workers.BLOCKS)
    assert from_json(to_json(event)) == event
    show = HumanPrinter()
    for done in range(5):
        show(TilesDone(done, 4, workers.BLOCKS))
    err = capsys.readouterr().err
    assert "4/4" in err and "blocks" in err and "tiles" not in err


def test_the_threshold_reaches_the_workers(volume_run, tmp_path, in_process_cluster):
    """Issue 32's kind: `predict --workers --threshold` was dropped (the run's own was used)."""
    list(workers.predict_volume(volume_run / "run", volume_run / "v.tif", tmp_path / "o.zarr",
                                scheduler=in_process_cluster, block=(24, 72, 64),
                                tile_size=[32], device="cpu", threshold=0.0))
    labels = np.asarray(read_image(tmp_path / "o.zarr" / "labels" / "prediction"))
    assert labels.shape == (24, 72, 64) and labels.min() == 1  # every voxel >= 0
