"""The "Evaluate labels" and "Fine-tune detector" docks: values of the core, files, cancel, errors."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import open_dock
from napari.utils.notifications import notification_manager

from napari_mobilesamv2.evaluation import DEFAULT_IOU_THRESHOLDS, match_labels
from napari_mobilesamv2.imaging import to_rgb_uint8
from napari_mobilesamv2.napari import _evaluate_widgets
from napari_mobilesamv2.napari._evaluate_widgets import (
    EvaluateWidget,
    ZERO_WIDTH_SPACE,
    TrainDetectorWidget,
    detector_trained,
    latest_detector,
    pair_by_shape,
    table_rows,
)
from napari_mobilesamv2.training import (
    DEFAULT_BATCH,
    DEFAULT_EPOCHS,
    DEFAULT_IMGSZ,
    TRAINING_HELP,
    is_detector_state,
    load_detector_state,
    tune_mask_filters,
)

SCREEN = (1366, 768)


def hand_made() -> tuple[np.ndarray, np.ndarray]:
    """Ground truth and prediction with an exact, a partial, a missed and an extra object."""
    gt = np.zeros((20, 20), np.uint16)
    gt[1:5, 1:5], gt[1:5, 10:16], gt[10:18, 2:6] = 1, 2, 3
    pred = np.zeros_like(gt)
    pred[1:5, 1:5] = 7        # exact
    pred[1:5, 11:16] = 8      # IoU 5/6
    pred[12:16, 12:19] = 9    # extra; object 3 is missed
    return gt, pred


def wait_idle(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.is_running, timeout=timeout)


def one_line_errors(count: int) -> list[str]:
    return [str(n.message) for n in notification_manager.records[count:]]


def fits_the_screen(widget) -> None:
    hint = widget.native.minimumSizeHint()
    assert hint.width() <= SCREEN[0] // 3 and hint.height() <= SCREEN[1] - 120


def every_control_has_a_tooltip(widget) -> None:
    from magicgui.widgets import Container, FileEdit

    def controls(container):
        for child in container:
            if isinstance(child, Container) and not isinstance(child, FileEdit):
                yield from controls(child)
            else:
                yield child

    missing = [child.name or type(child).__name__ for child in controls(widget) if not child.tooltip]
    assert missing == []


# --- Evaluate labels -----------------------------------------------------------------------------------


@pytest.fixture
def evaluate_dock(make_napari_viewer):
    viewer = make_napari_viewer()
    gt, pred = hand_made()
    viewer.add_labels(gt, name="truth", scale=(2, 2))
    viewer.add_labels(pred, name="predicted", scale=(2, 2))
    widget = open_dock(viewer, "Evaluate labels")
    widget.ground_truth.value = viewer.layers["truth"]
    widget.prediction.value = viewer.layers["predicted"]
    return viewer, widget


def test_evaluation_shows_the_core_numbers_marks_errors_and_saves(evaluate_dock, qtbot, tmp_path):
    viewer, widget = evaluate_dock
    assert isinstance(widget, EvaluateWidget) and widget.run_button.text.startswith("Run")
    assert widget.thresholds.value == ", ".join(f"{t:g}" for t in DEFAULT_IOU_THRESHOLDS)
    fits_the_screen(widget)
    every_control_has_a_tooltip(widget)
    widget.run()
    wait_idle(qtbot, widget)
    gt, pred = hand_made()
    expected = match_labels(gt, pred)
    assert widget.last_error is None
    assert widget.evaluation.result.to_dict(pairs=True) == expected.to_dict(pairs=True)
    table = widget.table.data.to_list()
    assert table == table_rows(expected) and len(table) == len(DEFAULT_IOU_THRESHOLDS) + 1
    assert table[0][:3] == [2, 1, 1]
    assert tuple(map(str, widget.table.row_headers)) == tuple(f"{t:g}" for t in DEFAULT_IOU_THRESHOLDS) + ("mean",)
    at_half = expected.at(0.5)
    assert table[0][3:] == [round(v, 3) for v in (at_half.precision, at_half.recall, at_half.f1,
                                                  at_half.mean_matched_iou, at_half.panoptic_quality,
                                                  at_half.average_precision)]
    assert "2 matched, 1 missed, 1 extra" in widget.status_text
    # markers at the missed object 3 and the extra object 9, in the layers' frame
    np.testing.assert_allclose(viewer.layers["truth missed"].data, [[13.5, 3.5]])
    np.testing.assert_allclose(viewer.layers["predicted extra"].data, [[13.5, 15.0]])
    np.testing.assert_array_equal(viewer.layers["truth missed"].scale, [2, 2])
    # saving
    widget.save_path.value = tmp_path / "scores.json"
    widget.save()
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["ground_truth"] == "truth" and saved["plane"] is None
    assert saved["per_threshold"] == expected.to_dict()["per_threshold"]
    widget.save_path.value = tmp_path / "scores.csv"
    widget.save()
    with open(tmp_path / "scores.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(DEFAULT_IOU_THRESHOLDS)
    assert float(rows[0]["f1"]) == pytest.approx(at_half.f1) and rows[0]["tp"] == "2"
    count = len(notification_manager.records)
    widget.save_path.value = tmp_path / "scores.txt"
    widget.save()
    assert "save as .json or .csv" in widget.status_text and len(one_line_errors(count)) == 1


def test_current_plane_of_a_stack_is_evaluated_alone(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    gt, pred = hand_made()
    gt_stack, pred_stack = np.stack([gt, gt, gt]), np.stack([gt, pred, np.zeros_like(pred)])
    viewer.add_labels(gt_stack, name="truth")
    viewer.add_labels(pred_stack, name="predicted")
    widget = open_dock(viewer, "Evaluate labels")
    widget.ground_truth.value, widget.prediction.value = viewer.layers["truth"], viewer.layers["predicted"]
    widget.thresholds.value = "0.5, 0.9"
    viewer.dims.set_current_step(0, 1)
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.evaluation.plane == (1,)
    assert widget.evaluation.result.to_dict() == match_labels(gt, pred, (0.5, 0.9)).to_dict()
    np.testing.assert_allclose(viewer.layers["truth missed"].data, [[1, 13.5, 3.5]])
    widget.scope.value = "stack"
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.evaluation.plane is None
    assert widget.evaluation.result.to_dict() == match_labels(gt_stack, pred_stack, (0.5, 0.9)).to_dict()


@pytest.mark.parametrize("change, message", [
    (lambda v, w: setattr(w.prediction, "value", v.add_labels(np.zeros((5, 5), np.uint8), name="small")),
     "has shape (20, 20) but the prediction 'small' has shape (5, 5)"),
    (lambda v, w: setattr(w.thresholds, "value", "0.5, high"), "must be numbers separated by commas"),
    (lambda v, w: setattr(w.thresholds, "value", "0.5, 1.5"), "must lie in (0, 1]"),
])
def test_evaluation_errors_are_one_line(evaluate_dock, change, message):
    viewer, widget = evaluate_dock
    change(viewer, widget)
    count = len(notification_manager.records)
    widget.run()
    assert not widget.is_running and message in widget.status_text and "\n" not in widget.status_text
    assert one_line_errors(count) == [widget.status_text]
    assert widget.evaluation is None and "truth missed" not in viewer.layers


# --- Fine-tune detector ------------------------------------------------------------------------------


@pytest.fixture
def train_dock(make_napari_viewer, detector_training_data):
    """A viewer with three annotated 128 px nuclei images (12 objects) and the training dock, set up small."""
    detector_file, nuclei = detector_training_data
    viewer = make_napari_viewer()
    for seed in range(3):
        image, labels = nuclei(seed)
        viewer.add_image(image, name=f"image {seed}")
        viewer.add_labels(labels, name=f"labels {seed}")
    widget = open_dock(viewer, "Fine-tune detector")
    widget.start.value = detector_file
    widget.trust_weights.value = True
    widget.imgsz.value, widget.batch.value, widget.device.value = 128, 2, "cpu"
    return viewer, widget


@pytest.fixture(autouse=True)
def no_latest_detector():
    """Each test starts and ends without a latest trained detector."""
    _evaluate_widgets.set_latest_detector(None)
    yield
    _evaluate_widgets.set_latest_detector(None)


@pytest.fixture
def single_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_training_dock_shows_the_core_defaults_and_pairs_layers_by_shape(train_dock):
    viewer, widget = train_dock
    assert isinstance(widget, TrainDetectorWidget)
    fits_the_screen(widget)
    assert widget.run_button.text.startswith("Run") and widget.tune_button.text.startswith("Run")
    widget.pair_layers()
    assert [(i.name, lab.name) for i, lab in widget.layer_pairs()] == [(f"image {s}", f"labels {s}")
                                                                      for s in range(3)]
    every_control_has_a_tooltip(widget)
    assert TRAINING_HELP["epochs"] in widget.epochs.tooltip
    fresh = TrainDetectorWidget(viewer)
    assert (fresh.epochs.value, fresh.imgsz.value, fresh.batch.value) == (DEFAULT_EPOCHS, DEFAULT_IMGSZ,
                                                                          DEFAULT_BATCH)
    assert pair_by_shape([viewer.layers["labels 0"]]) == []


def test_training_writes_a_pickle_free_detector_and_tunes_thresholds(train_dock, qtbot, tmp_path,
                                                                     single_torch_thread, tiny_factory):
    viewer, widget = train_dock
    widget.pair_layers()
    widget.epochs.value = 2
    out = tmp_path / "tuned.pt"
    widget.out.value = out
    seen = []

    def record(path):
        seen.append(path)

    detector_trained.connect(record)
    try:
        widget.run()
        assert widget.is_running and widget.stop_button.enabled and widget.cancel_button.enabled
        widget.stop()  # keeps the best epoch after the first one: one epoch, quick
        wait_idle(qtbot, widget)
    finally:
        detector_trained.disconnect(record)
    assert widget.last_error is None, widget.last_error
    report = widget.report
    assert report.path == out and report.epochs_run == 1 and report.stopped_early
    torch.load(out, map_location="cpu", weights_only=True)  # no pickle
    assert is_detector_state(out) and load_detector_state(out).head.reg_max == 26
    assert json.loads(out.with_suffix(".json").read_text())["training"]["epochs_run"] == 1
    assert latest_detector() == out and seen == [out]
    from napari_mobilesamv2.models.config import remembered_detectors

    assert Path(out).resolve() in [Path(p) for p in remembered_detectors()]  # listed in later sessions too
    summary = widget.summary.value.replace(ZERO_WIDTH_SPACE, "")
    assert f"Wrote {out}" in summary and f"conf {report.thresholds.conf:g}" in summary
    assert widget.status_text.startswith(f"done: wrote {out}, stopped after epoch 1")
    assert not widget.stop_button.enabled and not widget.cancel_button.enabled
    widget.tune()
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert widget.tuning.value.startswith("Best on 3 annotated plane(s): conf ")
    assert "s per image at imgsz 128 on cpu" in widget.tuning.value
    # then the mask filters, at the chosen thresholds, with the widgets' pipeline and the trained detector
    conf, iou = (float(widget.status_text.split(word)[1].split()[0].strip(";,")) for word in (" conf ", "NMS IoU "))
    planes = [(to_rgb_uint8(viewer.layers[f"image {s}"].data), viewer.layers[f"labels {s}"].data) for s in range(3)]
    expected = tune_mask_filters(tiny_factory, planes, conf=conf, iou=iou, imgsz=128,
                                 detector=load_detector_state(out))
    assert f" Mask filters: {expected.describe()}: instance F1 {expected.after.f1:.3f} " in widget.tuning.value
    assert "s per image to detect and segment everything." in widget.tuning.value
    assert widget.status_text.endswith(f"; {expected.describe()}")


def test_cancel_writes_no_file(train_dock, qtbot, tmp_path, single_torch_thread):
    viewer, widget = train_dock
    widget.pair_layers()
    widget.out.value = tmp_path / "cancelled.pt"
    widget.run()
    widget.cancel()
    wait_idle(qtbot, widget)
    assert widget.status_text == "cancelled; no detector was written" and widget.last_error is None
    assert list(tmp_path.iterdir()) == [] and widget.report is None and latest_detector() is None


@pytest.mark.parametrize("change, message", [
    (lambda v, w: (v.add_labels(np.ones((64, 64), np.uint16), name="small"), w.reset_choices(),
                   setattr(w.rows[0].labels, "value", v.layers["small"])),
     "pair 1: the labels layer 'small' has shape (64, 64) but the image 'image 0' has (128, 128)"),
    (lambda v, w: w.add_pair(v.layers["image 1"]), "pair 4 has no labels layer"),
    (lambda v, w: [w.remove_pair(row) for row in list(w.rows)], "add at least one pair"),
    (lambda v, w: w.out.__setattr__("value", None), "choose an output file"),
    (lambda v, w: [layer.__setattr__("data", np.zeros_like(layer.data)) for layer in v.layers
                   if layer.name.startswith("labels")], "the labels layers hold no objects"),
])
def test_bad_pairs_and_settings_give_one_line_and_start_nothing(train_dock, tmp_path, change, message):
    viewer, widget = train_dock
    widget.pair_layers()
    widget.out.value = tmp_path / "x.pt"
    change(viewer, widget)
    count = len(notification_manager.records)
    widget.run()
    assert not widget.is_running and message in widget.status_text, widget.status_text
    assert one_line_errors(count) == [widget.status_text] and "\n" not in widget.status_text
    assert list(tmp_path.iterdir()) == []


def test_core_errors_of_a_run_are_one_line(train_dock, qtbot, tmp_path):
    viewer, widget = train_dock
    widget.pair_layers()
    widget.trust_weights.value = False  # the start file is an unknown pickle
    widget.out.value = tmp_path / "x.pt"
    widget.run()
    wait_idle(qtbot, widget)
    assert "trust" in widget.last_error and "\n" not in widget.last_error
    assert list(tmp_path.iterdir()) == []
