"""Out-of-core prediction (memory-mapped TIF outputs) leaves nothing behind when it is
cancelled or fails, and never damages a file it was allowed to replace."""
import numpy as np
import pytest
import tifffile
from test_evaluation import stand_in_checkpoint

from napari_unet.engine import predict_file


@pytest.fixture
def folder(tmp_path):
    tifffile.imwrite(tmp_path / "input.tif", np.linspace(-3, 3, 64 * 64, dtype=np.float32)
                     .reshape(64, 64))
    return tmp_path


def _predict(folder, **options):
    return predict_file(stand_in_checkpoint(1), folder / "input.tif", folder / "labels.tif",
                        probabilities=folder / "probabilities.tif", tile_size=[16, 16],
                        batch_size=1, amp="off", device="cpu", **options)


def test_a_finished_prediction_writes_both_files(folder):
    list(_predict(folder))
    assert sorted(p.name for p in folder.iterdir()) == ["input.tif", "labels.tif",
                                                        "probabilities.tif"]
    probabilities = tifffile.imread(folder / "probabilities.tif")
    image = tifffile.imread(folder / "input.tif")
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-image)), atol=1e-6)
    np.testing.assert_array_equal(tifffile.imread(folder / "labels.tif"), probabilities >= 0.5)


def test_cancelling_between_tiles_leaves_no_file(folder):
    events = _predict(folder)
    next(events)  # the first tiles are written into the memory maps
    events.close()
    assert sorted(p.name for p in folder.iterdir()) == ["input.tif"]


def test_a_failure_midway_leaves_no_file(folder, monkeypatch):
    checkpoint = stand_in_checkpoint(1)
    calls = []

    def failing(x):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the device went away")
        return x

    monkeypatch.setattr(checkpoint.model, "forward", failing)
    with pytest.raises(RuntimeError, match="went away"):
        list(predict_file(checkpoint, folder / "input.tif", folder / "labels.tif",
                          tile_size=[16, 16], batch_size=1, amp="off", device="cpu"))
    assert sorted(p.name for p in folder.iterdir()) == ["input.tif"]


def test_a_cancelled_overwrite_keeps_the_old_files(folder):
    list(_predict(folder))
    before = {name: (folder / name).read_bytes() for name in ("labels.tif", "probabilities.tif")}
    events = _predict(folder, overwrite=True)
    next(events)
    events.close()
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in folder.iterdir()) == ["input.tif", "labels.tif",
                                                        "probabilities.tif"]


def test_a_failed_last_rename_leaves_no_scratch_file(folder, monkeypatch):
    """Issue 32's kind (found with an --output that was a folder): the probabilities' scratch
    file, renamed into place before the labels, stayed when the labels' rename failed."""
    from napari_unet import io

    original = io.TifMemmapWriter.__exit__

    def failing_rename(self, exc_type, exc, traceback):
        result = original(self, exc_type, exc, traceback)
        if self.path.name == "labels.tif" and exc_type is None:
            self.path.unlink()
            raise OSError("the disk went away at the rename")
        return result

    monkeypatch.setattr(io.TifMemmapWriter, "__exit__", failing_rename)
    with pytest.raises(OSError, match="went away"):
        list(predict_file(stand_in_checkpoint(1), folder / "input.tif", folder / "labels.tif",
                          tile_size=[16, 16], batch_size=1, amp="off", device="cpu"))
    assert sorted(p.name for p in folder.iterdir()) == ["input.tif"]
