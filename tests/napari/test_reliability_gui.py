"""The widgets under bad input and faults: a notification, and no layer changed or lost.

Cases that only exist in napari: bad images and settings reported as
notifications, a second run while one is running, closing the viewer or a layer
mid-run, an exception mid-run, output labels of another shape or scale, prompt layers
without usable prompts, a labels dtype too small for the new ids, and the trust
checkbox. ``docs/reliability.md`` lists what the user sees in each case.
"""

import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import open_dock
from napari.layers import Labels
from napari.utils.notifications import notification_manager
from standin import blobs

DETECTOR_FIXTURE = Path(__file__).parents[1] / "fixtures" / "object_aware_tiny.pt"


def messages_since(count: int) -> list[str]:
    return [str(n.message) for n in notification_manager.records[count:]]


def snapshot(viewer) -> list[tuple]:
    """Every layer's name, type and data, to compare before and after."""
    return [(layer.name, type(layer).__name__, np.array(layer.data, copy=True) if not isinstance(layer.data, list)
             else [np.array(d, copy=True) for d in layer.data]) for layer in viewer.layers]


def assert_unchanged(viewer, before: list[tuple]) -> None:
    after = snapshot(viewer)
    assert [(n, t) for n, t, _ in after] == [(n, t) for n, t, _ in before]
    for (_, _, a), (_, _, b) in zip(after, before):
        if isinstance(a, list):
            assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
        else:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("make_image", "settings", "message"),
    [
        (lambda v: v.add_image(np.ones((8, 8), np.uint16)), {}, "the image is 8x8 pixels; at least 16x16 is needed"),
        (lambda v: v.add_image(np.zeros((64, 96), np.uint8)), {"channels": "0, 1"},
         "channels [0, 1]: choose one to three of the 1 channel(s) of 'Image' (set the channel axis first)"),
        (lambda v: v.add_image(np.zeros((5, 64, 96), np.uint8)), {"channel_axis": 0, "channels": "0, 7"},
         "channels [0, 7]: choose one to three of the 5 channel(s)"),
    ],
)
def test_bad_image_or_setting_is_a_notification_and_changes_nothing(
    make_napari_viewer, tiny_factory, run_to_end, make_image, settings, message
):
    viewer = make_napari_viewer()
    make_image(viewer)
    existing = viewer.add_labels(np.arange(64 * 96, dtype=np.int32).reshape(64, 96) % 7, name="mine")
    widget = open_dock(viewer)
    viewer.layers.selection.active = viewer.layers[0]
    for name, value in settings.items():
        getattr(widget.images, name).value = value
    before = snapshot(viewer)
    shown = run_to_end(widget)
    assert message in widget.last_error
    assert shown == [widget.last_error]
    assert_unchanged(viewer, before)
    assert existing.data.max() == 6


def test_image_with_nothing_in_it_gives_an_empty_layer(docked, tiny_factory, wait_done):
    viewer, widget = docked(image=np.full((64, 96), np.nan, np.float32), name="blank")
    widget.run()
    wait_done(widget)
    assert widget.last_error is None, widget.last_error
    labels = viewer.layers["blank objects"]
    assert labels.data.shape == (64, 96) and not labels.data.any()


def test_a_second_run_while_one_runs_is_refused(docked, blob_pipeline, wait_done):
    viewer, widget = docked()
    blob_pipeline.gate = threading.Event()
    count = len(notification_manager.records)
    widget.run()
    first = widget.worker
    widget.run()  # refused: never two writers
    widget.decode_boxes()
    assert widget.worker is first
    assert messages_since(count).count("MobileSAMv2 is still running; wait or cancel it first") == 2
    blob_pipeline.gate.set()
    wait_done(widget)
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Labels"]
    assert blob_pipeline.embed_calls == 1


def test_closing_the_viewer_mid_run_ends_the_worker_quietly(docked, blob_pipeline, qtbot):
    viewer, widget = docked()
    blob_pipeline.gate = threading.Event()
    widget.run()
    finished = []
    widget.worker.finished.connect(lambda: finished.append(True))
    viewer.close()
    blob_pipeline.gate.set()
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    qtbot.wait(50)  # the widget's own finished/aborted handlers run after this one
    assert not widget.is_running
    assert blob_pipeline.embed_calls <= 1


def test_removing_the_image_layer_mid_run_ends_cleanly(docked, blob_pipeline, wait_done):
    viewer, widget = docked(name="cells")
    image = viewer.layers["cells"]
    mine = viewer.add_labels(np.zeros((64, 96), np.int32), name="mine")
    mine.data[0, :5] = 3
    blob_pipeline.gate = threading.Event()
    widget.run()
    viewer.layers.remove(image)
    blob_pipeline.gate.set()
    wait_done(widget)
    assert widget.last_error is None, widget.last_error
    assert mine.data[0, :5].tolist() == [3] * 5 and mine.data[1:].max() == 0
    assert [layer.name for layer in viewer.layers] == ["mine", "cells objects"]  # from the pixels it had read


def test_removing_the_output_layer_mid_run_ends_cleanly(docked, blob_pipeline, wait_done):
    viewer, widget = docked(name="cells")
    output = viewer.add_labels(np.zeros((64, 96), np.int32), name="target")
    widget.output.value = output
    blob_pipeline.gate = threading.Event()
    widget.run()
    viewer.layers.remove(output)
    blob_pipeline.gate.set()
    wait_done(widget)
    assert [layer.name for layer in viewer.layers] == ["cells"]


def test_an_exception_mid_stack_leaves_every_layer_as_it_was(docked, blob_pipeline, run_to_end):
    viewer, widget = docked(image=np.stack([blobs()] * 4), name="stack")
    mine = viewer.add_labels(np.zeros((4, 64, 96), np.int32), name="mine")
    mine.data[1, 10:20, 10:20] = 5
    widget.output.value = mine
    widget.scope.value = "stack"
    original = blob_pipeline.embed

    def embed_fails_on_the_third_plane(rgb):
        if blob_pipeline.embed_calls == 2:
            raise RuntimeError("device lost")
        return original(rgb)

    blob_pipeline.embed = embed_fails_on_the_third_plane
    before = snapshot(viewer)
    assert run_to_end(widget) == ["MobileSAMv2 failed: RuntimeError: device lost"]
    assert widget.last_error == "MobileSAMv2 failed: RuntimeError: device lost"
    assert_unchanged(viewer, before)
    assert blob_pipeline.embed_calls == 2


def test_a_2d_image_with_3d_labels_of_another_shape_is_refused(docked, blob_pipeline, wait_done):
    viewer, widget = docked(name="flat")
    volume = viewer.add_labels(np.ones((3, 64, 96), np.uint8), name="volume")
    widget.output.value = volume
    before = snapshot(viewer)
    widget.run()
    assert not widget.is_running
    assert widget.last_error == (
        "the labels layer 'volume' has shape (3, 64, 96), but labels for 'flat' need shape (64, 96); "
        "choose 'new labels layer' or a matching layer"
    )
    assert_unchanged(viewer, before)


def test_labels_with_another_scale_are_refused(docked, blob_pipeline, wait_done):
    viewer, widget = docked(name="cells", scale=(0.5, 0.5))
    other = viewer.add_labels(np.zeros((64, 96), np.int32), name="other", scale=(2, 2))
    widget.output.value = other
    before = snapshot(viewer)
    widget.run()
    wait_done(widget)
    assert widget.last_error == (
        "the labels layer 'other' has scale (2.0, 2.0), but 'cells' has scale (0.5, 0.5), so its labels would "
        "not overlay the image; choose 'new labels layer' or a layer with the image's scale"
    )
    assert_unchanged(viewer, before)


def test_labels_dtype_too_small_is_widened_never_wrapped(docked, blob_pipeline, wait_done):
    viewer, widget = docked(name="cells")
    full = viewer.add_labels(np.zeros((64, 96), np.uint8), name="full")
    full.data[60:, 90:] = 255
    widget.output.value = full
    widget.run()
    wait_done(widget)
    assert widget.last_error is None, widget.last_error
    assert full.data.dtype == np.int32
    assert (full.data[60:, 90:] == 255).all()
    assert int(full.data[20, 20]) == 256 and int(full.data[40, 60]) == 257


def test_points_layer_without_points_says_what_to_do(docked, blob_pipeline):
    viewer, widget = docked("Segment anything")
    widget.points.reset_choices()
    widget.points.value = viewer.add_points(ndim=2, name="empty")
    before = snapshot(viewer)
    widget.run()
    assert not widget.is_running
    assert widget.last_error.startswith("no prompts on this plane: add a positive point or a box")
    assert_unchanged(viewer, before)


def test_shapes_layer_with_only_lines_and_paths_says_what_to_do(docked, blob_pipeline, wait_done):
    viewer, widget = docked("Segment anything")
    shapes = viewer.add_shapes(
        [np.array([[10, 10], [30, 40]]), np.array([[5, 5], [5, 50], [40, 50]])], shape_type=["line", "path"],
        name="strokes",
    )
    widget.shapes.reset_choices()
    widget.shapes.value = shapes
    before = snapshot(viewer)
    widget.run()
    wait_done(widget)
    assert widget.last_error.startswith("no prompts on this plane: add a positive point or a box (a rectangle;")
    assert "lines and paths are ignored" in widget.last_error
    assert_unchanged(viewer, before)


def test_trust_checkbox_reaches_the_pipeline(docked, blob_pipeline, pipeline_factory, run_to_end, weights_cache):
    """Unticked, the unknown detector is refused with a message naming the box; ticked, it is loaded
    (in the worker, as MobileSAMv2 does) with a warning shown as a notification."""
    from napari_mobilesamv2.models.weights import load_checked_detector

    asked = []

    def factory(encoder, device, trust_weights):
        asked.append(trust_weights)
        load_checked_detector(DETECTOR_FIXTURE, trust_weights=trust_weights)  # nothing pinned: the file is unknown
        return blob_pipeline

    viewer, widget = docked()
    pipeline_factory(factory)
    assert run_to_end(widget) == [widget.last_error]
    assert "--trust-weights (CLI) or trust_weights=True (Python), or tick 'Trust weights' in napari" in (
        widget.last_error
    )
    assert len(viewer.layers) == 1
    widget.model.trust_weights.value = True
    shown = run_to_end(widget)
    assert asked == [False, True]
    assert widget.last_error is None and isinstance(viewer.layers[-1], Labels)
    assert len(shown) == 1 and "a pickle can run arbitrary code, so use only files" in shown[0], shown
