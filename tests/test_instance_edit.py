"""Objects in napari: the edits of instance labels (delete, merge, split), the Correct widget's
Objects box, the Train widget's Objects choice and a prediction of objects as a layer."""
import numpy as np
import pytest
from gui_support import PLUGIN, gui
from test_instances_watershed import balls

from napari_unet.errors import DataError
from napari_unet.instance_edit import (
    delete_objects,
    ids_at,
    merge_objects,
    split_by_line,
    split_object,
)


def three_squares():
    labels = np.zeros((20, 30), np.uint32)
    labels[2:8, 2:8] = 4
    labels[2:8, 8:14] = 9      # touching 4
    labels[12:18, 20:26] = 11
    return labels


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_points_pick_objects_and_delete_and_merge_edit_only_them():
    labels = three_squares()
    assert ids_at(labels, [[3, 3], [4.4, 9.6], [0, 0], [50, 50], [-1, 3], [3, 4]]) == [4, 9]
    assert ids_at(labels, np.zeros((0, 2))) == []
    assert ids_at(labels, [[7, 3, 3]]) == [4]  # a point of more axes: the last ones count
    deleted = delete_objects(labels, [9])
    assert not (deleted == 9).any() and (deleted[labels != 9] == labels[labels != 9]).all()
    assert deleted.dtype == labels.dtype
    merged = merge_objects(labels, [9, 4])
    assert set(np.unique(merged)) == {0, 4, 11}
    assert (merged == 4).sum() == (labels == 4).sum() + (labels == 9).sum()
    assert ((merged > 0) == (labels > 0)).all()  # no pixel added or lost
    assert labels.max() == 11 and (labels == 9).sum() == 36  # the input is left alone
    with pytest.raises(DataError, match="two or more"):
        merge_objects(labels, [4])


def test_a_split_cuts_two_touching_squares_apart_with_a_seed_in_each():
    labels = np.zeros((20, 40), np.uint16)
    labels[4:16, 6:30] = 7     # a 12 x 24 rectangle: two touching 12 x 12 squares
    labels[0:3, 0:3] = 2       # another object, untouched
    split = split_object(labels, [[10, 12], [10, 24]])
    assert set(np.unique(split)) == {0, 2, 7, 8}
    assert ((split > 0) == (labels > 0)).all() and (split[0:3, 0:3] == 2).all()
    left, right = np.zeros_like(labels, bool), np.zeros_like(labels, bool)
    left[4:16, 6:18], right[4:16, 18:30] = True, True
    assert iou(split == 7, left) > 0.9 and iou(split == 8, right) > 0.9
    # the part of the first point keeps the id; new_id names the others
    swapped = split_object(labels, [[10, 24], [10, 12]], new_id=100)
    assert iou(swapped == 7, right) > 0.9 and iou(swapped == 100, left) > 0.9
    with pytest.raises(DataError, match="taken"):
        split_object(labels, [[10, 12], [10, 24]], new_id=2)
    three = split_object(labels, [[10, 8], [10, 18], [10, 28]])
    assert set(np.unique(three)) == {0, 2, 7, 8, 9}


def test_a_split_of_round_objects_and_of_a_volume_in_its_voxel_size():
    two = balls((40, 64), [(20, 18), (20, 44)], 14)
    blob = (two > 0).astype(np.uint16) * 5
    split = split_object(blob, [[20, 18], [20, 44]])
    assert set(np.unique(split)) == {0, 5, 6} and (split > 0).sum() == (blob > 0).sum()
    for part, disc in ((5, 1), (6, 2)):
        assert iou(split == part, two == disc) > 0.9
    # two touching balls stacked in z, round in microns: z spacing 3, x and y 1
    spacing = np.array([3.0, 1.0, 1.0])
    grid = np.indices((16, 40, 40)).astype(float) * spacing[:, None, None, None]

    def ball(centre, radius):
        return ((grid - np.array(centre, float)[:, None, None, None]) ** 2).sum(0) <= radius ** 2

    big, small = ball((15, 20, 20), 12), ball((33, 20, 20), 7) & ~ball((15, 20, 20), 12)
    volume = ((big | small) * 3).astype(np.uint8)
    seeds = [[5, 20, 20], [11, 20, 20]]  # the centres, in pixels
    parts = split_object(volume, seeds, spacing=tuple(spacing))
    assert set(np.unique(parts)) == {0, 3, 4} and ((parts > 0) == (volume > 0)).all()
    assert iou(parts == 3, big) > 0.95 and iou(parts == 4, small) > 0.85
    in_pixels = split_object(volume, seeds)  # spacing matters: in pixels the big one wins
    assert iou(in_pixels == 4, small) < 0.5
    full = np.zeros((10, 10), np.uint8)  # ids 255 and up do not fit in uint8
    full[2:8, 2:8] = 255
    assert split_object(full, [[4, 3], [4, 6]]).max() == 256


def test_a_split_refuses_points_that_do_not_name_one_object():
    labels = three_squares()
    with pytest.raises(DataError, match="2 objects"):
        split_object(labels, [[3, 3], [15, 22]])
    with pytest.raises(DataError, match="lie on the object"):
        split_object(labels, [[3, 3], [0, 0]])
    with pytest.raises(DataError, match="lie on the object"):
        split_object(labels, [[3, 3], [99, 3]])
    with pytest.raises(DataError, match="two or more"):
        split_object(labels, [[3, 3]])
    with pytest.raises(DataError, match="two or more"):
        split_object(labels, [])
    with pytest.raises(ValueError, match="one pixel"):  # DataError is a ValueError
        split_object(labels, [[3, 3], [3.2, 2.9]])


def test_a_drawn_line_cuts_the_objects_it_crosses():
    from skimage.draw import line

    labels = three_squares()
    labels[2:8, 8:20] = 9      # 9 is now 6 x 12
    mask = np.zeros(labels.shape, bool)
    mask[0:10, 11] = True      # cuts 9 into 3 + 8 columns, misses 4 and 11
    cut = split_by_line(labels, mask)
    assert ((cut > 0) == (labels > 0)).all(), "the line's pixels go to a part"
    assert (cut[2:8, 8:11] == 12).all() and (cut[2:8, 12:20] == 9).all()
    assert set(np.unique(cut[2:8, 11])) <= {9, 12}
    assert (cut[labels == 4] == 4).all() and (cut[labels == 11] == 11).all()
    diagonal = np.zeros(labels.shape, bool)
    diagonal[line(0, 19, 9, 5)] = True  # a 1-pixel diagonal, 8-connected, still cuts
    assert len(np.unique(split_by_line(labels, diagonal)[labels == 9])) == 2
    nick = np.zeros(labels.shape, bool)
    nick[12:14, 22] = True     # into 11 without cutting it apart
    assert (split_by_line(labels, nick) == labels).all()
    with pytest.raises(DataError, match="line mask"):
        split_by_line(labels, mask[:5])


@gui
def test_the_correct_widget_edits_objects_by_points_and_undo_restores(make_napari_viewer):
    from test_widgets import errors_since, notification_manager

    viewer = make_napari_viewer()
    _, correct = viewer.window.add_plugin_dock_widget(PLUGIN, "Correct")
    original = three_squares()
    original[2:8, 8:20] = 9     # 9: two touching 6 x 6 squares
    layer = viewer.add_labels(original.copy(), name="cells objects", scale=(2.0, 2.0),
                              translate=(10.0, 0.0))
    assert correct.labels_combo.value is layer  # a layer of objects is what to correct
    tools = correct.objects
    assert set(tools.buttons) == {"Pick objects", "Delete", "Merge", "Split (one seed per point)"}
    seen = len(notification_manager.records)
    tools.delete()  # no points yet
    assert "Pick objects" in str(errors_since(seen)[-1].message)
    tools.pick()
    picks = tools.picks()
    assert picks.mode == "add" and viewer.layers.selection.active is picks
    assert tuple(picks.scale) == (2.0, 2.0) and tuple(picks.translate) == (10.0, 0.0)

    def click(*data_points):  # where a click lands on these labels pixels, in world units
        picks.add([picks.world_to_data(layer.data_to_world(p)) for p in data_points])

    click([4, 4], [4, 10])
    tools.merge()
    assert set(np.unique(layer.data)) == {0, 4, 11} and len(picks.data) == 0
    assert ((layer.data > 0) == (original > 0)).all()
    assert "merged 2 objects" in correct.status.text()
    layer.undo()
    assert (layer.data == original).all()
    click([4, 4], [15, 22], [0, 0])
    tools.delete()
    assert set(np.unique(layer.data)) == {0, 9} and "deleted 2 objects" in correct.status.text()
    layer.undo()
    assert (layer.data == original).all()
    click([4, 10], [4, 17])
    tools.split()
    assert (layer.data[2:8, 8:14] == 9).all() and (layer.data[2:8, 14:20] == 12).all()
    assert "split into 2 objects" in correct.status.text() and len(picks.data) == 0
    layer.undo()
    assert (layer.data == original).all()

    for points, message in (([[4, 3], [4, 10]], "2 objects"), ([[0, 0]], "no object"),
                            ([[4, 3], [0, 0]], "lie on the object")):
        click(*points)
        seen = len(notification_manager.records)
        (tools.delete if message == "no object" else tools.split)()
        assert message in str(errors_since(seen)[-1].message)  # the viewer lives on
        assert (layer.data == original).all()
        picks.data = np.zeros((0, 2))
    viewer.layers.remove(layer)  # no labels layer left to correct
    assert correct.labels_combo.value is None
    seen = len(notification_manager.records)
    tools.merge()
    assert "choose the labels layer" in str(errors_since(seen)[-1].message)


@gui
def test_the_train_widget_keeps_objects_apart_when_asked(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    ids = balls((48, 64), [(24, 20), (24, 44)], 13).astype(np.uint16)
    viewer.add_image(ids.astype(np.float32), name="nuclei")
    labels = viewer.add_labels(ids, name="nuclei labels")
    train.labels_combo.value = labels
    train.objects.choice.setCurrentText(train.objects.APART)
    assert train.mask_rule()["instances"] == "boundary"
    assert "2 object(s) apart" in train.learns.text()
    args = train.cli_args("auto", tmp_path / "run", 1)
    assert args[args.index("--instances") + 1] == "boundary" and "--ignore-value" not in args
    train.objects.choice.setCurrentText(train.objects.MERGE)
    assert "--instances" not in train.cli_args("auto", tmp_path / "run", 1)


@gui
def test_a_model_of_objects_predicts_an_objects_layer(make_napari_viewer, tmp_path, qtbot):
    from napari_unet.engine import TrainConfig, train
    from napari_unet.widgets.prediction_job import PredictionJob

    ids = balls((48, 64), [(24, 20), (24, 44)], 13).astype(np.uint16)
    image = ((ids > 0) * 200).astype(np.float32)
    config = TrainConfig(instances="boundary", loss="dice_ce", steps=2, batch_size=2,
                         patch_size=[32, 32], amp="off", device="cpu", val_every=100,
                         checkpoint_every=100, model_options={"base_channels": 4})
    for _ in train(config, [image], [ids], run_dir=tmp_path / "run"):
        pass
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="nuclei")
    done = []
    job = PredictionJob(viewer, tmp_path / "run", layer, device="cpu", backend="torch",
                        on_end=done.append)
    qtbot.waitUntil(lambda: bool(done), timeout=60_000)
    assert job.error is None and job.labels_layer.name == "nuclei objects"
    assert job.labels_layer.data.dtype == np.uint32
    names = [p.name for p in job.probability_layers]
    assert names == ["nuclei probability interior", "nuclei probability boundary"]
