"""Linking per-plane labels through a stack by mask IoU (pure numpy)."""

import numpy as np
import pytest

from napari_mobilesamv2.errors import InputError
from napari_mobilesamv2.stack import linked_table, link_planes, mask_iou, match_objects, neighbour_pairs


def disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_mask_iou_matches_a_direct_computation():
    a = np.zeros((20, 20), np.int32)
    b = np.zeros((20, 20), np.int32)
    a[2:10, 2:10] = 5
    a[12:18, 12:18] = 2
    b[4:10, 2:10] = 7
    ids_a, ids_b, iou = mask_iou(a, b)
    assert ids_a.tolist() == [2, 5] and ids_b.tolist() == [7]
    assert iou[1, 0] == pytest.approx(48 / 64)
    assert iou[0, 0] == 0


def test_mask_iou_without_background():
    a = np.ones((4, 4), np.int32)
    ids_a, ids_b, iou = mask_iou(a, a * 3)
    assert ids_a.tolist() == [1] and ids_b.tolist() == [3] and iou[0, 0] == 1


def test_match_objects_is_one_to_one_and_respects_the_threshold():
    a = np.zeros((10, 30), np.int32)
    b = np.zeros((10, 30), np.int32)
    a[:, 0:10] = 1
    a[:, 20:30] = 2
    b[:, 0:9] = 4   # IoU 0.9 with 1
    b[:, 9:12] = 5  # small overlap with 1 only
    b[:, 25:30] = 6  # IoU 0.5 with 2
    assert match_objects(a, b, 0.5).tolist() == [[1, 4], [2, 6]]
    assert match_objects(a, b, 0.6).tolist() == [[1, 4]]


def test_neighbour_pairs_cover_every_axis():
    assert sorted(neighbour_pairs((3,))) == [(0, 1), (1, 2)]
    assert sorted(neighbour_pairs((2, 2))) == [(0, 1), (0, 2), (1, 3), (2, 3)]
    assert sorted(neighbour_pairs((2, 2), axes=[1])) == [(0, 1), (2, 3)]


def test_an_object_keeps_one_id_through_z():
    shape = (48, 48)
    planes = np.zeros((5, *shape), np.int32)
    for z in range(5):
        # per-plane ids deliberately swapped between planes
        first, second = (1, 2) if z % 2 else (2, 1)
        planes[z][disk(shape, 12, 12 + z, 8)] = first
        if z >= 2:
            planes[z][disk(shape, 34, 34, 6)] = second
    link = link_planes(planes, 0.5)
    assert link.n_objects == 2
    moving = {int(np.unique(link.labels[z][disk(shape, 12, 12 + z, 3)])[0]) for z in range(5)}
    steady = {int(np.unique(link.labels[z][disk(shape, 34, 34, 3)])[0]) for z in range(2, 5)}
    assert moving == {1} and steady == {2}
    assert (link.labels[:2][:, 34, 34] == 0).all()
    assert link.labels.dtype == np.int32 and link.labels.shape == planes.shape


def test_objects_that_do_not_overlap_enough_stay_apart():
    shape = (40, 40)
    planes = np.zeros((2, *shape), np.int32)
    planes[0][disk(shape, 10, 10, 6)] = 1
    planes[1][disk(shape, 10, 18, 6)] = 1  # shifted: low IoU
    link = link_planes(planes, 0.5)
    assert link.n_objects == 2
    assert link_planes(planes, 0.05).n_objects == 1


def test_linking_through_time_and_z():
    shape = (32, 32)
    planes = np.zeros((2, 3, *shape), np.int32)
    for t in range(2):
        for z in range(3):
            planes[t, z][disk(shape, 16, 16, 7)] = 1 + (t + z) % 2
    assert link_planes(planes, 0.5).n_objects == 1
    assert link_planes(planes, 0.5, axes=[1]).n_objects == 2  # z only: one object per time point


def test_linked_table_aggregates_per_plane_rows():
    shape = (32, 32)
    planes = np.zeros((3, *shape), np.int32)
    for z in range(3):
        planes[z][disk(shape, 16, 16, 7)] = 1
    planes[2][disk(shape, 3, 3, 2)] = 2
    link = link_planes(planes, 0.5)
    tables = [
        {"id": np.array([1]), "score": np.array([0.5]), "predicted_iou": np.array([0.8]),
         "stability": np.array([0.9]), "visible_area": np.array([100])},
        {"id": np.array([1]), "score": np.array([0.7]), "predicted_iou": np.array([0.6]),
         "stability": np.array([0.7]), "visible_area": np.array([110])},
        {"id": np.array([1, 2]), "score": np.array([np.nan, 0.3]), "predicted_iou": np.array([0.7, 0.5]),
         "stability": np.array([0.8, 0.4]), "visible_area": np.array([120, 9])},
    ]
    table = linked_table(link, tables)
    assert table["id"].tolist() == [1, 2]
    assert table["score"].tolist() == pytest.approx([0.7, 0.3])
    assert table["predicted_iou"].tolist() == pytest.approx([0.7, 0.5])
    assert table["area"].tolist() == [330, 9]
    assert table["first_plane"].tolist() == [0, 2]
    assert table["last_plane"].tolist() == [2, 2]
    assert table["n_planes"].tolist() == [3, 1]


def test_empty_stack_and_bad_input():
    link = link_planes(np.zeros((3, 8, 8), np.uint16))
    assert link.n_objects == 0 and not link.labels.any()
    assert linked_table(link, [{"id": np.zeros(0)}] * 3)["id"].size == 0
    with pytest.raises(InputError):
        link_planes(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(InputError):
        link_planes(np.zeros((2, 8, 8), np.int32), iou_threshold=0)
