"""Objects in napari: the edits of instance labels (delete, merge, split), the Correct widget's
Objects box, the Train widget's Objects choice and a prediction of objects as a layer."""
import numpy as np
import pytest
from gui_support import PLUGIN, gui
from test_instances_watershed import balls

from napari_unet.errors import DataError
from napari_unet.instance_edit import delete_objects, ids_at, merge_objects, split_object


def three_squares():
    labels = np.zeros((20, 30), np.uint32)
    labels[2:8, 2:8] = 4
    labels[2:8, 8:14] = 9      # touching 4
    labels[12:18, 20:26] = 11
    return labels


def test_points_pick_objects_and_delete_and_merge_edit_only_them():
    labels = three_squares()
    assert ids_at(labels, [[3, 3], [4.4, 9.6], [0, 0], [50, 50], [3, 4]]) == [4, 9]
    deleted = delete_objects(labels, [9])
    assert not (deleted == 9).any() and (deleted[labels != 9] == labels[labels != 9]).all()
    merged = merge_objects(labels, [9, 4])
    assert (merged[labels > 0] > 0).all() and set(np.unique(merged)) == {0, 4, 11}
    assert labels.max() == 11  # the input is left alone
    with pytest.raises(DataError, match="two or more"):
        merge_objects(labels, [4])


def test_a_split_cuts_one_object_into_a_part_per_point():
    two = balls((40, 64), [(20, 18), (20, 44)], 14)
    blob = (two > 0).astype(np.uint16) * 5
    split = split_object(blob, [[20, 18], [20, 44]])
    assert set(np.unique(split)) == {0, 5, 6} and (split > 0).sum() == (blob > 0).sum()
    for part, disc in ((5, 1), (6, 2)):
        inter = ((split == part) & (two == disc)).sum()
        assert inter / ((split == part) | (two == disc)).sum() > 0.9
    volume = np.zeros((6, 10, 30), np.uint8)
    volume[1:5, 2:8, 2:28] = 3
    parts = split_object(volume, [[3, 5, 5], [3, 5, 24]], spacing=(2.0, 1.0, 1.0))
    assert len(np.unique(parts)) == 3 and (parts > 0).sum() == (volume > 0).sum()
    assert set(np.unique(parts[3, 5, 20:28])) == {4} and set(np.unique(parts[3, 5, 3:8])) == {3}
    with pytest.raises(DataError, match="2 objects"):
        split_object(three_squares(), [[3, 3], [15, 22]])
    with pytest.raises(DataError, match="lie on the object"):
        split_object(three_squares(), [[3, 3], [0, 0]])


@gui
def test_the_correct_widget_edits_objects_by_points_and_undo_restores(make_napari_viewer):
    from test_widgets import errors_since, notification_manager

    viewer = make_napari_viewer()
    _, correct = viewer.window.add_plugin_dock_widget(PLUGIN, "Correct")
    layer = viewer.add_labels(three_squares(), name="cells objects")
    assert correct.labels_combo.value is layer  # a layer of objects is what to correct
    tools = correct.objects
    seen = len(notification_manager.records)
    tools.delete()  # no points yet
    assert "Pick objects" in str(errors_since(seen)[-1].message)
    tools.pick()
    picks = tools.picks()
    assert picks.mode == "add" and viewer.layers.selection.active is picks
    picks.add([[4, 4], [4, 10]])
    tools.merge()
    assert set(np.unique(layer.data)) == {0, 4, 11} and len(picks.data) == 0
    layer.undo()
    assert (layer.data == three_squares()).all()
    picks.add([[15, 22]])
    tools.delete()
    assert not (layer.data == 11).any() and "deleted 1 object" in correct.status.text()
    picks.add([[4, 3], [4, 12]])
    seen = len(notification_manager.records)
    tools.split()
    assert "2 objects" in str(errors_since(seen)[-1].message)  # the viewer lives on


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
