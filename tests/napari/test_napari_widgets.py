"""The dock widgets: created from the manifest, runs in a thread worker, cancel, errors."""

import threading

import numpy as np
import pytest
from conftest import PLUGIN, open_dock
from napari.utils.key_bindings import coerce_keybinding
from standin import blobs

from napari_mobilesamv2 import WeightsUnavailableError
from napari_mobilesamv2.napari import SegmentAnythingWidget, SegmentEverythingWidget
from napari_mobilesamv2.napari._widgets import RUN_ANYTHING_KEY, TOGGLE_NEGATIVE_KEY

WIDGET_KEYS = [coerce_keybinding(key) for key in (RUN_ANYTHING_KEY, TOGGLE_NEGATIVE_KEY)]


def test_widgets_and_samples_come_from_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    assert isinstance(open_dock(viewer, "Segment everything"), SegmentEverythingWidget)
    assert isinstance(open_dock(viewer, "Segment anything"), SegmentAnythingWidget)
    viewer.open_sample(PLUGIN, "nuclei_3d")
    viewer.open_sample(PLUGIN, "coins")
    assert viewer.layers["nuclei 3D"].data.shape == (20, 128, 128)
    assert viewer.layers["nuclei 3D"].data.dtype == np.uint16
    assert viewer.layers["coins"].data.ndim == 2


def test_sample_data_is_deterministic():
    from napari_mobilesamv2.napari import nuclei_2d, nuclei_timelapse

    first, second = nuclei_2d()[0][0], nuclei_2d()[0][0]
    np.testing.assert_array_equal(first, second)
    assert first.shape == (256, 256) and first.std() > 100
    assert nuclei_timelapse()[0][0].shape == (12, 128, 128)


def test_the_image_picker_follows_the_active_image(make_napari_viewer):
    viewer = make_napari_viewer()
    first = viewer.add_image(blobs(), name="first")
    widget = open_dock(viewer, "Segment everything")
    assert widget.images.image.value is first
    second = viewer.add_image(blobs(), name="second")
    viewer.layers.selection.active = second
    assert widget.images.image.value is second
    assert [c for c in widget.output.choices] == [None]
    labels = viewer.add_labels(np.zeros((64, 96), np.int32))
    assert list(widget.output.choices) == [None, labels]


def test_segment_everything_runs_in_a_worker_with_the_real_tiny_models(docked, tiny_factory, wait_done):
    viewer, widget = docked(scale=(2, 2), translate=(1, 1), name="cells")
    image = viewer.layers["cells"]
    widget.main_options.controls["conf"].value = 0.01
    widget.main_options.controls["max_prompts"].value = 3
    widget.run()
    assert widget.is_running
    wait_done(widget)
    assert widget.last_error is None, widget.last_error
    labels = viewer.layers[-1]
    assert labels.name == "cells objects"
    assert labels.data.shape == image.data.shape
    np.testing.assert_allclose(labels.scale, (2, 2))
    assert {"index", "id", "score", "predicted_iou", "stability", "area", "slice"} <= set(labels.features.columns)
    assert len(labels.features) == len(np.unique(labels.data)) - 1  # one row per visible object
    # editable boxes: show the detector's boxes, then decode them with the cached embedding
    widget.show_boxes()
    wait_done(widget)
    boxes = widget.boxes.value
    assert boxes.nshapes == 3 and boxes.features["score"].notna().all()
    calls = []
    original = tiny_factory.embed
    tiny_factory.embed = lambda rgb: calls.append(1) or original(rgb)
    try:
        widget.decode_boxes()
        wait_done(widget)
    finally:
        del tiny_factory.embed
    assert widget.last_error is None, widget.last_error
    assert calls == []  # only the decoder ran
    assert widget.status.value.startswith("done")


def test_widget_settings_reach_the_pipeline(docked, blob_pipeline, wait_done):
    viewer, widget = docked(image=np.stack([blobs(centres=((20, 20 + z),)) for z in range(4)]))
    existing = viewer.add_labels(np.zeros((4, 64, 96), np.int32), name="mine")
    existing.data[0, 0, 0] = 9
    widget.output.value = existing
    widget.policy.value = "fill_background"
    widget.scope.value = "stack"
    widget.run()
    wait_done(widget)
    assert len(viewer.layers) == 2
    assert np.unique(existing.data).tolist() == [0, 9, 10]  # one object, linked through z
    existing.undo()
    assert np.unique(existing.data).tolist() == [0, 9]


def test_a_time_series_run_can_add_tracks(docked, blob_pipeline, wait_done):
    from napari.layers import Tracks

    viewer, widget = docked(image=np.stack([blobs(centres=((20, 20 + t),)) for t in range(4)]))
    widget.scope.value = "stack"
    assert not widget.add_tracks.native.isHidden()  # shown for whole-stack runs
    widget.add_tracks.value = True
    widget.run()
    wait_done(widget)
    tracks = [layer for layer in viewer.layers if isinstance(layer, Tracks)]
    assert len(tracks) == 1
    # one object linked through the 4 time points: one track, t = 0..3, x moving by one pixel a step
    data = tracks[0].data
    assert data.shape == (4, 4) and set(data[:, 0]) == {1} and data[:, 1].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(np.diff(data[:, 3]), 1.0, atol=0.05)


def test_cancel_changes_no_layer(docked, blob_pipeline, wait_done):
    viewer, widget = docked(image=np.stack([blobs()] * 3))
    existing = viewer.add_labels(np.zeros((3, 64, 96), np.int32))
    widget.output.value = existing
    widget.scope.value = "stack"
    blob_pipeline.gate = threading.Event()
    widget.run()
    assert widget.cancel_button.enabled
    widget.cancel()
    blob_pipeline.gate.set()
    wait_done(widget)
    assert widget.status.value.startswith("cancelled")
    assert len(viewer.layers) == 2 and not existing.data.any()
    assert not widget.cancel_button.enabled


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (WeightsUnavailableError("l2.pt is missing; download it from ..."), "l2.pt is missing; download it from ..."),
        (RuntimeError("CUDA out of memory"), "MobileSAMv2 failed: RuntimeError: CUDA out of memory"),
    ],
)
def test_errors_are_notifications_and_change_no_layer(docked, pipeline_factory, run_to_end, error, shown):
    def factory(encoder, device, trust_weights):
        raise error

    viewer, widget = docked()
    pipeline_factory(factory)
    assert run_to_end(widget) == [shown]
    assert widget.last_error == shown
    assert len(viewer.layers) == 1


def test_input_errors_are_reported_before_running(docked, blob_pipeline):
    _, widget = docked(image=np.zeros((5, 64, 96), np.uint8), name="five")
    widget.images.channel_axis.value = 0
    widget.images.channels.value = "0, 1, 7"
    widget.run()
    assert not widget.is_running
    assert widget.last_error == "channels [0, 1, 7]: choose one to three of the 5 channel(s) of 'five'"


def test_segment_anything_widget_with_prompt_layers_and_keybinding(docked, blob_pipeline, wait_done):
    viewer, widget = docked(
        "Segment anything", np.stack([blobs(centres=((20, 20), (40, 60), (50, 15)))] * 2), scale=(4, 1, 1),
        name="cells",
    )
    image = viewer.layers["cells"]
    widget.add_prompt_layers()
    points, boxes = widget.points.value, widget.shapes.value
    assert (points.name, boxes.name) == ("cells prompts", "cells prompt boxes")
    assert viewer.layers.selection.active is points and points.mode == "add" and boxes.mode == "add_rectangle"
    np.testing.assert_allclose(points.scale, image.scale)
    z = viewer.dims.current_step[0]
    points.add([z, 20, 20])
    viewer.keymap[coerce_keybinding(TOGGLE_NEGATIVE_KEY)](viewer)
    assert widget.negative.value
    points.add([z, 40, 60])
    assert points.features["positive"].tolist() == [True, False]
    boxes.add_rectangles(np.array([[z, 42, 5], [z, 42, 25], [z, 58, 25], [z, 58, 5]], float))
    viewer.keymap[coerce_keybinding(RUN_ANYTHING_KEY)](viewer)
    wait_done(widget)
    assert widget.last_error is None, widget.last_error
    labels = widget.output.value
    assert [int(labels.data[z, y, x]) for y, x in ((20, 20), (40, 60), (50, 15))] == [1, 0, 2]
    assert len(points.data) == 0 and boxes.nshapes == 0  # used prompts are cleared
    # the next object goes into the same layer, reusing the embedding
    calls = blob_pipeline.embed_calls
    widget.negative.value = False
    points.add([z, 40, 60])
    widget.run()
    wait_done(widget)
    assert blob_pipeline.embed_calls == calls
    assert int(labels.data[z, 40, 60]) == 3
    labels.undo()
    assert int(labels.data[z, 40, 60]) == 0 and int(labels.data[z, 20, 20]) == 1


def test_segment_anything_without_prompts_says_what_to_do(docked, blob_pipeline):
    viewer, widget = docked("Segment anything")
    widget.add_prompt_layers()
    widget.run()
    assert not widget.is_running
    assert widget.last_error.startswith("no prompts on this plane: add a positive point or a box")
    assert widget.output.value is None and len(viewer.layers) == 3


def users_own(_viewer):
    """A key binding of the user's."""


@pytest.fixture
def users_keys(make_napari_viewer):
    """A viewer with an image where the user bound a key the anything dock uses; ``(viewer, keymap)``."""
    viewer = make_napari_viewer()
    viewer.add_image(blobs())
    viewer.bind_key(TOGGLE_NEGATIVE_KEY, users_own)
    return viewer, dict(viewer.keymap)


def test_closing_the_widgets_releases_keys_and_events(users_keys, qtbot):
    viewer, before = users_keys
    dock_widget, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment anything")
    assert all(key in viewer.keymap for key in WIDGET_KEYS)
    assert viewer.keymap[WIDGET_KEYS[1]] is not users_own
    viewer.window.remove_dock_widget(dock_widget)
    qtbot.waitUntil(lambda: dict(viewer.keymap) == before, timeout=5000)  # ours gone, the user's back
    viewer.layers.selection.active = viewer.add_image(blobs(), name="another")  # no callback into a dead widget


def test_a_second_anything_dock_takes_the_keys_and_gives_them_back(users_keys, qtbot):
    viewer, before = users_keys
    first_dock, first = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment anything")
    second = SegmentAnythingWidget(viewer)  # the manifest opens one of each: a second one by hand
    second_dock = viewer.window.add_dock_widget(second, name="second")
    viewer.window.remove_dock_widget(first_dock)
    qtbot.waitUntil(lambda: first._closed, timeout=5000)
    viewer.keymap[WIDGET_KEYS[1]](viewer)  # the open dock's binding stays
    assert second.negative.value and not first.negative.value
    viewer.window.remove_dock_widget(second_dock)
    qtbot.waitUntil(lambda: dict(viewer.keymap) == before, timeout=5000)


def test_warnings_from_the_worker_are_notifications(docked, blob_pipeline, pipeline_factory, run_to_end):
    import warnings

    def factory(encoder, device, trust_weights):
        warnings.warn("loading an unknown detector because you trust it", UserWarning, stacklevel=1)
        return blob_pipeline

    viewer, widget = docked()
    pipeline_factory(factory)
    assert run_to_end(widget) == ["loading an unknown detector because you trust it"]
    assert widget.last_error is None and len(viewer.layers) == 2

