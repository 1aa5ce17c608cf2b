"""Objects from probabilities (engine.prediction.instances): seeded watersheds on hand-made
cases, whole and by blocks."""
import numpy as np

from napari_unet.engine.instance_metrics import matching
from napari_unet.engine.prediction.instances import (
    cells_from_membranes,
    label_blocks,
    objects_from_probabilities,
)
from napari_unet.objects import object_classes


def balls(shape, centres, radius, spacing=None):
    """Instance ids of touching discs / balls (later ones do not overwrite earlier ones)."""
    grid = np.indices(shape).astype(float)
    scale = np.asarray(spacing or (1.0,) * len(shape), float).reshape(-1, *([1] * len(shape)))
    ids = np.zeros(shape, np.uint32)
    for k, centre in enumerate(centres, start=1):
        offset = (grid - np.asarray(centre, float).reshape(scale.shape)) * scale
        ids[((offset ** 2).sum(axis=0) < radius ** 2) & (ids == 0)] = k
    return ids


def ideal(ids):
    """Probabilities a perfect model of background / interior / boundary would give."""
    classes = object_classes(ids)
    return np.stack([(classes == k).astype(np.float32) for k in range(3)])


def same_partition(a, b) -> bool:
    match = matching(a, b, thresholds=(0.99,))
    return match.n_true == match.n_pred == int(match.tp[0])


def test_touching_discs_come_apart():
    ids = balls((48, 72), [(24, 22), (24, 48)], 14)
    assert np.any(ids[:, 35] == 1) and np.any(ids[:, 36] == 2)  # they touch
    objects = objects_from_probabilities(ideal(ids))
    assert objects.dtype == np.uint32 and len(np.unique(objects)) == 3
    assert matching(ids, objects).tp.tolist()[:9] == [2] * 9  # IoU >= 0.9 each
    merged = (ids > 0).astype(np.uint32)  # a blurred boundary: no seed split, one object
    assert len(np.unique(objects_from_probabilities(ideal(merged)))) == 2


def test_touching_anisotropic_balls_come_apart_in_3d():
    spacing = (0.3, 0.13, 0.13)
    ids = balls((20, 48, 60), [(10, 24, 18), (10, 24, 42)], 2.0, spacing)
    objects = objects_from_probabilities(ideal(ids), spacing=spacing)
    assert len(np.unique(objects)) == 3 and matching(ids, objects).ap50 == 1.0


def test_an_object_without_interior_stays_an_object_and_small_ones_go():
    ids = np.zeros((20, 20), np.uint32)
    ids[2:4, 2:9] = 1      # two pixels thin: all boundary, no seed
    ids[10:18, 10:18] = 2  # a square with an interior
    ids[0, 19] = 3         # one pixel
    objects = objects_from_probabilities(ideal(ids))
    assert matching(ids[:, :19], objects[:, :19]).tp[0] == 2 and objects[0, 19] == 0
    kept = objects_from_probabilities(ideal(ids), min_size=1)
    assert kept[0, 19] > 0
    assert not objects_from_probabilities(np.stack([np.ones((8, 8))] + [np.zeros((8, 8))] * 2)
                                          ).any()


def test_by_blocks_equals_the_whole_image_and_objects_crossing_seams_stay_whole(tmp_path):
    centres = [(y, x) for y in range(10, 90, 20) for x in range(10, 110, 20)]
    ids = balls((96, 112), centres, 9)
    probabilities = ideal(ids)
    whole = objects_from_probabilities(probabilities)
    out = np.lib.format.open_memmap(tmp_path / "objects.npy", mode="w+", dtype=np.uint32,
                                    shape=ids.shape)
    blockwise = objects_from_probabilities(probabilities, block_shape=(25, 30), halo=12,
                                           out=out)
    assert blockwise is out and same_partition(whole, np.asarray(out))
    assert len(np.unique(out)) == len(centres) + 1
    seam = ids[:, 25:35] == ids[12, 30]  # the disc at (10, 30) crosses the seam at x = 30
    assert len(np.unique(np.asarray(out)[:, 25:35][seam])) == 1


def test_stitched_labels_give_one_id_per_region_across_blocks():
    mask = np.zeros((12, 12), bool)
    mask[1, :] = True      # a line through three blocks
    mask[5:9, 5:9] = True  # a square on a corner of four blocks
    labels, count = label_blocks(lambda core: mask[core], mask.shape, (4, 4))
    assert count == 2 and len(np.unique(labels[1])) == 1 and len(np.unique(labels[5:9, 5:9])) == 1


def test_cells_between_membranes_fill_the_image_and_a_gap_does_not_merge_two_cells():
    membrane = np.zeros((64, 96), np.float32)
    membrane[31:33, :] = 1.0
    membrane[:, 47:49] = 1.0
    membrane[31:33, 10:12] = 0.0  # a 2-pixel gap between the two left cells
    cells = cells_from_membranes(membrane)
    assert cells.min() > 0 and len(np.unique(cells)) == 4
    assert len(np.unique(cells_from_membranes(np.zeros((32, 32), np.float32)))) == 1
    blockwise = cells_from_membranes(membrane, block_shape=(24, 40), halo=16)
    assert same_partition(cells, blockwise)
