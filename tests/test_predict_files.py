"""Prediction over many files: a folder or glob in, a folder out, bad files skipped and
reported, exit 2 with their list, nothing overwritten without --overwrite."""
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from export_support import DATA, make_run

from napari_unet.cli import main
from napari_unet.engine import FileDone, load_checkpoint, predict_array, predict_files
from napari_unet.io import read_image

DAGM = sorted((DATA / "dagm2007_class1").glob("*.PNG"))[:4]
FAST = ["--device", "cpu", "--amp", "off", "--tile-size", "256"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("files"), "tiny_unet")


@pytest.fixture
def scans(tmp_path):
    """Four DAGM PNGs, one damaged PNG and one RGB PNG (the model takes one channel)."""
    folder = tmp_path / "scans"
    folder.mkdir()
    for path in DAGM:
        shutil.copy(path, folder / path.name)
    (folder / "0003_damaged.png").write_bytes(DAGM[0].read_bytes()[:300])
    import imageio.v3 as iio
    iio.imwrite(folder / "0004_rgb.png", np.zeros((64, 64, 3), np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "napari_unet.cli", *args], capture_output=True,
                          text=True)


def test_a_folder_with_bad_files_writes_the_rest_and_exits_2(run, scans, tmp_path):
    out = tmp_path / "out"
    result = _cli("predict", "--run", str(run), "--input", str(scans), "--output", str(out), *FAST)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{p.stem}_labels.tif" for p in DAGM)
    skipped = [line for line in result.stderr.splitlines() if line.startswith("napari_unet: error")]
    assert len(skipped) == 2
    assert "0003_damaged.png" in skipped[0] and "0004_rgb.png" in skipped[1]
    assert "channel" in skipped[1]
    assert f"wrote {len(DAGM)} of {len(DAGM) + 2} file(s)" in result.stderr


def test_outputs_equal_one_file_prediction_and_are_never_overwritten(run, scans, tmp_path):
    out = tmp_path / "out"
    pattern = str(scans / "00[0-9][0-9].PNG")  # a glob: only the good ones
    assert main(["predict", "--run", str(run), "--input", pattern, "--output", str(out),
                 "--probabilities", str(out), *FAST]) == 0
    labels = tifffile.imread(out / f"{DAGM[1].stem}_labels.tif")
    probabilities, expected = predict_array(load_checkpoint(run), read_image(DAGM[1]),
                                            tile_size=[256], amp="off", device="cpu")
    # the CLI's default backend may be an exported graph: equal up to float rounding
    assert (labels != expected).mean() < 1e-4
    np.testing.assert_allclose(tifffile.imread(out / f"{DAGM[1].stem}_probabilities.tif"),
                               probabilities, atol=1e-5)
    stamp = (out / f"{DAGM[0].stem}_labels.tif").stat().st_mtime_ns
    result = _cli("predict", "--run", str(run), "--input", pattern, "--output", str(out), *FAST)
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (out / f"{DAGM[0].stem}_labels.tif").stat().st_mtime_ns == stamp
    assert main(["predict", "--run", str(run), "--input", pattern, "--output", str(out),
                 "--overwrite", *FAST]) == 0
    assert (out / f"{DAGM[0].stem}_labels.tif").stat().st_mtime_ns != stamp


def test_events_count_the_files(run, scans, tmp_path):
    events = [e for e in predict_files(run, scans, tmp_path / "o", tile_size=[256], amp="off",
                                       device="cpu") if isinstance(e, FileDone)]
    assert [(e.done, e.total) for e in events] == [(i, 6) for i in range(7)]
    assert [bool(e.error) for e in events[1:]] == [False, False, True, True, False, False]


def test_a_glob_that_matches_nothing_is_one_line(run, tmp_path):
    result = _cli("predict", "--run", str(run), "--input", str(tmp_path / "*.png"), "--output",
                  str(tmp_path / "o"))
    assert result.returncode == 2 and "matches no image" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_evaluate_takes_a_glob_of_images(run, tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    for path in DAGM[:2]:
        shutil.copy(path, images / path.name)
        tifffile.imwrite(masks / f"{path.stem}.tif", (read_image(path) > 128).astype(np.uint8))
    shutil.copy(DAGM[2], images / "extra.PNG")  # left out by the glob: it has no mask
    assert main(["evaluate", "--run", str(run), "--images", str(images / "0*.PNG"), "--masks",
                 str(masks), *FAST[:4]]) == 0
    assert "samples=2" in capsys.readouterr().out
