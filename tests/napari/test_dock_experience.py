"""The docks as a user meets them: one image/model section, visible results, honest progress and summaries."""

import threading
import time

import numpy as np
import pytest
from conftest import PLUGIN, open_dock
from magicgui.widgets import Container, Label
from magicgui.widgets.bases import ButtonWidget, ValueWidget
from napari.utils.notifications import notification_manager
from standin import BlobPipeline, blobs

from napari_mobilesamv2.napari._progress import RunClock, describe, format_duration, step_fraction
from napari_mobilesamv2.napari._widgets import PROGRESS_STEPS
from napari_mobilesamv2.steps import Progress


def all_controls(container: Container) -> list:
    """Every value and button widget inside `container`, through nested containers."""
    found = []
    for child in container:
        if isinstance(child, Container):
            found += all_controls(child)
        elif isinstance(child, (ValueWidget, ButtonWidget)) and not isinstance(child, Label):
            found.append(child)
    return found


def shown(control, dock) -> bool:
    return control.native.isVisibleTo(dock.native)


# -- one image and model section --------------------------------------------------------------------


def test_both_docks_share_one_image_and_model_section(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([blobs()] * 3), name="cells")
    everything_dock, everything = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment everything")
    _, anything = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment anything")
    assert anything.images is everything.images and anything.model is everything.model
    assert shown(everything.images.image, everything)
    assert not shown(anything.images.image, anything)  # shown once, in the first dock
    assert anything.shared_note.value == "Image and model settings: in the 'Segment everything' dock."
    everything.images.normalization.value = "minmax"
    assert anything.settings()["normalization"] == "minmax"
    viewer.window.remove_dock_widget(everything_dock)
    qtbot.waitUntil(lambda: everything._closed, timeout=5000)
    assert shown(anything.images.image, anything) and not shown(anything.shared_note, anything)
    assert anything.images.normalization.value == "minmax"


def test_every_control_has_a_tooltip(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([blobs()] * 3))
    for name in ("Segment everything", "Segment anything"):
        dock = open_dock(viewer, name)
        controls = all_controls(dock) + all_controls(dock.images) + all_controls(dock.model)
        assert len(controls) > 10
        assert [c.name or c.text for c in controls if not c.tooltip] == [], name


def test_sections_show_only_what_applies(docked):
    viewer, dock = docked()  # a 2D image: no scope, no link IoU
    assert not shown(dock.scope, dock) and not shown(dock.link_iou, dock)
    assert not shown(dock.policy, dock)  # a new labels layer has no id policy
    assert not shown(dock.images.channels, dock)  # no channel axis, no channel list
    assert shown(dock.show_boxes_button, dock)
    dock.output.value = viewer.add_labels(np.zeros((64, 96), np.int32))
    assert shown(dock.policy, dock)
    dock.strategy.value = "grid"
    assert not shown(dock.show_boxes_button, dock) and not shown(dock.main_options.controls["conf"], dock)
    stack = viewer.add_image(np.stack([blobs()] * 3))
    viewer.layers.selection.active = stack
    assert shown(dock.scope, dock) and not shown(dock.link_iou, dock)
    dock.scope.value = "stack"
    assert shown(dock.link_iou, dock)
    dock.images.channel_axis.value = 0
    assert shown(dock.images.channels, dock)
    assert not shown(dock.scope, dock)  # one plane of three channels


# -- results --------------------------------------------------------------------------------------------


def test_new_results_land_on_top_of_earlier_ones_below_the_prompts(docked, blob_pipeline, wait_done):
    viewer, dock = docked(name="cells")
    dock.run()
    wait_done(dock)
    first = viewer.layers["cells objects"]
    prompts = viewer.add_points(ndim=2, name="prompts")
    dock.main_options.controls["conf"].value = 0.6
    dock.run()
    wait_done(dock)
    assert [layer.name for layer in viewer.layers] == ["cells", "cells objects", "cells objects [1]", "prompts"]
    dock.show_boxes()
    wait_done(dock)
    dock.decode_boxes()
    wait_done(dock)
    assert dock.status.value.startswith("done: 1 object in ") and "(decode the boxes of cells boxes)" in (
        dock.status.value
    )
    names = [layer.name for layer in viewer.layers]
    assert names.index("cells objects [2]") > names.index("cells objects [1]") > names.index(first.name)
    assert names.index("cells objects [2]") < names.index("prompts")


def test_undo_and_redo_keep_the_features_table_in_step(docked, blob_pipeline, wait_done):
    viewer, dock = docked(name="cells")
    labels = viewer.add_labels(np.zeros((64, 96), np.int32), name="mine")
    dock.output.value = labels
    dock.run()
    wait_done(dock)
    assert labels.features["index"].tolist() == [1, 2]
    dock.policy.value = "fill_background"
    dock.run()
    wait_done(dock)
    assert labels.features["index"].tolist() == [1, 2]  # nothing new was visible (and nothing to undo)
    labels.undo()
    assert labels.features.empty and not labels.data.any()
    labels.redo()
    assert labels.features["index"].tolist() == [1, 2]
    assert labels.features["area"].tolist() == [int((labels.data == i).sum()) for i in (1, 2)]


def test_overwrite_replaces_the_objects_it_touches_with_new_ids(docked, blob_pipeline, wait_done):
    viewer, dock = docked(name="cells")
    mine = np.zeros((64, 96), np.int32)
    mine[10:20, 10:30] = 1  # under the left blob and beyond it: would merge with new object 1
    mine[0:3, 0:3] = 2
    labels = viewer.add_labels(mine, name="mine")
    dock.output.value = labels
    dock.policy.value = "overwrite"
    dock.run()
    wait_done(dock)
    assert int(labels.data[20, 20]) == 3 and int(labels.data[40, 60]) == 4
    assert int(labels.data[10, 29]) == 0  # the rest of the replaced object is gone
    assert (labels.data[0:3, 0:3] == 2).all()


def test_an_empty_result_says_so_with_a_hint(docked, blob_pipeline, wait_done):
    viewer, dock = docked(name="cells")
    dock.main_options.controls["conf"].value = 0.95  # above every stand-in score
    count = len(notification_manager.records)
    dock.run()
    wait_done(dock)
    assert dock.status.value.startswith("done: 0 objects in ")
    assert dock.last_summary.endswith(
        "Nothing found: lower the detector conf (now 0.95), or check the channels and normalization of the image."
    )
    assert [str(n.message) for n in notification_manager.records[count:]] == [dock.last_summary]


def test_a_summary_counts_objects_and_time(docked, blob_pipeline, wait_done):
    viewer, dock = docked(name="cells")
    dock.run()
    wait_done(dock)
    assert dock.last_summary.startswith("done: 2 objects in ")
    assert dock.last_summary.endswith(" s (segment everything in the current plane of cells)")
    assert dock.progress_bar.value == PROGRESS_STEPS


def test_five_planes_without_a_channel_axis_are_not_silently_a_stack(docked, blob_pipeline, wait_done):
    viewer, dock = docked(image=np.stack([blobs()] * 5), name="five")
    dock.run()
    wait_done(dock)
    assert dock.last_summary.endswith(
        "'five' has 5 planes along axis 0; they are segmented as planes of a stack. If they are channels, "
        "choose 'axis 0' in 'channel axis'."
    )


# -- progress and cancel ---------------------------------------------------------------------------------


class SlowDecoding(BlobPipeline):
    """The stand-in, with a decoding stage of `steps` batches of `seconds` each."""

    def __init__(self, steps=40, seconds=0.1):
        super().__init__()
        self.steps, self.seconds = steps, seconds
        self.decoded = 0

    def segment_everything_steps(self, image, options, **kwargs):
        inner = super().segment_everything_steps(image, options, **kwargs)
        stage, detail = next(inner)  # detecting
        yield stage, detail
        for done in range(1, self.steps + 1):
            time.sleep(self.seconds)
            self.decoded = done
            yield "decoding", f"decoding boxes {done} of {self.steps}"
        return (yield from inner)


def test_progress_names_the_stages_and_fills_the_bar(docked, pipeline_factory, wait_done):
    pipeline = SlowDecoding(steps=5, seconds=0.01)
    pipeline_factory(lambda encoder, device, trust_weights: pipeline)
    viewer, dock = docked(name="cells")
    seen, values = [], []
    real = dock._set_status

    def record(text):
        seen.append(text)
        values.append(dock.progress_bar.value)
        real(text)

    dock._set_status = record
    dock.run()
    wait_done(dock)
    for stage in ("starting", "loading models", "models loaded", "detecting", "decoding", "assembling",
                  "plane finished", "done"):
        assert any(text.startswith(stage) for text in seen), (stage, seen)
    assert "decoding boxes 3 of 5" in seen
    assert values == sorted(values)  # the bar only moves forward
    assert dock.progress_bar.value == PROGRESS_STEPS


def test_cancel_takes_effect_between_decoder_batches(docked, pipeline_factory, qtbot, wait_done):
    pipeline = SlowDecoding(steps=100, seconds=0.1)  # 10 s of decoding
    pipeline_factory(lambda encoder, device, trust_weights: pipeline)
    viewer, dock = docked(image=np.stack([blobs()] * 2), name="cells")
    labels = viewer.add_labels(np.zeros((2, 64, 96), np.int32))
    dock.output.value = labels
    dock.scope.value = "stack"
    dock.run()
    qtbot.waitUntil(lambda: pipeline.decoded >= 3, timeout=20_000)
    start = time.monotonic()
    dock.cancel()
    wait_done(dock, timeout=5_000)
    assert time.monotonic() - start < 1.5
    assert pipeline.decoded < 20
    assert dock.status.value == "cancelled; nothing was changed"
    assert len(viewer.layers) == 2 and not labels.data.any() and labels.features.empty


def test_progress_fraction_and_time_left():
    assert step_fraction(Progress("loading", 0, 1)) == 0
    assert step_fraction(Progress("decoding", 1, 4, "plane 1: decoding boxes 50 of 100")) == pytest.approx(
        (1 + 0.5 + 0.47 * 0.5) / 4
    )
    assert step_fraction(Progress("plane", 2, 4)) == 0.5
    assert describe(Progress("detecting", 0, 1, "12 boxes")) == "detecting: 12 boxes; decoding…"
    assert describe(Progress("models", 1, 1, "models ready (tiny_vit)")) == (
        "models loaded: models ready (tiny_vit); embedding and detecting…"
    )
    assert describe(Progress("decoding", 0, 1, "decoding boxes 3 of 9")) == "decoding boxes 3 of 9"
    now = [0.0]
    clock = RunClock(now=lambda: now[0])
    now[0] = 1.0
    assert clock.time_left(0.5) is None  # too early to tell
    now[0] = 30.0
    assert clock.time_left(0.25) == pytest.approx(90.0)
    assert format_duration(90) == "1 min 30 s" and format_duration(7) == "7 s"


# -- segment anything ---------------------------------------------------------------------------------------


def test_after_a_run_the_next_click_adds_a_positive_point(docked, blob_pipeline, wait_done):
    viewer, dock = docked("Segment anything", name="cells")
    dock.add_prompt_layers()
    points = dock.points.value
    points.add([20, 20])
    dock.negative.value = True
    points.add([5, 5])
    dock.run()
    wait_done(dock)
    assert dock.last_error is None, dock.last_error
    assert viewer.layers.selection.active is points and points.mode == "add"
    assert not dock.negative.value and points.feature_defaults["positive"].tolist() == [True]
    assert dock.last_summary.startswith("done: 1 object in ")


def test_a_second_run_during_a_run_keeps_the_first(docked, blob_pipeline, wait_done):
    viewer, dock = docked()
    blob_pipeline.gate = threading.Event()
    dock.run()
    first = dock.worker
    dock.run()
    assert dock.worker is first
    blob_pipeline.gate.set()
    wait_done(dock)
