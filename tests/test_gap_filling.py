"""Gap filling in automatic stacks: an object the detector missed on one plane is decoded there."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "napari"))
from standin import BlobPipeline  # noqa: E402  the classical stand-in of the GUI tests

from napari_mobilesamv2 import EverythingOptions  # noqa: E402
from napari_mobilesamv2.engine import fill_gap_steps, run, segment_stack, segment_stack_steps  # noqa: E402
from napari_mobilesamv2.stack import find_gaps, neighbour_triples  # noqa: E402

SHAPE = (64, 96)
MISSED = 201  # brightness of the objects the stand-in's detector misses


class MissingDetector(BlobPipeline):
    """The stand-in, whose detector misses objects of brightness 201 (its decoder still finds them)."""

    def detect(self, image_rgb, **kwargs):
        boxes, scores = super().detect(image_rgb, **kwargs)
        seen = [image_rgb[int(y0):int(y1), int(x0):int(x1), 0].max() != MISSED for x0, y0, x1, y1 in boxes]
        keep = np.array(seen, bool).reshape(-1)
        return boxes[keep], scores[keep]


def plane(*disks) -> np.ndarray:
    image = np.full(SHAPE, 10, np.uint8)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    for cy, cx, r, value in disks:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = value
    return image


def stack_missing(planes_missed=(2,), n=5) -> np.ndarray:
    """Object A (left, radius 8 + z % 2) is missed on `planes_missed`; object B (right) never."""
    return np.stack([plane((30, 25, 8 + z % 2, MISSED if z in planes_missed else 200), (30, 70, 7, 200))
                     for z in range(n)])


def test_an_object_missed_on_one_plane_gets_one_id_through_the_stack():
    stack = stack_missing()
    filled = segment_stack(MissingDetector(), stack)
    assert filled.link.n_objects == 2
    a = filled.link.labels[:, 30, 25]
    b = filled.link.labels[:, 30, 70]
    assert a.tolist() == [1] * 5 and b.tolist() == [2] * 5
    assert [int(np.count_nonzero(p == 1)) for p in filled.link.labels] == [
        int(np.count_nonzero(s == v)) for s, v in zip(stack[:, :, :48], [200, 200, MISSED, 200, 200])]
    gap_plane = filled.planes[2]
    assert len(gap_plane) == 2 and np.isnan(gap_plane.score[1])  # the filled object comes last, no detector score
    assert gap_plane.labels[30, 25] == 2 and gap_plane.visible_area.tolist() == [149, 197]


def test_without_gap_filling_the_object_breaks_in_two():
    found = segment_stack(MissingDetector(), stack_missing(), EverythingOptions(fill_gaps=False))
    assert found.link.n_objects == 3
    assert found.link.labels[:, 30, 25].tolist() == [1, 1, 0, 3, 3]


def test_gaps_of_two_planes_and_at_the_ends_stay_open():
    two = segment_stack(MissingDetector(), stack_missing((2, 3), n=6))
    assert two.link.labels[:, 30, 25].tolist() == [1, 1, 0, 0, 3, 3]
    end = segment_stack(MissingDetector(), stack_missing((0,)))
    assert end.link.labels[:, 30, 25].tolist() == [0, 2, 2, 2, 2]


def test_a_filled_mask_only_takes_the_background_and_must_match_a_neighbour():
    # On plane 1 another object (brightness 200) covers A's place: A's box decodes that object,
    # which is already there, so nothing is added.
    stack = np.stack([plane((30, 25, 8, 200)), plane((30, 25, 8, 200)), plane((30, 25, 8, 200))])
    stack[1] = plane((30, 25, 8, MISSED), (30, 25, 9, 200))  # the missed object is hidden by a larger one
    found = segment_stack(MissingDetector(), stack)
    assert [len(p) for p in found.planes] == [1, 1, 1]
    assert found.link.n_objects == 1


def test_gap_filling_reports_its_progress():
    stack = stack_missing()
    steps = segment_stack_steps(MissingDetector(), stack.shape[:1], lambda key: stack[key], EverythingOptions())
    stages = []
    while True:
        try:
            stages.append(next(steps))
        except StopIteration:
            break
    filling = [p for p in stages if p.stage == "filling gaps"]
    assert len(filling) == 1 and filling[0].detail == "plane 2: 1 objects filled"
    assert stages[-1].stage == "linking"


def test_find_gaps_along_each_axis():
    labels = np.zeros((3, 3, 8, 8), np.int32)
    labels[:, :, 2:5, 2:5] = 7
    labels[1, 1] = 0  # the middle plane of a (T, Z) stack lacks the object
    gaps = find_gaps(labels)
    assert [(g.plane, g.before, g.after) for g in gaps] == [(4, 1, 7), (4, 3, 5)]
    assert gaps[0].box_xyxy.tolist() == [2, 2, 5, 5] and (gaps[0].id_before, gaps[0].id_after) == (7, 7)
    assert find_gaps(labels, axes=[1])[0].before == 3


def test_find_gaps_takes_the_mean_box_and_needs_overlapping_neighbours():
    labels = np.zeros((3, 10, 10), np.int32)
    labels[0, 1:5, 1:5] = 1
    labels[2, 2:6, 1:5] = 4
    gap, = find_gaps(labels, 0.5)
    assert gap.box_xyxy.tolist() == [1, 1.5, 5, 5.5]
    labels[2] = 0
    labels[2, 6:9, 6:9] = 4  # no longer the same object
    assert find_gaps(labels, 0.5) == []


def test_neighbour_triples_of_a_stack():
    assert list(neighbour_triples((4,))) == [(0, 1, 2), (1, 2, 3)]
    assert list(neighbour_triples((2, 3))) == [(0, 1, 2), (3, 4, 5)]  # axis 0 is too short


def test_the_real_pipeline_decodes_the_gaps(tiny_pipeline):
    stack = stack_missing()
    planes = segment_stack(MissingDetector(), stack, EverythingOptions(fill_gaps=False)).planes
    calls = []
    original = tiny_pipeline.decode_boxes
    tiny_pipeline.decode_boxes = lambda *args: calls.append(args[1]) or original(*args)
    try:
        filled = run(fill_gap_steps(tiny_pipeline, (5,), lambda key: stack[key], planes, EverythingOptions()))
    finally:
        del tiny_pipeline.decode_boxes
    assert len(calls) == 1 and calls[0].shape == (1, 4)  # A's box on plane 2, from planes 1 and 3
    assert [p.labels.shape for p in filled] == [SHAPE] * 5
    assert all(filled[i] is planes[i] for i in (0, 1, 3, 4))
    assert len(filled[2]) in (1, 2) and filled[2].labels.dtype == np.int32
    # a random-weight mask is kept only where it matches a neighbour as linking requires
    assert (filled[2].labels == 1).sum() == (planes[2].labels == 1).sum()


@pytest.mark.parametrize("value", [True, False])
def test_fill_gaps_is_a_checked_setting(value):
    assert EverythingOptions(fill_gaps=value).fill_gaps is value
