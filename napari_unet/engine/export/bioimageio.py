"""Models that leave the app: ONNX, TorchScript and bioimage.io model packages.

- ``export_onnx`` / ``export_torchscript``: the network alone (logits), with dynamic batch and
  spatial sizes, traced on a valid window. ONNX uses torch's TorchScript-based exporter
  (``dynamo=False``): the dynamo exporter cannot yet follow the unpadded UNet's crops.
- ``export_bioimageio``: a zip in the bioimage.io model spec 0.5, built with
  ``bioimageio.spec`` (the library the zoo itself uses): ``pytorch_state_dict`` weights whose
  architecture is a single Python file made from this package's own model source, plus
  ``torchscript`` and ``onnx`` weights converted from it; axes whose sizes say which windows
  the network takes (TinyUNet: multiples of 16; 3D-UNet: multiples of 32; the unpadded UNet:
  188 + 16 k, its output 184 pixels smaller, the 92-pixel margin already cropped); the run's
  normalisation as the spec's preprocessing and the label head's sigmoid/softmax as
  postprocessing, its output channels named by the head (wt/tc/et for BraTS regions); test
  tensors made by the model; a cover; a README with the run's figures. The run's own
  normalisation, label head, threshold and window sizes are kept under ``config.napari_unet``
  so that :func:`.package.load_package` gives back the exact same predictor.

``bioimageio.spec``, ``onnx`` and ``onnxruntime`` come with the ``export`` extra.
"""
from __future__ import annotations

import ast
import json
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import yaml

from ... import builtin
from ...choices import PERCENTILES
from ...errors import ConfigError, OutputExistsError
from ..checkpoint import Checkpoint
from ..data.layout import prepare_image
from ..data.normalization import NormStats, normalize, stats_for_image
from ..labels import LabelHead
from .loader import load_checkpoint
from .onnx import AXIS_NAMES, ONNX_OPSET, export_onnx, export_torchscript, require
from .package import CONFIG_KEY

INPUT_ID, OUTPUT_ID = "raw", "probabilities"
_PACKAGE = Path(__file__).resolve().parents[2]
# the architecture file concatenates these (in this order), then the model's own module
_ARCHITECTURE_SOURCES = ("errors.py", "models/blocks.py")
_MODEL_MODULES = {"unet": "models/unet.py", "tiny_unet": "models/tiny_unet.py",
                  "unet3d": "models/unet3d.py"}
_INSTALL_HINT = "pip install 'napari-unet-torch[export]'"


def architecture_source(model_name: str) -> str:
    """One self-contained Python file that defines the model's class: this package's errors,
    blocks and model modules in a row, their imports of each other removed (a bioimage.io
    ``ArchitectureFromFileDescr`` is one file, loaded without this package installed)."""
    if model_name not in _MODEL_MODULES:
        raise ConfigError(f"unknown model {model_name!r}: choose one of {', '.join(_MODEL_MODULES)}")
    parts = ["from __future__ import annotations\n"]
    for relative in (*_ARCHITECTURE_SOURCES, _MODEL_MODULES[model_name]):
        text = (_PACKAGE / relative).read_text()
        lines = text.splitlines(keepends=True)
        drop = set()
        for node in ast.parse(text).body:
            internal = isinstance(node, ast.ImportFrom) and (
                node.level > 0 or node.module == "__future__"
                or (node.module or "").startswith("napari_unet"))
            if internal:
                drop.update(range(node.lineno - 1, node.end_lineno))
        parts.append(f"\n# ---- napari_unet/{relative} ----\n")
        parts.append("".join(line for i, line in enumerate(lines) if i not in drop))
    return "".join(parts)


# -- bioimage.io -------------------------------------------------------------------------------

def _axis_sizes(model) -> tuple[int, int, int]:
    """(smallest valid input, step between valid inputs, input minus output) along an axis."""
    smallest = model._next_valid(1)
    step = model.size_multiple
    return smallest, step, smallest - model._axis_output(smallest)


def _preprocessing(spec, stats: NormStats, channel_axis, spatial_axes):
    steps = [spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32"))]
    if stats.mode == "percentile_case":  # each image's percentiles per channel, then to -1..1
        steps.append(spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(
            axes=spatial_axes, min_percentile=PERCENTILES[0], max_percentile=PERCENTILES[1])))
        steps.append(spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=2.0, offset=-1.0)))
        steps.append(spec.ClipDescr(kwargs=spec.ClipKwargs(min=-1.5, max=1.5)))
    elif stats.mode == "minus_one_one":
        low, high = np.asarray(stats.low, float), np.asarray(stats.high, float)
        gain = 2.0 / (high - low)
        offset = -low * gain - 1.0
        steps.append(spec.ScaleLinearDescr(kwargs=spec.ScaleLinearAlongAxisKwargs(
            axis=channel_axis, gain=gain.tolist(), offset=offset.tolist())))
        steps.append(spec.ClipDescr(kwargs=spec.ClipKwargs(min=-1.5, max=1.5)))
    elif stats.mode == "zscore":
        steps.append(spec.FixedZeroMeanUnitVarianceDescr(
            kwargs=spec.FixedZeroMeanUnitVarianceAlongAxisKwargs(
                axis=channel_axis, mean=list(stats.mean), std=list(stats.std))))
    return steps


def _postprocessing(spec, head: LabelHead, channel_axis):
    if head.activation == "sigmoid":
        return [spec.SigmoidDescr()]
    return [spec.SoftmaxDescr(kwargs=spec.SoftmaxKwargs(axis=channel_axis))]


def _test_image(checkpoint: Checkpoint, image, window) -> np.ndarray:
    """(1, C, *window) float32 raw intensities: the middle of the user's image (mirrored where
    it is smaller), or seeded noise spread over the normalisation's range."""
    model = checkpoint.model
    if image is None:
        stats = NormStats.from_dict(checkpoint.norm_stats)
        rng = np.random.default_rng(0)
        shape = (model.in_channels, *window)
        if stats.mode == "minus_one_one":
            low = np.asarray(stats.low).reshape(-1, *[1] * len(window))
            high = np.asarray(stats.high).reshape(-1, *[1] * len(window))
            return (low + (high - low) * rng.random(shape))[None].astype(np.float32)
        if stats.mode == "zscore":
            mean = np.asarray(stats.mean).reshape(-1, *[1] * len(window))
            std = np.asarray(stats.std).reshape(-1, *[1] * len(window))
            return (mean + std * rng.standard_normal(shape))[None].astype(np.float32)
        return rng.standard_normal(shape)[None].astype(np.float32)
    prepared = prepare_image(image, model.spatial_dims, model.in_channels)
    dims = model.spatial_dims
    if prepared.ndim - 1 > dims:  # a stack under a 2D model: its middle image
        prepared = prepared[:, prepared.shape[1] // 2]
    region = []
    for size, want in zip(prepared.shape[1:], window):
        start = max(0, (size - want) // 2)
        region.append(slice(start, start + want))
    crop = np.asarray(prepared[(slice(None), *region)], dtype=np.float32)
    pads = [(0, 0)] + [(0, want - have) for have, want in zip(crop.shape[1:], window)]
    return np.pad(crop, pads, mode="reflect" if crop.size > 1 else "edge")[None]


def _model_output(checkpoint: Checkpoint, test_input: np.ndarray) -> np.ndarray:
    """The package's expected output: ours, computed the way the package describes it."""
    stats = NormStats.from_dict(checkpoint.norm_stats)
    x = torch.from_numpy(normalize(test_input[0], stats_for_image(test_input[0], stats))[None])
    with torch.no_grad():
        logits = checkpoint.model.eval().float()(x)
    if checkpoint.head.activation == "sigmoid":
        return torch.sigmoid(logits).numpy()
    return torch.softmax(logits, dim=1).numpy()


def _cover(path: Path, test_input: np.ndarray, test_output: np.ndarray) -> Path:
    """Input | foreground probability, side by side (2:1), grey 8-bit PNG."""
    def middle_2d(array):
        array = array[0, -1 if array is test_output else 0]
        while array.ndim > 2:
            array = array[array.shape[0] // 2]
        low, high = np.percentile(array, (1, 99))
        return np.clip((array - low) / max(high - low, 1e-6), 0, 1)

    output = middle_2d(test_output)
    image = middle_2d(test_input)
    # the unpadded UNet's output is smaller: show the part of the input it covers
    margins = [(have - want) // 2 for have, want in zip(image.shape, output.shape)]
    image = image[margins[0]:margins[0] + output.shape[0], margins[1]:margins[1] + output.shape[1]]
    picture = np.concatenate([image, output], axis=1)
    iio.imwrite(path, (picture * 255).astype(np.uint8))
    return path


def _readme(checkpoint: Checkpoint, run_dir: Path | None, axes_text: str) -> str:
    config = checkpoint.config
    model = checkpoint.model
    lines = [f"# {model.description} trained with napari-unet-torch", "",
             (f"Preset `{config.preset}`, model `{model.name}` "
             f"({sum(p.numel() for p in model.parameters()):,} parameters, "
             f"{json.dumps({k: v for k, v in model.hparams.items() if k != 'name'})})."), "",
             "## Training data", ""]
    source = (run_dir / "config.yaml") if run_dir else None
    lines.append(f"Trained for {checkpoint.step} steps on {config.spatial_dims}D images with "
                 f"{model.in_channels} channel(s) and {checkpoint.head.num_classes}"
                 f" classes (fold {config.fold} of {config.folds}; patch "
                 f"{'x'.join(map(str, config.patch_size))}, batch {config.batch_size}, "
                 f"loss {config.loss}, optimizer {config.optimizer}, lr {config.lr}). "
                 f"The run's full configuration: `config.yaml` of the run"
                 + (f" ({source.name} in {run_dir.name})." if source else "."))
    chain = started_from(checkpoint)
    if chain:
        lines += ["", "## Started from", "", _started_text(chain)]
    lines += ["", "## Figures", "",
              f"Best validation Dice during training: {checkpoint.best_dice:.4f}."]
    evaluation = run_dir / "evaluation.json" if run_dir else None
    if evaluation is not None and evaluation.is_file():
        metrics = json.loads(evaluation.read_text())
        shown = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
        lines.append("Evaluation of the run (`napari_unet evaluate`): "
                     + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                 for k, v in shown.items()) + ".")
    lines += ["", "## Input and output", "", axes_text, "",
              f"Preprocessing: the run's `{config.normalization}` normalisation (NaN and Inf "
              "inputs are not replaced by the package, as napari-unet does). Output: "
              + _output_text(checkpoint.head),
              "", ("Predicting big images: napari-unet tiles them with overlapping windows and "
              "Gaussian blending; `napari_unet predict --model THIS.zip` does the same."), ""]
    return "\n".join(lines)


def started_from(checkpoint: Checkpoint) -> list[dict]:
    """Where the weights started (``--init-from``), nearest first: a built-in model (its title
    and data sources with their licenses, from its card) or a run folder, followed through the
    runs' own starts while their folders exist."""
    chain, start, seen = [], checkpoint.config.init_from, set()
    while start and str(start) not in seen and len(chain) < 8:
        seen.add(str(start))
        name = builtin.builtin_name(start)
        if name:
            card = builtin.card(name)
            chain.append({"builtin": name, "title": card.get("title", name), "sources": [
                {k: source.get(k) for k in ("name", "url", "commit", "license")}
                for source in card.get("sources", ())]})
            break
        chain.append({"run": str(start)})
        config = Path(start) / "config.yaml"
        start = (yaml.safe_load(config.read_text()) or {}).get("init_from") \
            if config.is_file() else None
    return chain


def _started_text(chain: list[dict]) -> str:
    parts = []
    for link in chain:
        if "builtin" in link:
            sources = "; ".join(f"{s['name']} ({s['url']}, license {s['license']})"
                                for s in link["sources"])
            parts.append(f"the built-in napari-unet model `{link['builtin']}` "
                         f"({link['title']}; trained on {sources})")
        else:
            parts.append(f"the run `{link['run']}`")
    return "Fine-tuned from " + ", itself fine-tuned from ".join(parts) + "."


def _output_text(head: LabelHead) -> str:
    if head.regions:
        parts = [f"{name} ({', '.join(map(str, region))}; written back as {value})"
                 for name, region, value in zip(head.names, head.regions, head.values)]
        return ("one sigmoid per region, each the probability of a set of label values: "
                + "; ".join(parts) + ". Regions overlap: a voxel takes the value of the "
                "innermost region whose probability passes the threshold.")
    if head.objects:
        return ("the probabilities (softmax over the channel axis) of background, object "
                "interior and object boundary, learnt from instance masks. The objects (one "
                "id each) are made from them by a seeded watershed, which the bioimage.io "
                "spec cannot describe: seeds are the connected regions of interior >= 0.5, "
                "flooded over the boundary probability within interior + boundary >= 0.5. "
                "`napari_unet predict --model THIS.zip --input IMAGE --output OBJECTS.tif` "
                "makes them (and napari-unet's Predict widget shows them as a labels layer); "
                "other consumers get the three probability maps.")
    if head.outputs == 1:
        return "the sigmoid of the logit."
    return "class probabilities (softmax over the channel axis)."


def export_bioimageio(checkpoint, path, *, image=None, name: str | None = None,
                      authors=("napari-unet-torch user",), overwrite: bool = False) -> Path:
    """Write a bioimage.io model package (zip) of a run; ``image`` gives the test input."""
    spec = require("bioimageio.spec.model.v0_5")
    package = require("bioimageio.spec")
    require("onnx")
    run_dir = Path(checkpoint).resolve() if not isinstance(checkpoint, Checkpoint) else None
    checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    run_dir = run_dir if run_dir is not None and run_dir.is_dir() else None
    path = Path(path)
    _check_exportable(checkpoint, path, overwrite)
    model = checkpoint.model.eval().float().cpu()
    window = tuple(checkpoint.data_info.get("input_size") or
                   model.valid_input_size(checkpoint.config.patch_size))
    test_input = _test_image(checkpoint, image, window)
    test_output = _model_output(checkpoint, test_input)
    chain = started_from(checkpoint)
    with tempfile.TemporaryDirectory(prefix="napari_unet_export_") as tmp:
        tmp = Path(tmp)
        _write_files(tmp, model, test_input, test_output)
        inputs, outputs, axes_text = _tensors(spec, checkpoint, tmp)
        (tmp / "README.md").write_text(_readme(checkpoint, run_dir, axes_text))
        description = spec.ModelDescr(
            name=name or f"napari-unet {model.description} ({checkpoint.config.preset})",
            description=f"{model.description} segmentation trained with napari-unet-torch "
                        f"(preset {checkpoint.config.preset})."
                        + (" " + _started_text(chain) if chain else ""),
            authors=[spec.Author(name=a) for a in authors],
            cite=_citations(spec, model.name),
            license=spec.LicenseId("BSD-3-Clause"),
            documentation=spec.FileDescr(source=tmp / "README.md"),
            covers=[spec.FileDescr(source=tmp / "cover.png")],
            tags=["segmentation", f"{model.spatial_dims}d", "unet", "napari", "pytorch"]
            + (["instance-segmentation", "watershed"] if checkpoint.head.objects else []),
            inputs=inputs, outputs=outputs, weights=_weights(spec, model, tmp),
            config=spec.Config(**{CONFIG_KEY: _ours(checkpoint, window)}),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.stem}.partial.zip")
        package.save_bioimageio_package(description, output_path=partial)
        partial.replace(path)
    return path


def _check_exportable(checkpoint: Checkpoint, path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists: pass --overwrite to replace it")
    if path.suffix != ".zip":
        raise ConfigError(f"a bioimage.io package is a .zip file, not {path.name!r}: "
                          f"use e.g. --output model.zip")
    mode = checkpoint.norm_stats.get("mode")
    if mode == "zscore_case" or checkpoint.config.resample > 1:
        raise ConfigError(
            "a bioimage.io package cannot describe this run's "
            + ("per-case z-score inside the object" if mode == "zscore_case"
               else "low-resolution prediction") + ": export --format onnx or torchscript "
            "(the network alone) and predict with napari-unet, which does both")


def _write_files(tmp: Path, model, test_input: np.ndarray, test_output: np.ndarray) -> None:
    """The package's files: test tensors, architecture, the three weight formats, a cover."""
    np.save(tmp / "test_input.npy", test_input)
    np.save(tmp / "test_output.npy", test_output)
    (tmp / "architecture.py").write_text(architecture_source(model.name))
    torch.save(model.state_dict(), tmp / "weights.pt")
    example = torch.from_numpy(test_input)
    export_torchscript(model, tmp / "weights_torchscript.pt", example)
    export_onnx(model, tmp / "weights.onnx", example)
    _cover(tmp / "cover.png", test_input, test_output)


def _tensors(spec, checkpoint: Checkpoint, tmp: Path):
    """(inputs, outputs, the README's text about them): axes whose sizes say which windows the
    network takes, the normalisation and the head's activation as pre- and postprocessing."""
    model = checkpoint.model
    smallest, step, shrink = _axis_sizes(model)
    channel_axis = spec.AxisId("channel")
    names = AXIS_NAMES[-model.spatial_dims:]
    input_axes = [spec.BatchAxis(), spec.ChannelAxis(channel_names=[
        spec.Identifier(f"channel{i}") for i in range(model.in_channels)])]
    input_axes += [spec.SpaceInputAxis(id=spec.AxisId(n), size=spec.ParameterizedSize(
        min=smallest, step=step)) for n in names]
    output_axes = [spec.BatchAxis(), spec.ChannelAxis(
        channel_names=[spec.Identifier(key) for key in checkpoint.head.keys])]
    output_axes += [spec.SpaceOutputAxis(id=spec.AxisId(n), size=spec.SizeReference(
        tensor_id=spec.TensorId(INPUT_ID), axis_id=spec.AxisId(n), offset=-shrink))
        for n in names]
    axes_text = (f"Input `{INPUT_ID}` (batch, channel, {', '.join(names)}): each spatial "
                 f"size {smallest} + {step} k. Output `{OUTPUT_ID}`: "
                 + (f"{shrink} pixels smaller per axis (a {shrink // 2}-pixel margin "
                    f"is cropped by the unpadded network: feed it the image mirrored by "
                    f"{shrink // 2} pixels on every side)" if shrink else
                    "the input's size") + ".")
    inputs = [spec.InputTensorDescr(
        id=spec.TensorId(INPUT_ID), axes=input_axes,
        test_tensor=spec.FileDescr(source=tmp / "test_input.npy"),
        data=spec.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=_preprocessing(spec, NormStats.from_dict(checkpoint.norm_stats),
                                     channel_axis, [spec.AxisId(n) for n in names]))]
    outputs = [spec.OutputTensorDescr(
        id=spec.TensorId(OUTPUT_ID), axes=output_axes,
        test_tensor=spec.FileDescr(source=tmp / "test_output.npy"),
        data=spec.IntervalOrRatioDataDescr(type="float32"),
        postprocessing=_postprocessing(spec, checkpoint.head, channel_axis))]
    return inputs, outputs, axes_text


def _weights(spec, model, tmp: Path):
    """pytorch_state_dict weights (architecture: one Python file), and TorchScript and ONNX
    converted from them."""
    version = spec.Version(torch.__version__.split("+")[0])
    state_dict = spec.PytorchStateDictWeightsDescr(
        source=tmp / "weights.pt", pytorch_version=version,
        architecture=spec.ArchitectureFromFileDescr(
            source=tmp / "architecture.py", callable=spec.Identifier(type(model).__name__),
            kwargs={k: v for k, v in model.hparams.items() if k != "name"}))
    return spec.WeightsDescr(
        pytorch_state_dict=state_dict,
        torchscript=spec.TorchscriptWeightsDescr(
            source=tmp / "weights_torchscript.pt", pytorch_version=version,
            parent="pytorch_state_dict"),
        onnx=spec.OnnxWeightsDescr(source=tmp / "weights.onnx", opset_version=ONNX_OPSET,
                                   parent="pytorch_state_dict"))


def _ours(checkpoint: Checkpoint, window) -> dict:
    """What napari-unet needs to predict with the package as with the run (package.py)."""
    model = checkpoint.model
    return {"model": model.name, "hparams": dict(model.hparams),
            "norm_stats": NormStats.from_dict(checkpoint.norm_stats).to_dict(),
            "threshold": checkpoint.config.threshold, "input_size": list(window),
            "labels": checkpoint.head.to_dict(), "data_info": checkpoint.data_info,
            "config": checkpoint.config.to_dict(), "best_dice": checkpoint.best_dice,
            "step": checkpoint.step, "started_from": started_from(checkpoint)}


def _citations(spec, model_name: str):
    papers = {
        "unet": (("Ronneberger, Fischer, Brox: U-Net: Convolutional Networks for Biomedical "
                 "Image Segmentation (MICCAI 2015)"), "10.1007/978-3-319-24574-4_28"),
        "tiny_unet": (("Ronneberger, Fischer, Brox: U-Net (MICCAI 2015); TinyUNet after "
                      "NVIDIA's UNet Industrial"), "10.1007/978-3-319-24574-4_28"),
        "unet3d": ("Isensee et al.: No New-Net (BrainLes 2018)", "10.1007/978-3-030-11726-9_21"),
    }
    text, doi = papers[model_name]
    return [spec.CiteEntry(text=text, doi=spec.Doi(doi))]
