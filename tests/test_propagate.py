"""Segment anything through a stack: ids, stop conditions, both directions, z and t."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "napari"))
from standin import BlobPipeline  # noqa: E402  the classical stand-in of the GUI tests

from napari_mobilesamv2 import InputError  # noqa: E402
from napari_mobilesamv2.decode.prompted import (  # noqa: E402
    MASK_INPUT_LOGIT,
    ObjectPrompt,
    decode_object_prompts,
    mask_input,
)
from napari_mobilesamv2.embedding_cache import EmbeddingCache  # noqa: E402
from napari_mobilesamv2.options import PropagationOptions  # noqa: E402
from napari_mobilesamv2.propagate import next_prompt, propagate, propagate_steps  # noqa: E402

SHAPE = (64, 96)
BACKGROUND = np.full(SHAPE, 10, np.uint8)


def plane(*disks) -> np.ndarray:
    """A plane with disks given as (centre_y, centre_x, radius, value); radius 0: no disk."""
    image = BACKGROUND.copy()
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    for cy, cx, r, value in disks:
        if r:
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = value
    return image


# Object A (left): a "sphere" with radii 0, 3, 6, 8, 9, 8, 6, 3, 0 through z; the disks of radius 3
# and 6 overlap with IoU 9/36 = 0.25, below the default stop overlap of 0.3.
# Object B (right): present on every plane, radius 7.
RADII_A = [0, 3, 6, 8, 9, 8, 6, 3, 0]


def z_stack() -> np.ndarray:
    return np.stack([plane((30, 25, r, 200), (30, 70, 7, 200)) for r in RADII_A])


BOX_A = np.array([15, 20, 36, 41], np.float32)  # around object A on plane 4 (x0, y0, x1, y1)
POINT_B = np.array([[70, 30]], np.float32)  # x, y on object B


def areas(labels: np.ndarray, object_id: int) -> list[int]:
    return [int(np.count_nonzero(p == object_id)) for p in labels]


def test_objects_keep_one_id_through_z_in_both_directions_and_stop_on_overlap_or_the_end():
    objects = [((4,), ObjectPrompt(box=BOX_A)), ((4,), ObjectPrompt(POINT_B, np.ones(1, np.int64)))]
    found = propagate(BlobPipeline(), z_stack(), objects)
    assert found.labels.shape == (9, *SHAPE) and found.labels.dtype == np.int32
    assert set(np.unique(found.labels)) == {0, 1, 2}
    disk = {r: int(np.count_nonzero(plane((30, 25, r, 200)) == 200)) for r in {*RADII_A, 7}}
    # A reaches the planes of radius 6 on both sides, not those of radius 3 (IoU 0.25 < 0.3)
    assert areas(found.labels, 1) == [0, 0, disk[6], disk[8], disk[9], disk[8], disk[6], 0, 0]
    assert areas(found.labels, 2) == [disk[7]] * 9
    table = found.table
    assert table["id"].tolist() == [1, 2]
    assert table["first"].tolist() == [2, 0] and table["last"].tolist() == [6, 8]
    assert table["n_planes"].tolist() == [5, 9]
    assert table["stop_before"].tolist() == ["overlap", "end of stack"]
    assert table["stop_after"].tolist() == ["overlap", "end of stack"]
    assert len(found.planes["id"]) == 5 + 9


def test_a_start_near_one_end_goes_both_ways():
    found = propagate(BlobPipeline(), z_stack(), [((7,), ObjectPrompt(np.array([[70, 30]], np.float32),
                                                                      np.ones(1, np.int64)))])
    assert found.table["first"].tolist() == [0] and found.table["last"].tolist() == [8]
    assert areas(found.labels, 1) == [149] * 9


def test_a_lower_stop_overlap_follows_further():
    found = propagate(BlobPipeline(), z_stack(), [((4,), ObjectPrompt(box=BOX_A))],
                      PropagationOptions(stop_overlap=0.2))
    assert found.table["first"].tolist() == [1] and found.table["last"].tolist() == [7]
    assert found.table["stop_before"].tolist() == ["empty mask"]  # plane 0 has no object A


class QualityFromBrightness(BlobPipeline):
    """The stand-in, with a predicted IoU that is the object's brightness / 200."""

    def segment_prompts(self, image, objects, *, embedding=None, **conversion):
        found = super().segment_prompts(image, objects, embedding=embedding, **conversion)
        grey = np.asarray(image, np.float64)
        found.predicted_iou = np.array([grey[c.to_full(found.shape)].mean() / 200 if c.area else 0.0
                                        for c in found.crops], np.float32)
        return found


def test_an_object_stops_where_the_predicted_iou_falls_below_the_threshold():
    stack = np.stack([plane((30, 25, 8, 120 if z == 5 else 200)) for z in range(8)])
    objects = [((2,), ObjectPrompt(box=np.array([15, 20, 36, 41], np.float32)))]
    found = propagate(QualityFromBrightness(), stack, objects, PropagationOptions(stop_iou=0.7))
    assert found.table["first"].tolist() == [0] and found.table["last"].tolist() == [4]
    assert found.table["stop_after"].tolist() == ["predicted IoU"]  # 120 / 200 = 0.6 on plane 5
    assert found.table["stop_before"].tolist() == ["end of stack"]
    assert [bool(p.any()) for p in found.labels] == [True] * 5 + [False] * 3
    assert found.table["predicted_iou"][0] == pytest.approx(1.0)
    relaxed = propagate(QualityFromBrightness(), stack, objects, PropagationOptions(stop_iou=0.5))
    assert relaxed.table["last"].tolist() == [7]


def tz_stack() -> np.ndarray:
    """(T=4, Z=3): object C moves right by 1 px per time point on z = 1 only."""
    return np.stack([np.stack([plane((30, 20 + t, 8 if z == 1 else 0, 200)) for z in range(3)])
                     for t in range(4)])


def test_objects_follow_time_at_their_own_z():
    stack = tz_stack()
    found = propagate(BlobPipeline(), stack, [((2, 1), ObjectPrompt(box=np.array([12, 20, 34, 41], np.float32)))],
                      axis=0)
    assert found.labels.shape == (4, 3, *SHAPE) and found.axis == 0
    assert [int(np.count_nonzero(found.labels[t, 1])) for t in range(4)] == [197] * 4
    assert not found.labels[:, [0, 2]].any()
    for t in range(4):
        xs = np.nonzero(found.labels[t, 1] == 1)[1]
        assert xs.mean() == pytest.approx(20 + t)
    assert found.table["first"].tolist() == [0] and found.table["last"].tolist() == [3]
    along_z = propagate(BlobPipeline(), stack, [((2, 1), ObjectPrompt(box=np.array([12, 20, 34, 41], np.float32)))])
    assert [bool(along_z.labels[2, z].any()) for z in range(3)] == [False, True, False]
    assert along_z.table["stop_before"].tolist() == ["empty mask"]


def test_objects_on_different_planes_and_without_propagation():
    objects = [((4,), ObjectPrompt(box=BOX_A)), ((0,), ObjectPrompt(POINT_B, np.ones(1, np.int64)))]
    steps = propagate_steps(BlobPipeline(), (9,), lambda key: z_stack()[key], objects, through=False)
    progress = []
    while True:
        try:
            progress.append(next(steps))
        except StopIteration as done:
            found = done.value
            break
    assert [p.stage for p in progress] == ["propagating", "propagating"]
    assert [bool(p.any()) for p in found.labels] == [True, False, False, False, True, False, False, False, False]
    assert set(np.unique(found.labels[4])) == {0, 1} and set(np.unique(found.labels[0])) == {0, 2}
    assert found.table["stop_before"].tolist() == ["start", "start"]


@pytest.mark.parametrize("how", ["box", "box+point", "box+mask"])
def test_every_next_prompt_follows_the_stand_in_objects(how):
    found = propagate(BlobPipeline(), z_stack(), [((4,), ObjectPrompt(box=BOX_A))], PropagationOptions(next_prompt=how))
    assert found.table["first"].tolist() == [2] and found.table["last"].tolist() == [6]


def test_next_prompt_gives_the_box_and_the_innermost_point_or_the_mask():
    mask = plane((30, 25, 6, 200)) == 200
    box = next_prompt(mask, "box")
    # the mask spans x 19..31, y 24..36 (13 px): its box grown by 1.3 px on each side
    assert box.box.tolist() == pytest.approx([17.7, 22.7, 33.3, 38.3]) and len(box.points) == 0 and box.mask is None
    point = next_prompt(mask, "box+point")
    assert point.points.tolist() == [[25.5, 30.5]] and point.labels.tolist() == [1]
    with_mask = next_prompt(mask, "box+mask")
    assert with_mask.mask is mask and with_mask.box.tolist() == box.box.tolist()


def test_a_stopped_run_and_a_cancelled_one_return_nothing_half_done():
    steps = propagate_steps(BlobPipeline(), (9,), lambda key: z_stack()[key], [((4,), ObjectPrompt(box=BOX_A))])
    first = next(steps)
    assert first.stage == "propagating" and first.total == 9
    steps.close()  # the caller stops iterating: no result exists, nothing was written


@pytest.mark.parametrize("objects, axis, message", [
    ([], -1, "no prompts"),
    ([((9,), ObjectPrompt(box=BOX_A))], -1, "plane index 9 is outside the stack axis of size 9"),
    ([((1, 2), ObjectPrompt(box=BOX_A))], -1, "needs 1 index"),
    ([((1,), ObjectPrompt(box=BOX_A))], 1, "axis 1 does not exist"),
])
def test_bad_planes_and_axes_are_refused(objects, axis, message):
    with pytest.raises(InputError, match=message):
        propagate(BlobPipeline(), z_stack(), objects, axis=axis)


def test_a_single_plane_is_refused():
    with pytest.raises(InputError, match="at least one axis before the planes"):
        propagate(BlobPipeline(), plane(), [((), ObjectPrompt(box=BOX_A))])


# -- the mask prompt -------------------------------------------------------------------------------


def test_mask_input_is_the_mask_in_the_models_low_resolution_frame():
    mask = np.zeros((300, 400), bool)
    mask[100:200, 40:120] = True
    low = mask_input(mask, (300, 400))
    assert low.shape == (1, 256, 256) and low.dtype == np.float32
    # 400 -> 1024: scale 2.56; rows 100..200 -> 256..512 -> low-res 64..128; cols 40..120 -> 25.6..76.8
    assert low[0, 96, 50] == pytest.approx(MASK_INPUT_LOGIT)
    assert low[0, 10, 10] == pytest.approx(-MASK_INPUT_LOGIT)
    assert low[0, 250, 250] == pytest.approx(-MASK_INPUT_LOGIT)  # padding is background
    with pytest.raises(InputError, match="shape"):
        mask_input(mask, (301, 400))


def test_the_decoder_takes_the_mask_input(sam_decoder, tiny_pipeline):
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    embedding = tiny_pipeline.embed(image)
    mask = np.zeros((64, 64), bool)
    mask[10:40, 10:30] = True
    box = np.array([8, 8, 32, 42], np.float32)
    plain, masked = (decode_object_prompts(*sam_decoder, embedding, [ObjectPrompt(box=box, mask=m)])
                     for m in (None, mask))
    assert masked.low_res_logits.shape == plain.low_res_logits.shape == (1, 1, 256, 256)
    assert not torch.equal(masked.low_res_logits, plain.low_res_logits)  # the mask input changes the output


# -- the real pipeline (small random-weight models) -------------------------------------------------


@pytest.mark.parametrize("how", ["box", "box+point", "box+mask"])
def test_the_real_pipeline_runs_through_a_stack_and_writes_the_right_shapes(tiny_pipeline, how):
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 255, (3, 48, 64), np.uint8)
    options = PropagationOptions(next_prompt=how, stop_iou=-1.0, stop_overlap=0.0)
    # with these random weights one point gives a mask of the whole plane: the run goes on to both neighbours
    objects = [((1,), ObjectPrompt(np.array([[20, 20]], np.float32), np.ones(1, np.int64)))]
    progress = []
    found = propagate(tiny_pipeline, stack, objects, options, on_progress=progress.append)
    assert found.labels.shape == (3, 48, 64) and found.labels.dtype == np.int32
    assert set(np.unique(found.labels)) <= {0, 1} and found.labels[1].all()
    assert found.table["id"].tolist() == [1]
    assert [p.done for p in progress] == [1, 2, 3] and {p.total for p in progress} == {3}  # planes 1, 2, 0
    assert found.table["stop_before"][0] in ("end of stack", "empty mask", "overlap")
    assert found.planes["plane"].min() >= 0 and found.planes["plane"].max() <= 2
    assert found.planes["predicted_iou"].dtype == np.float32


def test_a_second_propagation_reads_the_embeddings_from_the_cache(tiny_pipeline, tmp_path, monkeypatch):
    stack = np.random.default_rng(2).integers(0, 255, (3, 32, 32), np.uint8)
    cache = EmbeddingCache(tmp_path / "embeddings")
    options = PropagationOptions(stop_iou=-1.0, stop_overlap=0.0)
    objects = [((1,), ObjectPrompt(box=np.array([4, 4, 20, 20], np.float32)))]
    calls = []
    original = tiny_pipeline.embed
    monkeypatch.setattr(tiny_pipeline, "embed", lambda rgb: calls.append(1) or original(rgb))
    first = propagate(tiny_pipeline, stack, objects, options, embeddings=cache)
    n_first = len(calls)
    second = propagate(tiny_pipeline, stack, objects, options, embeddings=cache)
    assert n_first >= 1 and len(calls) == n_first  # no embedding computed the second time
    np.testing.assert_array_equal(first.labels, second.labels)
