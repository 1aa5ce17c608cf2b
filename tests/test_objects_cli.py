"""Objects through the CLI: train --instances boundary, predict (objects written), evaluate
(the field's scores printed), predict --instances for a model of classes."""
import json

import numpy as np
import pytest
import tifffile
from test_instances_watershed import balls

from napari_unet.cli import main
from napari_unet.engine import load_checkpoint

TINY = ["--steps", "4", "--batch-size", "2", "--patch-size", "32", "--base-channels", "4",
        "--amp", "off", "--device", "cpu", "--val-every", "4", "--checkpoint-every", "4",
        "--preset", "industrial", "--loss", "dice_ce"]


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory):
    """Two 48 x 64 images of touching bright discs, their instance ids (> 255 ids)."""
    root = tmp_path_factory.mktemp("nuclei")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        centres = [(14, 12 + 20 * k), (14, 28 + 20 * k), (36, 20), (36, 44)]  # 2 touch
        ids = balls((48, 64), centres, 9).astype(np.uint16)
        ids[ids > 0] += 300
        image = (ids > 0) * 180 + rng.normal(30, 10, ids.shape)
        tifffile.imwrite(root / "images" / f"n{k}.tif", image.clip(0, 255).astype(np.uint8))
        tifffile.imwrite(root / "masks" / f"n{k}.tif", ids)
    return root


@pytest.fixture(scope="module")
def objects_run(nuclei, tmp_path_factory):
    run = tmp_path_factory.mktemp("objects") / "run"
    assert main(["train", "--data", str(nuclei), "--instances", "boundary", "--out", str(run),
                 *TINY]) == 0
    return run


def test_a_run_of_objects_learns_three_classes_and_predicts_objects(objects_run, nuclei,
                                                                    tmp_path, capsys):
    checkpoint = load_checkpoint(objects_run)
    assert checkpoint.head.kind == "objects" and checkpoint.model.hparams["num_classes"] == 3
    out = tmp_path / "objects.tif"
    assert main(["predict", "--run", str(objects_run), "--input",
                 str(nuclei / "images" / "n0.tif"), "--output", str(out), "--device", "cpu",
                 "--amp", "off", "--probabilities", str(tmp_path / "p.tif")]) == 0
    objects = tifffile.imread(out)
    assert objects.dtype == np.uint32 and objects.shape == (48, 64)
    assert tifffile.imread(tmp_path / "p.tif").shape == (3, 48, 64)
    classes = tmp_path / "classes.tif"
    assert main(["predict", "--run", str(objects_run), "--input",
                 str(nuclei / "images" / "n0.tif"), "--output", str(classes), "--device",
                 "cpu", "--amp", "off", "--instances", "off"]) == 0
    assert tifffile.imread(classes).dtype == np.uint8 and tifffile.imread(classes).max() <= 2


def test_evaluate_prints_and_saves_the_object_scores(objects_run, nuclei, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--run", str(objects_run), "--data", str(nuclei), "--device",
                 "cpu", "--amp", "off"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("objects: ap50=") and "rand_score=" in line and "merges=" in line
    saved = json.loads((objects_run / "evaluation.json").read_text())["objects"]
    assert saved["true_objects"] == 8 and saved["images"] == 2
    assert 0.0 <= saved["ap50"] <= 1.0 and len(saved["ap_per_threshold"]) == 10


def test_a_model_of_classes_gives_connected_components_when_asked(nuclei, tmp_path, capsys):
    run = tmp_path / "classes"
    assert main(["train", "--data", str(nuclei), "--out", str(run), *TINY]) == 0
    assert load_checkpoint(run).head.kind == "classes"
    out = tmp_path / "cc.tif"
    assert main(["predict", "--run", str(run), "--input", str(nuclei / "images" / "n1.tif"),
                 "--output", str(out), "--device", "cpu", "--amp", "off",
                 "--instances"]) == 0
    assert tifffile.imread(out).dtype == np.uint32
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(nuclei), "--device", "cpu",
                 "--amp", "off", "--instances"]) == 0
    assert "true_objects=8" in capsys.readouterr().out  # the ids kept through the merge
    # the same objects with ids 1..4 (few enough to read as classes): still objects
    few = _few_ids(nuclei, tmp_path / "few")
    assert main(["evaluate", "--run", str(run), "--data", str(few), "--device", "cpu",
                 "--amp", "off", "--instances"]) == 0
    captured = capsys.readouterr()
    assert "true_objects=8" in captured.out  # 6 connected components: 2 touch
    assert "dice_class1=" in captured.out and "dice_class2" not in captured.out
    assert "each value is read as an object id" in captured.err


def _few_ids(nuclei, folder):
    """The nuclei with ids 1..4 (few enough for the rule to read them as classes)."""
    (folder / "masks").mkdir(parents=True)
    (folder / "images").symlink_to(nuclei / "images", target_is_directory=True)
    for path in sorted((nuclei / "masks").glob("*.tif")):
        ids = tifffile.imread(path)
        tifffile.imwrite(folder / "masks" / path.name,
                         np.where(ids > 0, ids - 300, 0).astype(np.uint8))
    return folder


def test_instances_merge_merges_masks_of_few_ids_as_asked(nuclei, tmp_path, capsys):
    few = _few_ids(nuclei, tmp_path / "few")
    capsys.readouterr()
    assert main(["train", "--data", str(few), "--out", str(tmp_path / "run"), "--instances",
                 "merge", *TINY, "--steps", "1"]) == 0
    assert load_checkpoint(tmp_path / "run").head.num_classes == 2  # not 5 classes
    assert "the mask values 1..4 are read as object ids" in capsys.readouterr().err


def test_membranes_of_a_model_of_objects_is_a_one_line_error(objects_run, nuclei, tmp_path,
                                                            capsys):
    capsys.readouterr()
    code = main(["predict", "--run", str(objects_run), "--input",
                 str(nuclei / "images" / "n0.tif"), "--output", str(tmp_path / "x.tif"),
                 "--device", "cpu", "--instances", "membranes"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "one foreground" in err[0]


def test_objects_of_a_large_image_are_made_by_blocks_with_the_same_result(
        objects_run, nuclei, tmp_path, monkeypatch):
    from test_instances_watershed import same_partition

    from napari_unet.engine.prediction import objects as module

    args = ["predict", "--run", str(objects_run), "--input", str(nuclei / "images" / "n0.tif"),
            "--device", "cpu", "--amp", "off"]
    assert main([*args, "--output", str(tmp_path / "whole.tif")]) == 0
    calls = []
    original = module.objects_from_probabilities
    monkeypatch.setattr(module, "BLOCK_VOXELS", 1000)
    monkeypatch.setattr(module, "BLOCK_SIDE", 20)
    monkeypatch.setattr(module, "objects_from_probabilities",
                        lambda *a, **k: calls.append(k) or original(*a, **k))
    assert main([*args, "--output", str(tmp_path / "blocks.tif")]) == 0
    assert calls[0]["block_shape"] == (20, 20)
    whole = tifffile.imread(tmp_path / "whole.tif")
    assert len(np.unique(whole)) > 2  # several objects (of a barely trained model)
    assert same_partition(whole, tifffile.imread(tmp_path / "blocks.tif"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks.tif", "whole.tif"]


def test_a_package_of_objects_says_how_objects_are_made_and_predicts_them(
        objects_run, nuclei, tmp_path):
    import zipfile

    import yaml

    package = tmp_path / "objects.zip"
    assert main(["export", "--run", str(objects_run), "--format", "bioimageio", "--output",
                 str(package), "--test-image", str(nuclei / "images" / "n0.tif")]) == 0
    with zipfile.ZipFile(package) as archive:
        readme = archive.read("README.md").decode()
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
    assert "watershed" in readme and "napari_unet predict --model" in readme
    assert "instance-segmentation" in rdf["tags"]
    assert [c for c in rdf["outputs"][0]["axes"] if c.get("type") == "channel"][0][
        "channel_names"] == ["background", "interior", "boundary"]
    args = ["--input", str(nuclei / "images" / "n1.tif"), "--device", "cpu", "--amp", "off"]
    assert main(["predict", "--model", str(package), "--output", str(tmp_path / "a.tif"),
                 *args]) == 0
    assert main(["predict", "--run", str(objects_run), "--output", str(tmp_path / "b.tif"),
                 *args]) == 0
    from test_instances_watershed import same_partition

    assert tifffile.imread(tmp_path / "a.tif").dtype == np.uint32
    assert same_partition(tifffile.imread(tmp_path / "a.tif"), tifffile.imread(tmp_path / "b.tif"))


def test_binary_masks_for_objects_are_said_to_merge_touching_ones(objects_run, nuclei,
                                                                  tmp_path, capsys):
    from napari_unet.engine import load_dataset

    binary = tmp_path / "binary"
    (binary / "masks").mkdir(parents=True)
    (binary / "images").symlink_to(nuclei / "images", target_is_directory=True)
    for path in sorted((nuclei / "masks").glob("*.tif")):
        tifffile.imwrite(binary / "masks" / path.name,
                         np.where(tifffile.imread(path) > 0, 255, 0).astype(np.uint8))
    [note] = load_dataset(binary, instances="boundary").notes
    assert "one object value (values found: 0, 255)" in note and "merge" in note
    assert load_dataset(nuclei, instances="boundary").notes == []
    # scored against them, the true objects are their connected components (not one id 255)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(objects_run), "--data", str(binary), "--device",
                 "cpu", "--amp", "off"]) == 0
    captured = capsys.readouterr()
    assert "true_objects=6" in captured.out  # 4 discs an image, 2 of them touching
    assert "touching objects merge" in captured.err


def test_objects_made_in_a_mode_that_does_not_fit_the_model_are_said():
    from test_instances_watershed import balls

    from napari_unet.engine.labels import LabelHead
    from napari_unet.engine.prediction.predict import make_objects, objects_note

    head = LabelHead.for_outputs(1)
    nuclei = (balls((64, 64), [(16, 16), (16, 44), (44, 30)], 7) > 0).astype(np.uint8)
    membranes = np.zeros((64, 64), np.uint8)
    membranes[::16], membranes[:, ::16] = 1, 1  # a grid: 16 cells
    for labels, how, warned in [(nuclei, "membranes", True), (membranes, "membranes", False),
                                (nuclei, "auto", False), (membranes, "auto", True)]:
        objects = make_objects(labels.astype(np.float32), labels, head, how)
        note = objects_note(labels, objects, head, how)
        assert (note is not None) == warned, (how, note)
    note = objects_note(nuclei, make_objects(nuclei.astype(np.float32), nuclei, head,
                                             "membranes"), head, "membranes")
    assert "use --instances auto" in note
