"""Segment anything through the stack in napari: the widget's option, its key, Cancel, undo, tracks."""

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from napari.layers import Tracks
from napari.utils.key_bindings import coerce_keybinding
from standin import BlobPipeline

from napari_mobilesamv2 import InputError
from napari_mobilesamv2.napari import segment_anything, segment_everything, tracks_layer
from napari_mobilesamv2.napari._widgets import RUN_ANYTHING_KEY
from napari_mobilesamv2.options import THROUGH_STACK_HELP

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_propagate import BOX_A, tz_stack, z_stack  # noqa: E402

A_PLANES = [False, False, True, True, True, True, True, False, False]  # where object A is followed


def box_rectangle(z: int, box) -> np.ndarray:
    """A napari rectangle (z, row, col corners) of an x0, y0, x1, y1 box on plane z."""
    x0, y0, x1, y1 = box
    return np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], float)


def prompted_dock(docked, image=None):
    viewer, widget = docked("Segment anything", z_stack() if image is None else image, name="stack")
    viewer.dims.set_current_step(0, 4)
    widget.add_prompt_layers()
    widget.shapes.value.add_rectangles(box_rectangle(4, BOX_A))
    return viewer, widget


def test_the_key_runs_through_the_stack_when_the_option_is_on(docked, blob_pipeline, wait_done):
    viewer, widget = prompted_dock(docked)
    assert widget.through_stack.tooltip == THROUGH_STACK_HELP and not widget.through_stack.value
    existing = viewer.add_labels(np.zeros((9, 64, 96), np.int32), name="mine")
    existing.data[0, 0, 0] = 7
    widget.output.value = existing
    widget.through_stack.value = True
    viewer.keymap[coerce_keybinding(RUN_ANYTHING_KEY)](viewer)
    wait_done(widget)
    assert widget.last_error is None, widget.last_error
    assert [bool((p == 8).any()) for p in existing.data] == A_PLANES  # one new id (after 7) on every plane
    assert set(np.unique(existing.data)) == {0, 7, 8}
    assert existing.features["n_planes"].tolist() == [5]
    existing.undo()  # one undo step restores the labels
    assert np.unique(existing.data).tolist() == [0, 7] and existing.data[0, 0, 0] == 7


def test_without_the_option_only_the_current_plane_is_segmented(docked, blob_pipeline, wait_done):
    viewer, widget = prompted_dock(docked)
    widget.run()
    wait_done(widget)
    labels = widget.output.value
    assert [bool(p.any()) for p in labels.data] == [False] * 4 + [True] + [False] * 4


def test_cancel_during_propagation_changes_no_layer(docked, blob_pipeline, wait_done):
    viewer, widget = prompted_dock(docked)
    existing = viewer.add_labels(np.zeros((9, 64, 96), np.int32), name="mine")
    widget.output.value = existing
    widget.through_stack.value = True
    n_layers = len(viewer.layers)
    blob_pipeline.gate = threading.Event()
    widget.run()
    assert widget.is_running
    widget.cancel()
    blob_pipeline.gate.set()
    wait_done(widget)
    assert widget.status.value.startswith("cancelled")
    assert len(viewer.layers) == n_layers and not existing.data.any()
    assert widget.shapes.value.nshapes == 1  # prompts of a cancelled run are kept


def test_the_api_follows_objects_through_time_and_makes_tracks(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(tz_stack(), name="tz")  # (T=4, Z=3, Y, X)
    rectangle = np.array([[2, 1, 20, 12], [2, 1, 20, 34], [2, 1, 41, 34], [2, 1, 41, 12]], float)  # t = 2, z = 1
    shapes = viewer.add_shapes(rectangle, shape_type="rectangle", ndim=4)
    labels = segment_anything(image, viewer, shapes=shapes, plane=(2, 1), pipeline=BlobPipeline(),
                              through_stack=True, axis=0, stop_overlap=0.5)
    assert labels.data.shape == (4, 3, 64, 96)
    assert [[bool(labels.data[t, z].any()) for z in range(3)] for t in range(4)] == [[False, True, False]] * 4
    tracks = tracks_layer(labels, viewer)
    assert isinstance(tracks, Tracks) and tracks in viewer.layers
    assert tracks.data[:, :2].tolist() == [[1, t] for t in range(4)]
    np.testing.assert_allclose(tracks.data[:, 2], 1.0)  # z
    np.testing.assert_allclose(tracks.data[:, 4], [20, 21, 22, 23])  # x moves one pixel per time point


def test_tracks_of_a_segment_everything_time_series(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(z_stack()[2:7], name="series")  # (T=5, Y, X)
    labels = segment_everything(image, viewer, scope="stack", pipeline=BlobPipeline())
    tracks = tracks_layer(labels)
    assert tracks.data.shape == (10, 4)
    assert sorted(set(tracks.data[:, 0].tolist())) == [1, 2]
    assert set(tracks.features["score"].round(3)) == {0.9}


def test_through_the_stack_needs_a_stack_axis(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(z_stack()[4], name="one plane")
    shapes = viewer.add_shapes(box_rectangle(0, BOX_A)[:, 1:], shape_type="rectangle")
    with pytest.raises(InputError, match="no stack axis"):
        segment_anything(image, viewer, shapes=shapes, pipeline=BlobPipeline(), through_stack=True)
    stack = viewer.add_image(z_stack(), name="stack")
    with pytest.raises(InputError, match="axis 1 of 'stack' is not a stack axis"):
        segment_anything(stack, shapes=viewer.add_shapes(box_rectangle(4, BOX_A), shape_type="rectangle"),
                         plane=(4,), pipeline=BlobPipeline(), through_stack=True, axis=1)


def test_tracks_need_objects(make_napari_viewer):
    labels = make_napari_viewer().add_labels(np.zeros((2, 8, 8), np.int32), name="empty")
    with pytest.raises(InputError, match="'empty' has no objects to track"):
        tracks_layer(labels)


def test_a_second_run_reads_the_embeddings_from_the_cache_folder(make_napari_viewer, tiny_pipeline, tmp_path):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.random.default_rng(0).integers(0, 255, (3, 48, 64), np.uint8), name="random")
    points = viewer.add_points([[1, 20, 20]], name="prompt")
    calls = []
    original = tiny_pipeline.embed
    tiny_pipeline.embed = lambda rgb: calls.append(1) or original(rgb)
    try:
        # with these random weights one point gives a mask of the whole plane, so all three planes are decoded
        run = dict(points=points, plane=(1,), pipeline=tiny_pipeline, through_stack=True, stop_iou=-1.0,
                   stop_overlap=0.0, embeddings_folder=tmp_path / "embeddings")
        first = segment_anything(image, viewer, **run)
        computed = len(calls)
        second = segment_anything(image, viewer, **run)
    finally:
        del tiny_pipeline.embed
    assert computed == 3 and len(calls) == 3  # the second run computed none
    assert first.data.shape == second.data.shape == (3, 48, 64)
    np.testing.assert_array_equal(first.data, second.data)
