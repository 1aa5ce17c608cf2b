"""Objects from probabilities (engine.prediction.instances): seeded watersheds on hand-made
cases, 2D and 3D, whole and by blocks (stitched seeds, halos, memory-mapped output)."""
from __future__ import annotations

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
    """Probabilities a perfect model of background / interior / boundary would give: interior
    inside each object, boundary on its one-pixel rim (the contact lines included)."""
    classes = object_classes(ids)
    return np.stack([(classes == k).astype(np.float32) for k in range(3)])


def same_partition(a, b) -> bool:
    """The same labelling up to renumbering: the contingency table is a permutation (every id
    of one meets exactly one id of the other, and background meets background)."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    pairs = np.unique(np.stack([a, b]), axis=1)
    one_to_one = pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))
    return one_to_one and np.array_equal(a == 0, b == 0)


def ious(truth, objects):
    """IoU of each true object with the predicted object that overlaps it most."""
    result = []
    for k in np.unique(truth[truth > 0]):
        inside = objects[truth == k]
        best = np.bincount(inside[inside > 0]).argmax() if inside.any() else 0
        both = (truth == k) & (objects == best)
        result.append(both.sum() / ((truth == k) | (objects == best)).sum())
    return result


def test_touching_discs_come_apart():
    ids = balls((48, 72), [(24, 22), (24, 48)], 14)
    assert np.any(ids[:, 35] == 1) and np.any(ids[:, 36] == 2)  # they touch
    objects = objects_from_probabilities(ideal(ids))
    assert objects.dtype == np.uint32 and len(np.unique(objects)) == 3
    assert min(ious(ids, objects)) > 0.9
    assert matching(ids, objects).tp.tolist()[:9] == [2] * 9  # IoU >= 0.9 each
    merged = (ids > 0).astype(np.uint32)  # a blurred boundary: no seed split, one object
    assert len(np.unique(objects_from_probabilities(ideal(merged)))) == 2


def test_touching_anisotropic_balls_come_apart_in_3d():
    spacing = (0.3, 0.13, 0.13)
    ids = balls((20, 48, 60), [(10, 24, 18), (10, 24, 42)], 2.0, spacing)
    objects = objects_from_probabilities(ideal(ids), spacing=spacing)
    assert len(np.unique(objects)) == 3 and min(ious(ids, objects)) > 0.9
    blockwise = objects_from_probabilities(ideal(ids), spacing=spacing, block_shape=(8, 20, 25),
                                           halo=(8, 20, 20))
    assert same_partition(objects, blockwise)


def test_an_object_without_interior_stays_an_object_and_small_ones_go():
    ids = np.zeros((20, 20), np.uint32)
    ids[2:4, 2:9] = 1      # two pixels thin: all boundary, no seed
    ids[10:18, 10:18] = 2  # a square with an interior
    ids[0, 19] = 3         # one pixel
    objects = objects_from_probabilities(ideal(ids))
    assert matching(ids[:, :19], objects[:, :19]).tp[0] == 2 and objects[0, 19] == 0
    assert objects_from_probabilities(ideal(ids), min_size=1)[0, 19] > 0
    assert len(np.unique(objects_from_probabilities(ideal(ids), min_size=20))) == 2  # square
    background = np.stack([np.ones((8, 8))] + [np.zeros((8, 8))] * 2)
    assert not objects_from_probabilities(background).any()
    assert not objects_from_probabilities(background, block_shape=(3, 3), halo=2).any()


def test_a_disc_across_a_seam_stays_one_object(tmp_path):
    ids = balls((40, 40), [(20, 20)], 9)
    whole = objects_from_probabilities(ideal(ids))
    out = np.lib.format.open_memmap(tmp_path / "objects.npy", mode="w+", dtype=np.uint32,
                                    shape=ids.shape)
    blockwise = objects_from_probabilities(ideal(ids), block_shape=(16, 16), halo=12, out=out)
    assert blockwise is out and len(np.unique(np.asarray(out))) == 2
    assert same_partition(whole, out) and same_partition(ids, out)
    out.flush()
    assert same_partition(ids, np.load(tmp_path / "objects.npy"))


def test_by_blocks_equals_the_whole_image_and_objects_crossing_seams_stay_whole(tmp_path):
    centres = [(y, x) for y in range(10, 90, 20) for x in range(10, 110, 20)]
    ids = balls((96, 112), centres, 9)
    probabilities = ideal(ids)
    whole = objects_from_probabilities(probabilities)
    out = np.lib.format.open_memmap(tmp_path / "objects.npy", mode="w+", dtype=np.uint32,
                                    shape=ids.shape)
    blockwise = objects_from_probabilities(probabilities, block_shape=(25, 30), halo=12,
                                           out=out)
    assert blockwise is out and same_partition(whole, out) and same_partition(ids, out)
    assert len(np.unique(out)) == len(centres) + 1
    seam = ids[:, 25:35] == ids[12, 30]  # the disc at (10, 30) crosses the seam at x = 30
    assert len(np.unique(np.asarray(out)[:, 25:35][seam])) == 1


def test_stitched_labels_give_one_id_per_region_across_blocks():
    mask = np.zeros((12, 12), bool)
    mask[1, :] = True      # a line through three blocks
    mask[5:9, 5:9] = True  # a square on a corner of four blocks
    labels, count = label_blocks(lambda core: mask[core], mask.shape, (4, 4))
    assert count == 2 and len(np.unique(labels[1])) == 1 and len(np.unique(labels[5:9, 5:9])) == 1
    diagonal = np.eye(12, dtype=np.uint8)  # touches across block corners only diagonally
    assert label_blocks(diagonal, block_shape=(4, 4))[1] == 12
    labels, count = label_blocks(diagonal, block_shape=(4, 4), connectivity=2)
    assert count == 1 and same_partition(labels, diagonal)


def test_cells_between_membranes_fill_the_image_and_a_gap_does_not_merge_two_cells(tmp_path):
    membrane = np.zeros((64, 96), np.float32)
    membrane[31:33, :] = 1.0
    membrane[:, 47:49] = 1.0
    membrane[31:33, 10:12] = 0.0  # a 2-pixel gap between the two left cells
    cells = cells_from_membranes(membrane)
    assert cells.min() > 0 and len(np.unique(cells)) == 4
    assert len(np.unique(cells[:31, :47])) == 1 and cells[0, 0] != cells[-1, 0]
    assert len(np.unique(cells_from_membranes(np.zeros((32, 32), np.float32)))) == 1
    out = np.lib.format.open_memmap(tmp_path / "cells.npy", mode="w+", dtype=np.uint32,
                                    shape=membrane.shape)
    blockwise = cells_from_membranes(membrane, block_shape=(24, 40), halo=(16, 16), out=out)
    assert blockwise is out and same_partition(cells, out)


def test_small_cells_merge_into_their_neighbours():
    membrane = np.zeros((48, 48), np.float32)
    membrane[:, 23:25] = 1.0     # two halves
    membrane[4:18, 4:18] = 1.0   # a small cell in the left half, in a membrane ring
    membrane[6:16, 6:16] = 0.0
    cells = cells_from_membranes(membrane)
    assert len(np.unique(cells)) == 3 and cells[10, 10] != cells[40, 10]
    merged = cells_from_membranes(membrane, min_size=300)
    assert merged.min() > 0 and len(np.unique(merged)) == 2 and merged[10, 10] == merged[40, 10]
    assert merged[10, 10] != merged[10, 40]
    assert same_partition(merged, cells_from_membranes(membrane, min_size=300,
                                                       block_shape=(20, 20), halo=16))
    assert not cells_from_membranes(np.ones((16, 16), np.float32)).any()  # no seed at all
