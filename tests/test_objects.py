"""Objects (issue 23): instance masks as background / interior / boundary targets, through the
mask rule, the files, the training set, and the label head."""
import numpy as np
import pytest
import tifffile

from napari_unet.choices import IGNORE_CLASS
from napari_unet.engine import TrainConfig, load_dataset
from napari_unet.engine.labels import LabelHead
from napari_unet.errors import ConfigError, DataError
from napari_unet.masks import mask_classes, rule_of
from napari_unet.objects import object_classes
from napari_unet.training_set import write_training_pairs

B, N, E = 0, 1, 2  # background, interior (inside), edge (boundary)


def two_touching_squares(dtype=np.uint16, second=300):
    ids = np.zeros((6, 8), dtype)
    ids[1:5, 1:4] = 7       # 4 x 3
    ids[1:5, 4:7] = second  # 4 x 3, touching on the right
    return ids


def test_each_object_gets_its_own_inner_outline():
    classes = object_classes(two_touching_squares())
    assert classes.tolist() == [
        [B, B, B, B, B, B, B, B],
        [B, E, E, E, E, E, E, B],
        [B, E, N, E, E, N, E, B],
        [B, E, N, E, E, N, E, B],
        [B, E, E, E, E, E, E, B],
        [B, B, B, B, B, B, B, B]]
    # one object the size of both: no boundary between the halves
    merged = (two_touching_squares() > 0).astype(np.uint8)
    assert (object_classes(merged)[2:4, 2:6] == N).all()


def test_the_outline_is_made_in_3d_too_and_unlabelled_pixels_stay_unlabelled():
    ids = np.zeros((5, 5, 5), np.uint8)
    ids[1:4, 1:4, 1:4] = 3
    classes = object_classes(ids)
    assert classes[2, 2, 2] == N and (classes[ids == 3] != B).all()
    assert int((classes == N).sum()) == 1 and int((classes == E).sum()) == 26
    ignore = np.zeros(ids.shape, bool)
    ignore[0] = True
    assert (object_classes(ids, ignore)[0] == IGNORE_CLASS).all()


def test_the_rule_reads_every_value_as_one_object_whatever_the_count():
    few = two_touching_squares(np.uint8, 30)  # two values: classes 7 and 30 without it
    assert mask_classes(few, instances="merge")[0].max() == 30
    classes, merged = mask_classes(few, instances="boundary")
    assert not merged and classes.tolist() == object_classes(few).tolist()
    marked = few.copy()
    marked[0, 0] = 9
    assert mask_classes(marked, instances="boundary", ignore_value=9)[0][0, 0] == IGNORE_CLASS
    with pytest.raises(ConfigError, match="--instances boundary"):
        mask_classes(few, foreground_value=7, instances="boundary")
    with pytest.raises(ConfigError, match="--instances boundary"):
        mask_classes(few, unlabeled="ignore", instances="boundary")
    with pytest.raises(DataError, match="one non-negative integer per object"):
        mask_classes(np.array([[0.5, 1.0]]), instances="boundary")


def test_the_rule_of_a_config_carries_boundary_only():
    assert rule_of(TrainConfig(instances="boundary"))["instances"] == "boundary"
    assert "instances" not in rule_of(TrainConfig())


def test_files_of_a_stack_get_2d_outlines_and_keep_their_ids(tmp_path):
    ids = np.stack([two_touching_squares(), np.zeros((6, 8), np.uint16)])
    ids[1, 2:4, 2:4] = 5  # a 2 x 2 object on the second slice
    image = np.random.default_rng(0).integers(0, 255, ids.shape, dtype=np.uint8)
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "mask.tif", ids)
    data = load_dataset(images=tmp_path / "image.tif", masks=tmp_path / "mask.tif",
                        spatial_dims=2, instances="boundary")
    assert len(data) == 2 and data.num_classes == 3
    assert data.masks[0].tolist() == object_classes(ids[0]).tolist()
    assert (data.masks[1][ids[1] == 5] == E).all()  # 2D: no outline taken across slices
    assert data.objects[1].tolist() == ids[1].tolist()
    # without the option the ids merge into one class and are kept for the object scores
    merged = load_dataset(images=tmp_path / "image.tif", masks=tmp_path / "mask.tif",
                          spatial_dims=2)
    assert merged.num_classes == 2 and merged.objects[0].tolist() == ids[0].tolist()
    assert merged.subset([1]).objects[0].tolist() == ids[1].tolist()


def test_many_ids_merged_are_kept_for_the_scores(tmp_path):
    ids = np.zeros((32, 32), np.uint16)
    for k in range(20):
        ids[(k // 5) * 8:(k // 5) * 8 + 4, (k % 5) * 6:(k % 5) * 6 + 4] = 1000 + k
    tifffile.imwrite(tmp_path / "image.tif", ids.astype(np.uint8))
    tifffile.imwrite(tmp_path / "mask.tif", ids)
    data = load_dataset(images=tmp_path / "image.tif", masks=tmp_path / "mask.tif")
    assert data.masks[0].max() == 1 and data.objects[0].tolist() == ids.tolist()
    assert data.subset([0]).objects[0] is data.objects[0]


def test_a_mask_of_few_objects_in_a_set_of_instances_keeps_its_ids(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    few = two_touching_squares(np.uint8, 30)  # 2 objects: alone, read as classes 7 and 30
    many = np.zeros((6, 8), np.uint16)
    many[:, :] = np.arange(48).reshape(6, 8) + 1  # 48 objects: instances
    for name, ids in (("a", few), ("b", many)):
        tifffile.imwrite(tmp_path / "images" / f"{name}.tif", ids.astype(np.uint8))
        tifffile.imwrite(tmp_path / "masks" / f"{name}.tif", ids)
    data = load_dataset(tmp_path)
    assert [int(m.max()) for m in data.masks] == [1, 1]
    assert data.objects[0].tolist() == few.tolist()  # not merged into one by its outline


def test_a_run_of_objects_keeps_corrected_ids_in_its_training_set(tmp_path):
    ids = two_touching_squares()
    image = np.zeros(ids.shape, np.uint8)
    report = write_training_pairs(tmp_path, [("cells", image, ids)], 2, instances="boundary")
    saved = tifffile.imread(tmp_path / "masks" / f"{report['written'][0]}.tif")
    assert saved.dtype == np.uint16 and saved.tolist() == ids.tolist()
    report = write_training_pairs(tmp_path / "classes", [("cells", image, ids)], 2)
    saved = tifffile.imread(tmp_path / "classes" / "masks" / f"{report['written'][0]}.tif")
    assert saved.max() <= 255  # the default rule writes classes


def test_the_head_of_objects_is_three_softmax_classes_and_survives_a_round_trip():
    head = LabelHead.from_config(TrainConfig(instances="boundary", loss="dice_ce"), 3)
    assert (head.kind, head.outputs, head.activation) == ("objects", 3, "softmax")
    assert head.names == ["background", "interior", "boundary"]
    assert LabelHead.from_dict(head.to_dict()) == head
    assert LabelHead.from_dict({**head.to_dict(), "objects": False}).kind == "classes"
    with pytest.raises(ConfigError, match="dice_ce"):
        LabelHead.from_config(TrainConfig(instances="boundary", loss="adaptive"), 3)


def test_a_model_of_objects_carries_its_watershed_seed_threshold():
    """Two nuclei that touch, joined by a neck where the model is less sure of the interior
    (0.8): seeds at the default 0.5 join them into one object, a head whose seed threshold is
    0.95 (the built-in nuclei's) keeps them apart; the threshold survives the round trip."""
    from dataclasses import replace

    from napari_unet.engine.prediction.objects import make_objects

    probabilities = np.zeros((3, 20, 40), np.float32)
    probabilities[0] = 1.0
    interior = np.zeros((20, 40), np.float32)
    interior[5:15, 5:19], interior[5:15, 21:35] = 0.99, 0.99
    interior[8:12, 19:21] = 0.8  # the neck
    probabilities[1] = interior
    probabilities[2] = np.where(interior > 0, 1.0 - interior, 0.0)
    probabilities[0] = np.where(interior > 0, 0.0, 1.0)
    head = LabelHead.from_config(TrainConfig(instances="boundary", loss="dice_ce"), 3)
    labels = probabilities.argmax(0)
    joined = make_objects(probabilities, labels, head)
    assert len(np.unique(joined[joined > 0])) == 1
    sure = replace(head, seed_threshold=0.95)
    apart = make_objects(probabilities, labels, sure)
    assert len(np.unique(apart[apart > 0])) == 2
    assert LabelHead.from_dict(sure.to_dict()).seed_threshold == 0.95
    older = {k: v for k, v in head.to_dict().items() if k != "seed_threshold"}
    assert LabelHead.from_dict(older).seed_threshold == 0.5  # a head saved before it
