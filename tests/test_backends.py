"""CPU backends through the exported graph, inside the engine's own sliding window; the choice
of backend and device (Apple GPUs mocked: there is no Mac here)."""
import numpy as np
import pytest
import torch
from export_support import make_run, real_image

from napari_unet.cli import build_parser, main
from napari_unet.engine import load_checkpoint, predict_array, runtime
from napari_unet.engine.prediction import backends
from napari_unet.engine.prediction import predict as prediction
from napari_unet.engine.prediction.backends import backend_model, choose_backend
from napari_unet.errors import ConfigError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backends")
    return {family: make_run(folder, family) for family in ("tiny_unet", "unet")}


@pytest.mark.parametrize("family", ["tiny_unet", "unet"])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_graph_predicts_what_torch_predicts(runs, family, backend):
    # tiles, overlap and mirror TTA are the engine's: only the forward pass changes hands
    checkpoint = load_checkpoint(runs[family])
    image = real_image(family)[:200, :300]
    # the unpadded UNet's 316 window gives 132-pixel tiles; TinyUNet's tiles are its windows
    window = [316] if family == "unet" else [128]
    options = dict(tile_size=window, overlap=0.5, tta="mirror", amp="off", device="cpu")
    expected, expected_labels = predict_array(checkpoint, image, backend="torch", **options)
    probabilities, labels = predict_array(checkpoint, image, backend=backend, **options)
    assert probabilities.shape == expected.shape == image.shape
    assert np.abs(probabilities - expected).max() < 1e-4
    assert (labels != expected_labels).mean() < 1e-4


def test_openvino_bf16_stays_close_to_torch_bf16(runs):
    checkpoint = load_checkpoint(runs["tiny_unet"])
    image = real_image("tiny_unet")[:128, :256]
    options = dict(tile_size=[128], amp="bf16", device="cpu")
    expected, _ = predict_array(checkpoint, image, backend="torch", **options)
    probabilities, _ = predict_array(checkpoint, image, backend="openvino", **options)
    # probabilities: bf16 keeps 8 bits of mantissa, as torch's own bf16 does
    assert np.abs(probabilities - expected).max() < 0.05


def test_the_exported_graph_is_made_once_per_model(runs, monkeypatch):
    model = load_checkpoint(runs["tiny_unet"]).model
    first = backend_model(model, "onnxruntime", CPU, "off")
    assert backend_model(model, "onnxruntime", CPU, "off") is first
    with torch.no_grad():
        model.head.bias.add_(1.0)  # new weights: a new graph
    assert backend_model(model, "onnxruntime", CPU, "off") is not first


def test_auto_picks_the_fastest_installed(monkeypatch):
    assert choose_backend("auto", CPU, "bf16") == "openvino"
    assert choose_backend("auto", torch.device("cuda"), "bf16") == "torch"
    assert choose_backend("auto", CPU, "bf16", "unet") == "torch"  # lost end to end on UNet 572
    assert choose_backend("auto", CPU, "bf16", "tiny_unet") == "openvino"
    monkeypatch.setattr(backends, "available", lambda name: name != "openvino")
    assert choose_backend("auto", CPU, "off") == "onnxruntime"
    assert choose_backend("auto", CPU, "bf16") == "torch"  # ONNX Runtime has no bf16 convs


@pytest.mark.parametrize("backend, device, amp, words", [
    ("openvino", "cuda", "off", "--device cpu"),
    ("openvino", "cpu", "fp16", "fp16"),
    ("tensorrt", "cpu", "off", "choose one of"),
])
def test_impossible_backend_choices_say_what_to_do(backend, device, amp, words):
    with pytest.raises(ConfigError, match=words):
        choose_backend(backend, torch.device(device), amp)


def test_onnxruntime_runs_fp32_whatever_amp_says(runs):
    # the CLI's and the widget's default amp is bf16: --backend onnxruntime alone still runs
    assert choose_backend("onnxruntime", CPU, "bf16") == "onnxruntime"
    model = load_checkpoint(runs["tiny_unet"]).model
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        expected = model(x)
    assert (backend_model(model, "onnxruntime", CPU, "bf16")(x) - expected).abs().max() < 1e-4


def test_a_missing_runtime_names_the_extra(monkeypatch):
    monkeypatch.setattr(backends, "available", lambda name: name == "torch")
    with pytest.raises(ConfigError, match=r"\[cpu\]"):
        choose_backend("openvino", CPU, "off")


def test_cli_backend_flag_reaches_the_engine(runs, tmp_path, monkeypatch):
    seen = []
    original = backends.backend_model
    monkeypatch.setattr(prediction, "backend_model",
                        lambda model, name, device, amp: seen.append(name) or original(
                            model, name, device, amp))
    image = tmp_path / "image.tif"
    import tifffile
    tifffile.imwrite(image, real_image("tiny_unet")[:128, :128])
    for backend in ("auto", "onnxruntime"):
        assert main(["predict", "--run", str(runs["tiny_unet"]), "--input", str(image),
                     "--output", str(tmp_path / f"{backend}.tif"), "--amp", "off", "--device",
                     "cpu", "--backend", backend]) == 0
    assert seen == ["auto", "onnxruntime"]


# -- Apple GPUs (mocked) -------------------------------------------------------------------------

def _pretend(monkeypatch, cuda: bool, mps: bool, macos14: bool = True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer",
                        lambda major, minor: macos14, raising=False)


def test_auto_chooses_an_apple_gpu_where_present(monkeypatch):
    _pretend(monkeypatch, cuda=False, mps=True)
    assert runtime.resolve_device("auto") == torch.device("mps")
    assert runtime.resolve_device("mps") == torch.device("mps")
    _pretend(monkeypatch, cuda=False, mps=False)
    assert runtime.resolve_device("auto") == torch.device("cpu")


def test_mps_when_absent_is_a_clear_error(monkeypatch):
    _pretend(monkeypatch, cuda=False, mps=False)
    with pytest.raises(ConfigError, match="no Apple GPU"):
        runtime.resolve_device("mps")


def test_amp_choices_on_apple_gpus(monkeypatch):
    mps = torch.device("mps")
    _pretend(monkeypatch, cuda=False, mps=True, macos14=False)
    assert runtime.check_amp(mps, "fp16") == "fp16" and runtime.check_amp(mps, "off") == "off"
    with pytest.raises(ConfigError, match="macOS 14"):
        runtime.autocast(mps, "bf16")
    _pretend(monkeypatch, cuda=False, mps=True, macos14=True)
    assert runtime.check_amp(mps, "bf16") == "bf16"


def test_the_cli_offers_mps_and_says_when_it_is_absent(monkeypatch, tmp_path, capsys):
    args = build_parser().parse_args(["predict", "--run", "r", "--input", "i.tif", "--output",
                                      "o.tif", "--device", "mps"])
    assert args.device == "mps"
    from napari_unet.engine import TrainConfig
    assert TrainConfig(device="mps").device == "mps"
    _pretend(monkeypatch, cuda=False, mps=False)
    code = main(["train", "--preset", "industrial", "--sample", "dagm", "--out",
                 str(tmp_path / "r"), "--steps", "1", "--device", "mps"])
    assert code == 2 and "no Apple GPU" in capsys.readouterr().err
