"""Export: bioimage.io packages that bioimageio.core's own test accepts (every weight format),
whose prediction equals ours on real images, and that `predict --model` reads back; ONNX and
TorchScript files."""
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tifffile
import torch
import yaml
from export_support import FAMILIES, make_run, real_image

from napari_unet.cli import main
from napari_unet.engine import load_checkpoint, predict_array
from napari_unet.engine.export.bioimageio import _axis_sizes, architecture_source, export_bioimageio
from napari_unet.models import build_model

WEIGHT_FORMATS = ("pytorch_state_dict", "torchscript", "onnx")


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """One exported package per family, with a real image as its test input."""
    folder = tmp_path_factory.mktemp("export")
    made = {}
    for family in FAMILIES:
        run = make_run(folder, family)
        made[family] = (run, export_bioimageio(run, folder / f"{family}.zip",
                                               image=real_image(family)))
    return made


def test_axes_describe_each_family_truthfully():
    # (smallest valid input, step, input - output): TinyUNet multiples of 16, the unpadded
    # UNet 188 + 16 k with a 92-pixel margin on each side (572 -> 388), 3D-UNet multiples of 32
    assert _axis_sizes(build_model("tiny_unet")) == (16, 16, 0)
    unet = build_model("unet")
    assert _axis_sizes(unet) == (188, 16, 184)
    assert 572 == 188 + 16 * 24 and unet.output_size(572) == (388, 388)
    assert _axis_sizes(build_model("unet3d", base_channels=4)) == (64, 32, 0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bioimageio_core_model_test_passes_for_every_weight_format(packages, family):
    from bioimageio.core import test_model

    _, package = packages[family]
    summary = test_model(package)
    failed = [d.name + ": " + "; ".join(e.msg[:200] for e in d.errors)
              for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    tested = " ".join(d.name for d in summary.details)
    for weights in WEIGHT_FORMATS:
        assert f"Reproduce test outputs from test inputs ({weights})" in tested


@pytest.mark.parametrize("family", list(FAMILIES))
def test_package_prediction_equals_ours_on_a_real_image(packages, family):
    from bioimageio.core import Tensor, create_prediction_pipeline, load_description, predict

    run, package = packages[family]
    image = real_image(family)
    checkpoint = load_checkpoint(run)
    window = image.shape[-checkpoint.model.spatial_dims:]
    ours, _ = predict_array(checkpoint, image, tile_size=window, amp="off", device="cpu",
                            channels_last=False)
    margin = _axis_sizes(checkpoint.model)[2] // 2
    raw = image.astype(np.float32)
    raw = raw[None] if raw.ndim == checkpoint.model.spatial_dims else raw
    if margin:  # the unpadded UNet eats 92 pixels each side: give it the mirrored context
        raw = np.pad(raw, [(0, 0)] + [(margin, margin)] * (raw.ndim - 1), mode="reflect")
    dims = ("batch", "channel", *("zyx"[-checkpoint.model.spatial_dims:]))
    description = load_description(package)
    for weights in WEIGHT_FORMATS:
        pipeline = create_prediction_pipeline(description, weight_format=weights)
        sample = predict(model=pipeline, inputs={"raw": Tensor.from_numpy(raw[None], dims=dims)})
        theirs = sample.members["probabilities"].data.to_numpy()[0]
        # ours keeps the foreground probability (K <= 2) or all classes (K > 2)
        theirs = theirs[-1] if checkpoint.model.num_classes <= 2 else theirs
        assert theirs.shape == ours.shape, weights
        assert np.abs(theirs - ours).max() <= 1e-4, weights


def test_architecture_file_runs_without_napari_unet(packages, tmp_path):
    run, package = packages["tiny_unet"]
    with zipfile.ZipFile(package) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        architecture = rdf["weights"]["pytorch_state_dict"]["architecture"]
        (tmp_path / "architecture.py").write_bytes(archive.read(architecture["source"]))
    assert "napari_unet" not in architecture_source("unet3d").split("# ----")[0]
    script = ("import sys; sys.modules['napari_unet'] = None; sys.path.insert(0, sys.argv[1]);"
              "import architecture, json; m = architecture.TinyUNet(**json.loads(sys.argv[2]));"
              "print(sum(p.numel() for p in m.parameters()))")
    import json
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path),
                             json.dumps(architecture["kwargs"])], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    expected = sum(p.numel() for p in load_checkpoint(run).model.parameters())
    assert int(result.stdout) == expected


@pytest.mark.parametrize("family", ["tiny_unet", "unet"])
def test_predict_model_package_equals_predict_run(packages, family, tmp_path):
    run, package = packages[family]
    image_path = tmp_path / "image.tif"
    tifffile.imwrite(image_path, real_image(family)[:200, :260])
    window = "316" if family == "unet" else "128"  # the UNet's 316 window: 132-pixel tiles
    common = ["--input", str(image_path), "--device", "cpu", "--amp", "off", "--tile-size", window]
    assert main(["predict", "--run", str(run), "--output", str(tmp_path / "a.tif"),
                 "--probabilities", str(tmp_path / "pa.tif"), *common]) == 0
    assert main(["predict", "--model", str(package), "--output", str(tmp_path / "b.tif"),
                 "--probabilities", str(tmp_path / "pb.tif"), *common]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "pa.tif"),
                                  tifffile.imread(tmp_path / "pb.tif"))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a.tif"),
                                  tifffile.imread(tmp_path / "b.tif"))


def test_a_package_we_cannot_run_gets_one_line(tmp_path):
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("rdf.yaml", yaml.safe_dump({"type": "model", "format_version": "0.5.3",
                                                     "weights": {"keras_hdf5": {}}}))
    result = subprocess.run([sys.executable, "-m", "napari_unet.cli", "predict", "--model",
                             str(foreign), "--input", "x.tif", "--output", str(tmp_path / "y.tif")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "not exported by napari-unet" in result.stderr and "keras_hdf5" in result.stderr


def test_cli_exports_onnx_and_torchscript_that_match_torch(packages, tmp_path):
    import onnxruntime

    run, _ = packages["unet"]
    model = load_checkpoint(run).model
    onnx_path, script_path = tmp_path / "m.onnx", tmp_path / "m.pt"
    assert main(["export", "--run", str(run), "--format", "onnx", "--output", str(onnx_path)]) == 0
    assert main(["export", "--run", str(run), "--format", "torchscript", "--output",
                 str(script_path)]) == 0
    x = torch.randn(2, 1, 204, 220)  # not the traced window: sizes are dynamic
    with torch.no_grad():
        expected = model(x).numpy()
        scripted = torch.jit.load(str(script_path))(x).numpy()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    exported = session.run(None, {"input": x.numpy()})[0]
    assert expected.shape == (2, 2, 20, 36)
    assert np.abs(exported - expected).max() < 1e-4 and np.abs(scripted - expected).max() < 1e-4


def test_export_never_overwrites_without_asking(packages, tmp_path, capsys):
    run, _ = packages["tiny_unet"]
    target = tmp_path / "model.zip"
    target.write_bytes(b"keep")
    assert main(["export", "--run", str(run), "--format", "bioimageio", "--output",
                 str(target)]) == 2
    assert "--overwrite" in capsys.readouterr().err and target.read_bytes() == b"keep"
