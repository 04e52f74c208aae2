"""The "Evaluate labels" and "Fine-tune detector" dock widgets.

Both only gather layers and settings; the work is done by the core
(:func:`napari_mobilesamv2.evaluation.match_labels`,
:func:`napari_mobilesamv2.training.train_detector`,
:func:`napari_mobilesamv2.training.tune_thresholds`,
:func:`napari_mobilesamv2.training.tune_mask_filters`) in a napari thread worker, and
the results are shown (and marker layers written) back on the main thread.

A detector trained here becomes the *latest detector*: :func:`latest_detector`
returns its path and :data:`detector_trained` (a psygnal signal) is emitted with it,
so other docks (the segment-everything detector picker) can offer or use it.
"""

from __future__ import annotations

import csv
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    RadioButtons,
    SpinBox,
    Table,
)
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from psygnal import Signal
from qtpy.QtCore import QObject, Qt, Slot
from qtpy.QtCore import Signal as QtSignal
from qtpy.QtWidgets import QAbstractItemView, QComboBox, QSizePolicy
from scipy import ndimage

from ..devices import resolve_device
from ..errors import InputError, MobileSAMv2Error
from ..evaluation import DEFAULT_IOU_THRESHOLDS, IOU_THRESHOLDS_HELP, MatchingResult, match_labels
from ..evaluation.matching import check_thresholds
from ..export import write_json
from ..imaging import to_rgb_uint8
from ..io import atomic_write, check_output_path
from ..models.config import remember_detector
from ..options import DEVICES, ImageOptions, ModelOptions, option_info
from ..training import (
    DEFAULT_BATCH,
    DEFAULT_EPOCHS,
    DEFAULT_IMGSZ,
    DEFAULT_VAL_FRACTION,
    IMGSZ_MULTIPLE,
    MIN_BATCH,
    MIN_IMGSZ,
    TRAINING_HELP,
    TrainingCancelled,
    TrainingReport,
    boxes_from_labels,
    is_detector_state,
    load_detector_state,
    read_detector_state,
    train_detector,
    tune_mask_filters,
    tune_thresholds,
)
from ._models import get_pipeline
from ._options_form import option_widget

log = logging.getLogger(__name__)

ZERO_WIDTH_SPACE = "\u200b"
MAX_STATUS = 400  # characters of a status line (it wraps; a whole traceback would not help)
SAVE_SUFFIXES = (".json", ".csv")
TABLE_COLUMNS = ("tp", "fp", "fn", "precision", "recall", "F1", "mIoU", "PQ", "AP")
"""Columns of the evaluation table (its rows are the IoU thresholds, then their mean)."""
_TABLE_RATIOS = ("precision", "recall", "f1", "mean_matched_iou", "panoptic_quality", "average_precision")


# --- the latest trained detector, shared with other docks --------------------------------------------


class _DetectorEvents:
    trained = Signal(Path)


_EVENTS = _DetectorEvents()
detector_trained = _EVENTS.trained
"""psygnal signal emitted (on the main thread) with the path of each detector trained in napari."""
_latest: Path | None = None


def latest_detector() -> Path | None:
    """The detector file last written by the "Fine-tune detector" dock in this session, or None."""
    return _latest


def set_latest_detector(path: str | Path | None) -> None:
    """Make `path` the latest detector and tell the listeners of :data:`detector_trained` (None: forget it)."""
    global _latest
    _latest = None if path is None else Path(path)
    if _latest is not None:
        detector_trained.emit(_latest)


# --- shared parts of the two docks ----------------------------------------------------------------------


def _tip(help_text: str, default: Any = None) -> str:
    return help_text if default is None else f"{help_text} (default: {default})"


def _wrapped_label(text: str = "", tooltip: str | None = None) -> Label:
    """A label whose text wraps: a long message never widens the dock."""
    label = Label(value=text, tooltip=tooltip)
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    return label


def _breakable(text: str) -> str:
    """`text` with a line-break chance after each path separator, so long file paths wrap too."""
    return text.replace("/", "/" + ZERO_WIDTH_SPACE).replace("\\", "\\" + ZERO_WIDTH_SPACE)


class _Messenger(QObject):
    """Hands values from the worker thread to a callback on the main thread (a queued Qt signal)."""

    message = QtSignal(object)

    def __init__(self, receiver: Callable[[Any], None]):
        super().__init__()
        self._receiver = receiver
        self.message.connect(self._deliver)

    @Slot(object)
    def _deliver(self, value) -> None:
        self._receiver(value)

    def send(self, value) -> None:
        self.message.emit(value)


class _TaskDock(Container):
    """Base: a scrollable dock running one task at a time in a thread worker, with a status line."""

    def __init__(self, napari_viewer):
        super().__init__(labels=False, scrollable=True)
        self.viewer = napari_viewer
        self.worker = None
        self.last_error: str | None = None
        self.status = _wrapped_label(tooltip="what the dock is doing, or what went wrong")
        self._messenger: _Messenger | None = None

    @property
    def native(self):
        """The scroll area around the controls.

        napari docks a magicgui widget's ``native``; for a scrollable container that is the
        widget inside the scroll area, so the dock would lose its scroll bars.
        """
        return self.root_native_widget

    def _finish_layout(self) -> None:
        """After the controls are added: scroll sideways rather than widen the dock."""
        scroll = self.root_native_widget
        scroll.setMinimumWidth(0)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)

    @property
    def is_running(self) -> bool:
        return self.worker is not None

    def launch(self, work: Callable, *args, done: Callable[[Any], None], on_message: Callable | None = None,
               description: str) -> None:
        """Run ``work(*args, send)`` in a worker; `done(result)` on the main thread; `send(x)` calls `on_message`."""
        if self.is_running:
            show_info("still running; wait or cancel it first")
            return
        self.last_error = None
        self._messenger = _Messenger(on_message or (lambda _: None))
        worker = create_worker(work, *args, self._messenger.send, _ignore_errors=True)
        worker.returned.connect(lambda result: self._done(done, result, description))
        worker.errored.connect(self._report)
        worker.finished.connect(self._finished)
        self.worker = worker
        self._running_changed(True)
        self._set_status(f"running: {description}")
        worker.start()

    def _done(self, done: Callable, result, description: str) -> None:
        try:
            done(result)
        except Exception as error:  # noqa: BLE001 - shown to the user
            self._report(error)
            return
        if self.last_error is None and not self.status_text.startswith("done"):
            self._set_status(f"done: {description}")

    def _finished(self) -> None:
        self.worker = None
        self._running_changed(False)

    def _running_changed(self, running: bool) -> None:
        """Enable or disable the controls of a running task (subclasses)."""

    def _report(self, error: BaseException) -> None:
        if isinstance(error, MobileSAMv2Error):
            message = str(error)
        else:
            log.error("MobileSAMv2 failed", exc_info=error)
            message = f"MobileSAMv2 failed: {type(error).__name__}: {error}"
        message = " ".join(message.split())  # one line
        self.last_error = message
        self._set_status(message)
        show_error(message)

    @property
    def status_text(self) -> str:
        """The status line as plain text."""
        return self.status.value.replace(ZERO_WIDTH_SPACE, "")

    def _set_status(self, text: str) -> None:
        self.status.value = _breakable(text[:MAX_STATUS])


def _narrow(combo: ComboBox, characters: int = 3) -> ComboBox:
    """Let a layer menu shrink to a few characters: long layer names must not widen the dock."""
    combo.native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.native.setMinimumContentsLength(characters)
    return combo


def _compact(container: Container) -> Container:
    """No margins and little spacing: rows of small controls inside a dock."""
    layout = container.native.layout()
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(2)
    return container


def _form(*widgets) -> Container:
    """Labelled controls, one per line, flush with the dock's other controls."""
    form = Container(labels=True, widgets=widgets)
    form.native.layout().setContentsMargins(0, 0, 0, 0)
    return form


def _layers_of(viewer, kind, none_label: str | None = None) -> Callable:
    def choices(_widget=None):
        found = [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]
        return ([(none_label, None)] if none_label else []) + found

    return choices


def _layer_array(layer) -> Any:
    """The full-resolution data of a layer (level 0 of a multiscale layer), not read yet."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def _spatial_shape(layer) -> tuple[int, ...]:
    """Shape of an image layer without its RGB(A) axis, or of a labels layer."""
    shape = tuple(_layer_array(layer).shape)
    return shape[:-1] if isinstance(layer, Image) and layer.rgb else shape


def _current_plane(layer, viewer) -> tuple[int, ...]:
    """Indices along the leading axes of `layer` (all but the last two) at the viewer's position."""
    shape = _spatial_shape(layer)
    lead = len(shape) - 2
    if lead <= 0:
        return ()
    position = layer.world_to_data(viewer.dims.point)
    return tuple(int(np.clip(round(float(position[a])), 0, shape[a] - 1)) for a in range(lead))


# --- Evaluate labels -----------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """What the evaluation dock computed: the core's result and where it came from.

    Attributes
    ----------
    result : MatchingResult
        :func:`~napari_mobilesamv2.evaluation.match_labels` of the two label arrays.
    ground_truth, prediction : str
        Names of the two Labels layers.
    plane : tuple of int or None
        Indices along the leading axes of the evaluated plane; None for the whole layer.
    missed, false_positives : numpy.ndarray
        (n, ndim) centroids, in the layers' data coordinates, of the ground-truth objects without
        a partner and of the predicted objects without a partner, at the lowest threshold.
    """

    result: MatchingResult
    ground_truth: str
    prediction: str
    plane: tuple[int, ...] | None
    missed: np.ndarray
    false_positives: np.ndarray

    def to_dict(self) -> dict:
        """Plain Python values for JSON."""
        return {"ground_truth": self.ground_truth, "prediction": self.prediction,
                "plane": None if self.plane is None else list(self.plane), **self.result.to_dict()}


def evaluate_arrays(gt: np.ndarray, pred: np.ndarray, thresholds: Sequence[float],
                    plane: tuple[int, ...] | None = None) -> tuple[MatchingResult, np.ndarray, np.ndarray]:
    """Match two label arrays and find the centroids of the unmatched objects (worker-thread safe).

    Returns
    -------
    result : MatchingResult
    missed, false_positives : numpy.ndarray
        (n, len(plane) + gt.ndim) float64 centroids of the unmatched ground-truth and predicted
        objects at the lowest threshold, with the plane indices in front.
    """
    result = match_labels(gt, pred, thresholds)
    lowest = result.at(min(result.thresholds))
    missed = _centroids(gt, np.setdiff1d(np.unique(gt[gt != 0]), lowest.true_ids), plane or ())
    extra = _centroids(pred, np.setdiff1d(np.unique(pred[pred != 0]), lowest.pred_ids), plane or ())
    return result, missed, extra


def _centroids(labels: np.ndarray, ids: np.ndarray, plane: tuple[int, ...]) -> np.ndarray:
    width = len(plane) + labels.ndim
    if len(ids) == 0:
        return np.zeros((0, width), np.float64)
    centres = np.asarray(ndimage.center_of_mass(np.ones(labels.shape, np.uint8), labels, ids), np.float64)
    centres = centres.reshape(len(ids), labels.ndim)
    return np.hstack([np.broadcast_to(np.asarray(plane, np.float64), (len(ids), len(plane))), centres])


class EvaluateWidget(_TaskDock):
    """Dock widget: compare a predicted Labels layer with a ground-truth Labels layer."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        viewer = napari_viewer
        self.ground_truth = _narrow(ComboBox(label="ground truth", choices=_layers_of(viewer, Labels),
                                             tooltip="the Labels layer holding the true objects (0 is background)"))
        self.prediction = _narrow(ComboBox(label="prediction", choices=_layers_of(viewer, Labels),
                                           tooltip="the Labels layer to score, of the same shape as the ground truth"))
        self.scope = RadioButtons(
            label="scope", choices=[("current plane", "plane"), ("whole stack", "stack")], value="plane",
            tooltip="current plane: the plane shown in the viewer; whole stack: every plane at once, objects "
                    "being nD (a stack's objects linked through z or t count once)",
        )
        self.thresholds = LineEdit(label="IoU thresholds", value=", ".join(f"{t:g}" for t in DEFAULT_IOU_THRESHOLDS),
                                   tooltip=IOU_THRESHOLDS_HELP)
        self.mark = CheckBox(text="mark missed and extra objects", value=True,
                             tooltip="add Points layers at the missed ground-truth objects and at the predicted "
                                     "objects without a partner, at the lowest IoU threshold")
        self.run_button = PushButton(text="Run evaluation", tooltip="match the objects of the two layers")
        self.table = Table(value={"data": [], "columns": list(TABLE_COLUMNS)},
                           tooltip="one row per IoU threshold and the mean over them: matched pairs (tp), extra "
                                   "(fp) and missed (fn) objects, precision, recall, F1, mean IoU of the matched "
                                   "pairs (mIoU), panoptic quality (PQ) and AP = tp / (tp + fp + fn)")
        self.table.native.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.native.setMinimumHeight(160)
        self.save_path = FileEdit(label="save to", mode="w", nullable=True, filter="*.json *.csv",
                                  tooltip="file for the results: .json (every number) or .csv (the table rows)")
        self.save_button = PushButton(text="Save results", tooltip="write the last evaluation to 'save to'")
        self.evaluation: Evaluation | None = None
        self.extend([_form(self.ground_truth, self.prediction, self.scope, self.thresholds), self.mark,
                     self.run_button, self.status, self.table, _form(self.save_path), self.save_button])
        self.run_button.changed.connect(self.run)
        self.save_button.changed.connect(self.save)
        self._finish_layout()

    def run(self) -> None:
        """Evaluate the prediction layer against the ground-truth layer (in a worker)."""
        try:
            gt_layer, pred_layer, gt, pred, thresholds, plane = self._inputs()
        except MobileSAMv2Error as error:
            self._report(error)
            return
        description = f"evaluating {pred_layer.name!r} against {gt_layer.name!r}"
        self.launch(lambda send: evaluate_arrays(np.asarray(gt), np.asarray(pred), thresholds, plane),
                    done=lambda found: self._show(found, gt_layer, pred_layer, plane), description=description)

    def _inputs(self):
        gt_layer, pred_layer = self.ground_truth.value, self.prediction.value
        if gt_layer is None or pred_layer is None:
            raise InputError("pick a ground-truth and a prediction Labels layer (add or open label images first)")
        gt_shape, pred_shape = _spatial_shape(gt_layer), _spatial_shape(pred_layer)
        if gt_shape != pred_shape:
            raise InputError(f"the ground truth {gt_layer.name!r} has shape {gt_shape} but the prediction "
                             f"{pred_layer.name!r} has shape {pred_shape}; pick two layers of the same image")
        thresholds = _parse_thresholds(self.thresholds.value)
        gt, pred = _layer_array(gt_layer), _layer_array(pred_layer)
        plane = None
        if self.scope.value == "plane" and len(gt_shape) > 2:
            plane = _current_plane(gt_layer, self.viewer)
            gt, pred = gt[plane], pred[plane]
        return gt_layer, pred_layer, gt, pred, thresholds, plane

    def _show(self, found, gt_layer: Labels, pred_layer: Labels, plane) -> None:
        result, missed, extra = found
        self.evaluation = Evaluation(result, gt_layer.name, pred_layer.name, plane, missed, extra)
        self.table.value = {"data": table_rows(result), "columns": list(TABLE_COLUMNS),
                            "index": [f"{t:g}" for t in result.thresholds] + ["mean"]}
        self.table.native.resizeColumnsToContents()
        if self.mark.value:
            size = max(3.0, min(_spatial_shape(gt_layer)[-2:]) / 50)
            _put_points(self.viewer, f"{gt_layer.name} missed", missed, gt_layer, "magenta", size)
            _put_points(self.viewer, f"{pred_layer.name} extra", extra, gt_layer, "yellow", size)
        first = result.at(min(result.thresholds))
        if plane:
            where = f"plane {', '.join(map(str, plane))}"
        else:
            where = "image" if len(_spatial_shape(gt_layer)) == 2 else "whole stack"
        self._set_status(
            f"done ({where}): at IoU {first.threshold:g} {first.tp} matched, {first.fn} missed, {first.fp} extra "
            f"of {first.n_true} true and {first.n_pred} predicted objects; F1 {first.f1:.3f}; "
            f"mean AP over the thresholds {result.mean('average_precision'):.3f}"
        )

    def save(self) -> None:
        """Write the last evaluation to the chosen .json or .csv file."""
        try:
            save_evaluation(self.evaluation, self.save_path.value)
        except MobileSAMv2Error as error:
            self._report(error)
            return
        self._set_status(f"saved {self.save_path.value}")


def _parse_thresholds(text: str) -> tuple[float, ...]:
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"IoU thresholds must be numbers separated by commas (e.g. 0.5, 0.75), not {text!r}") from None
    return check_thresholds(values)


def table_rows(result: MatchingResult) -> list[list]:
    """The rows of the evaluation table: one per threshold, then the means of the ratios (3 decimals)."""
    rows = [[s.tp, s.fp, s.fn, *(round(getattr(s, name), 3) for name in _TABLE_RATIOS)] for s in result.stats]
    rows.append([None, None, None, *(round(result.mean(name), 3) for name in _TABLE_RATIOS)])
    return rows


def save_evaluation(evaluation: Evaluation | None, path: str | Path | None) -> Path:
    """Write an evaluation as JSON (every number) or CSV (one row per threshold), atomically.

    Raises
    ------
    InputError
        Nothing was evaluated yet, no file was chosen, or the file type is neither .json nor .csv.
    OutputError
        The file cannot be written.
    """
    if evaluation is None:
        raise InputError("nothing to save yet: run the evaluation first")
    if path is None or Path(path).is_dir() or str(path) in ("", "."):
        raise InputError("choose a file to save to (ending in .json or .csv)")
    path = Path(path)
    if path.suffix.lower() not in SAVE_SUFFIXES:
        raise InputError(f"save as .json or .csv, not {path.suffix or 'a file without a type'} ({path.name})")
    check_output_path(path)
    if path.suffix.lower() == ".json":
        write_json(path, evaluation.to_dict())
        return path
    rows = [{"ground_truth": evaluation.ground_truth, "prediction": evaluation.prediction, **s.to_dict()}
            for s in evaluation.result.stats]
    with atomic_write(path) as partial, open(partial, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _put_points(viewer, name: str, coords: np.ndarray, frame, colour: str, size: float) -> None:
    """Show `coords` in a Points layer called `name` (replacing its points if it exists) in `frame`'s space."""
    ndim = frame.ndim
    coords = coords.reshape(-1, ndim) if coords.size else np.zeros((0, ndim), np.float64)
    if name in viewer.layers and viewer.layers[name].ndim == ndim:
        viewer.layers[name].data = coords
        return
    if name in viewer.layers:
        viewer.layers.remove(name)
    viewer.add_points(coords, ndim=ndim, name=name, face_color=colour, border_color="black", size=size,
                      scale=frame.scale, translate=frame.translate)


# --- Fine-tune detector --------------------------------------------------------------------------------


class PairRow(Container):
    """One (image layer, labels layer) pair of the training data, with a button removing it."""

    def __init__(self, viewer, on_remove: Callable[[PairRow], None]):
        super().__init__(layout="horizontal", labels=False)
        self.image = _narrow(ComboBox(choices=_layers_of(viewer, Image, "(image)"),
                                      tooltip=_tip(TRAINING_HELP["images"])))
        self.labels = _narrow(ComboBox(choices=_layers_of(viewer, Labels, "(labels)"),
                                       tooltip=_tip(TRAINING_HELP["labels"])))
        self.remove_button = PushButton(text="\u2212", tooltip="remove this pair")
        self.remove_button.native.setMaximumWidth(32)
        self.extend([self.image, self.labels, self.remove_button])
        _compact(self)
        self.remove_button.changed.connect(lambda: on_remove(self))


@dataclass
class TrainingData:
    """The planes of the layer pairs that hold objects, ready for the core.

    Attributes
    ----------
    images, labels : list of numpy.ndarray
        One 2D (or (H, W, 3) RGB) image and its 2D label image per annotated plane.
    skipped : int
        Planes without any object (not used).
    """

    images: list[np.ndarray]
    labels: list[np.ndarray]
    skipped: int


def training_data(pairs: Sequence[tuple[Image | None, Labels | None]]) -> TrainingData:
    """The annotated planes of (image layer, labels layer) pairs; a stack gives one pair per plane.

    Raises
    ------
    InputError
        No pair, a row without a layer, shapes that differ, or no object at all.
    """
    if not pairs:
        raise InputError("add at least one pair of an image layer and its labels layer ('Add pair' or "
                         "'Pair layers by shape')")
    images, labels, skipped = [], [], 0
    for row, (image, label) in enumerate(pairs, start=1):
        if image is None or label is None:
            raise InputError(f"pair {row} has no {'image' if image is None else 'labels'} layer; pick one or "
                             "remove the pair")
        image_shape, label_shape = _spatial_shape(image), _spatial_shape(label)
        if image_shape != label_shape:
            raise InputError(f"pair {row}: the labels layer {label.name!r} has shape {label_shape} but the image "
                             f"{image.name!r} has {image_shape}; pair each image with the labels drawn on it")
        if len(image_shape) < 2:
            raise InputError(f"pair {row}: {image.name!r} is not an image (shape {image_shape})")
        image_data, label_data = np.asarray(_layer_array(image)), np.asarray(_layer_array(label))
        for index in np.ndindex(*image_shape[:-2]):
            plane_labels = label_data[index]
            if not plane_labels.any():
                skipped += 1
                continue
            images.append(image_data[index])
            labels.append(plane_labels)
    if not labels:
        raise InputError("the labels layers hold no objects; draw or segment objects in them first")
    return TrainingData(images, labels, skipped)


def pair_by_shape(layers) -> list[tuple[Image, Labels]]:
    """Pair each Labels layer with the first unused Image layer of the same shape, in layer order."""
    images = [layer for layer in layers if isinstance(layer, Image)]
    pairs, used = [], set()
    for label in (layer for layer in layers if isinstance(layer, Labels)):
        for image in images:
            if id(image) not in used and _spatial_shape(image) == _spatial_shape(label):
                pairs.append((image, label))
                used.add(id(image))
                break
    return pairs


@dataclass
class _TrainingRun:
    data: TrainingData
    out: Path
    start: Path | None
    trust_weights: bool
    epochs: int
    imgsz: int
    batch: int
    val_fraction: float
    device: str
    normalization: str


class TrainDetectorWidget(_TaskDock):
    """Dock widget: fine-tune the object-aware detector on image and Labels layer pairs."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.rows: list[PairRow] = []
        self.pairs_title = _wrapped_label("Training pairs (image layer, its labels layer):",
                                          tooltip="each pair is an image and the objects drawn on it; a stack "
                                                  "gives one training image per plane with objects")
        self.pairs = _compact(Container(labels=False))
        self.add_pair_button = PushButton(text="Add pair", tooltip="add a row: an image layer and its labels layer")
        self.pair_button = PushButton(
            text="Pair layers by shape",
            tooltip="replace the rows by pairs of selected (or, with fewer than two selected, all) image and "
                    "labels layers of the same shape",
        )
        self.normalization = option_widget(option_info(ImageOptions, "normalization"))
        self.epochs = SpinBox(label="epochs", min=1, max=10_000, value=DEFAULT_EPOCHS,
                              tooltip=_tip(TRAINING_HELP["epochs"], DEFAULT_EPOCHS))
        self.imgsz = SpinBox(label="imgsz", min=MIN_IMGSZ, max=4096, step=IMGSZ_MULTIPLE, value=DEFAULT_IMGSZ,
                             tooltip=_tip(TRAINING_HELP["imgsz"], DEFAULT_IMGSZ))
        self.batch = SpinBox(label="batch", min=MIN_BATCH, max=512, value=DEFAULT_BATCH,
                             tooltip=_tip(TRAINING_HELP["batch"], DEFAULT_BATCH))
        self.val_fraction = FloatSpinBox(label="held out", min=0.05, max=0.9, step=0.05, value=DEFAULT_VAL_FRACTION,
                                         tooltip=_tip(TRAINING_HELP["val_fraction"], DEFAULT_VAL_FRACTION))
        device = option_info(ModelOptions, "device")
        self.device = ComboBox(label="device", choices=DEVICES, value=device.default,
                               tooltip=device.help_with_default())
        self.start = FileEdit(label="start detector", mode="r", nullable=True, filter="*.pt *.pth",
                              tooltip=TRAINING_HELP["start"])
        self.trust_weights = option_widget(option_info(ModelOptions, "trust_weights"))
        self.out = FileEdit(label="output file", mode="w", nullable=True, filter="*.pt",
                            tooltip=TRAINING_HELP["out"])
        self.run_button = PushButton(text="Run training", tooltip="fine-tune the detector on the pairs above")
        self.stop_button = PushButton(text="Stop, keep best epoch", enabled=False,
                                      tooltip="stop after the current batch, validate, and save the best epoch so far")
        self.cancel_button = PushButton(text="Cancel", enabled=False,
                                        tooltip="abandon training after the current batch; no file is written")
        self.summary = _wrapped_label(tooltip="what the last training wrote and how well the detector does")
        self.tune_button = PushButton(
            text="Run threshold tuning",
            tooltip="choose the detector confidence and NMS IoU thresholds with the best box F1 on the pairs above, "
                    "then the mask filters (min predicted IoU, min stability, min area) with the best instance F1, "
                    "for the detector just trained (or the output file)",
        )
        self.encoder = option_widget(option_info(ModelOptions, "encoder"))
        self.tuning = _wrapped_label(tooltip="the chosen thresholds and mask filters, and the time per image")
        self.report: TrainingReport | None = None
        self._cancel, self._stop = threading.Event(), threading.Event()
        self._bar = None
        self.extend([
            self.pairs_title, self.pairs, self.add_pair_button, self.pair_button,
            _form(self.normalization, self.epochs, self.imgsz, self.batch, self.val_fraction, self.device, self.start),
            self.trust_weights, _form(self.out), self.run_button, self.stop_button, self.cancel_button, self.status,
            self.summary, _form(self.encoder), self.tune_button, self.tuning,
        ])
        self.add_pair_button.changed.connect(lambda: self.add_pair())
        self.pair_button.changed.connect(self.pair_layers)
        self.run_button.changed.connect(self.run)
        self.stop_button.changed.connect(self.stop)
        self.cancel_button.changed.connect(self.cancel)
        self.tune_button.changed.connect(self.tune)
        self.add_pair()
        self._finish_layout()

    # rows

    def add_pair(self, image: Image | None = None, labels: Labels | None = None) -> PairRow:
        """Add a row, optionally set to the given layers."""
        row = PairRow(self.viewer, self.remove_pair)
        self.rows.append(row)
        self.pairs.append(row)
        if image is not None:
            row.image.value = image
        if labels is not None:
            row.labels.value = labels
        return row

    def remove_pair(self, row: PairRow) -> None:
        """Remove a row."""
        if row in self.rows:
            self.rows.remove(row)
            self.pairs.remove(row)

    def pair_layers(self) -> None:
        """Fill the rows with image and labels layers of the same shape (selected ones, or all)."""
        selected = [layer for layer in self.viewer.layers if layer in self.viewer.layers.selection]
        found = pair_by_shape(selected if len(selected) >= 2 else list(self.viewer.layers))
        if not found:
            self._report(InputError("no image layer and labels layer of the same shape to pair"))
            return
        for row in list(self.rows):
            self.remove_pair(row)
        for image, labels in found:
            self.add_pair(image, labels)
        self._set_status(f"{len(found)} pair(s): " + "; ".join(f"{i.name} + {lab.name}" for i, lab in found))

    def layer_pairs(self) -> list[tuple[Image | None, Labels | None]]:
        return [(row.image.value, row.labels.value) for row in self.rows]

    # training

    def run(self) -> None:
        """Fine-tune the detector on the pairs (in a worker)."""
        if self.is_running:
            show_info("still running; wait or cancel it first")
            return
        try:
            settings = self._settings()
        except MobileSAMv2Error as error:
            self._report(error)
            return
        self._cancel.clear()
        self._stop.clear()
        self.report = None
        self.summary.value = ""
        self._bar = progress(total=settings.epochs, desc="fine-tuning the detector")
        n = len(settings.data.labels)
        skipped = f", {settings.data.skipped} plane(s) without objects left out" if settings.data.skipped else ""
        self.launch(_train, settings, self._cancel.is_set, self._stop.is_set, done=self._trained,
                    on_message=self._show_epoch,
                    description=f"fine-tuning the detector on {n} annotated plane(s){skipped}")

    def _settings(self) -> _TrainingRun:
        out = self.out.value
        if out is None or str(out) in ("", ".") or Path(out).is_dir():
            raise InputError("choose an output file for the detector (e.g. nuclei_detector.pt)")
        start = self.start.value
        start = None if start is None or str(start) in ("", ".") else Path(start)
        if start is not None and Path(out).resolve() == start.resolve():
            raise InputError(f"the output file {out} is the start detector; choose another output file")
        return _TrainingRun(
            data=training_data(self.layer_pairs()), out=Path(out), start=start,
            trust_weights=bool(self.trust_weights.value), epochs=int(self.epochs.value),
            imgsz=int(self.imgsz.value), batch=int(self.batch.value), val_fraction=float(self.val_fraction.value),
            device=str(self.device.value), normalization=str(self.normalization.value),
        )

    def stop(self) -> None:
        """Stop after the current batch and save the best epoch so far."""
        if self.is_running:
            self._stop.set()
            self._set_status("stopping after the current batch; the best epoch so far will be saved")

    def cancel(self) -> None:
        """Abandon the run after the current batch (or step); nothing is written."""
        if self.is_running:
            self._cancel.set()
            self._set_status("cancelling after the current batch; nothing will be written")

    def _show_epoch(self, message) -> None:
        if self._cancel.is_set() or (self._stop.is_set() and message[0] != "epoch"):
            return  # keep the cancelling / stopping line
        if message[0] == "stage":
            self._set_status(f"running: {message[1]}")
            return
        _, epoch, metrics = message
        losses = ", ".join(f"{name.removesuffix('_loss')} {metrics[name]:.3f}"
                           for name in ("box_loss", "cls_loss", "dfl_loss") if name in metrics)
        self._set_status(
            f"epoch {epoch} of {metrics['epochs']}: loss {losses}; held-out precision {metrics['precision']:.3f}, "
            f"recall {metrics['recall']:.3f}, mAP50 {metrics['map50']:.3f} ({metrics['seconds']:.0f} s)"
        )
        if self._bar is not None:
            self._bar.total = metrics["epochs"]
            self._bar.n = epoch
            self._bar.refresh()

    def _trained(self, report: TrainingReport) -> None:
        self.report = report
        self.summary.value = _breakable(training_summary(report))
        set_latest_detector(report.path)
        remember_detector(report.path)  # listed in the model section's detectors in later sessions too
        cancelled = " (Cancel came too late: the detector was already written)" if self._cancel.is_set() else ""
        stopped = f", stopped after epoch {report.epochs_run}" if report.stopped_early else ""
        self._set_status(f"done: wrote {report.path}{stopped}{cancelled}")

    def _report(self, error: BaseException) -> None:
        if isinstance(error, TrainingCancelled):
            self.last_error = None
            self._set_status("cancelled; no detector was written")
            return
        super()._report(error)

    def _running_changed(self, running: bool) -> None:
        for button in (self.run_button, self.tune_button):
            button.enabled = not running
        self.stop_button.enabled = self.cancel_button.enabled = running and self._bar is not None
        if not running and self._bar is not None:
            self._bar.close()
            self._bar = None

    # threshold tuning

    def tune(self) -> None:
        """Choose the detector thresholds (best box F1), then the mask filters (best instance F1), in a worker."""
        try:
            detector = self._detector_to_tune()
            data = training_data(self.layer_pairs())
        except MobileSAMv2Error as error:
            self._report(error)
            return
        self.tuning.value = ""
        self.launch(_tune, detector, data, str(self.normalization.value), int(self.imgsz.value),
                    str(self.device.value), str(self.encoder.value), done=self._tuned, on_message=self._show_epoch,
                    description=f"tuning the thresholds of {detector.name} on {len(data.labels)} annotated plane(s)")

    def _detector_to_tune(self) -> Path:
        if self.report is not None and self.report.path.is_file():
            return self.report.path
        out = self.out.value
        if out is not None and Path(out).is_file() and is_detector_state(out):
            return Path(out)
        raise InputError("train a detector first, or choose a detector written by training as the output file")

    def _tuned(self, found: TuningResult) -> None:
        self.tuning.value = _breakable(tuning_summary(found.thresholds, found.device, found.imgsz, found.n_planes,
                                                      found.mask_filters, found.not_tuned))
        filters = f"; {found.mask_filters.describe()}" if found.mask_filters is not None else ""
        self._set_status(f"done: thresholds conf {found.thresholds.conf:g}, NMS IoU {found.thresholds.iou:g}{filters}")


def _train(run: _TrainingRun, cancelled: Callable[[], bool], stopped: Callable[[], bool],
           send: Callable) -> TrainingReport:
    """The training task (worker thread)."""
    send(("stage", "preparing the data and scoring the starting detector"))
    return train_detector(
        run.data.images, run.data.labels, run.out, start=run.start, trust_weights=run.trust_weights,
        epochs=run.epochs, imgsz=run.imgsz, batch=run.batch, device=run.device, val_fraction=run.val_fraction,
        normalization=run.normalization, on_epoch=lambda epoch, metrics: send(("epoch", epoch, metrics)),
        should_stop=stopped, should_cancel=cancelled,
    )


@dataclass
class TuningResult:
    """What "Run threshold tuning" found (``mask_filters`` is None when the models were not at hand)."""

    thresholds: Any
    mask_filters: Any
    not_tuned: str | None
    device: str
    imgsz: int
    n_planes: int


def _tune(path: Path, data: TrainingData, normalization: str, imgsz: int, device: str, encoder: str,
          send: Callable) -> TuningResult:
    """The tuning task (worker thread): thresholds, then mask filters at them with the pipeline of `encoder`."""
    torch_device = resolve_device(device)
    imgsz = int(read_detector_state(path).get("inference", {}).get("imgsz", imgsz))
    detector = load_detector_state(path).to(torch_device)
    rgb = [to_rgb_uint8(image, normalization=normalization) for image in data.images]
    send(("stage", "tuning the detector thresholds"))
    choice = tune_thresholds(detector, [(image, boxes_from_labels(labels)) for image, labels in zip(rgb, data.labels)],
                             imgsz=imgsz, device=torch_device)
    filters, not_tuned = None, None
    try:
        pipeline = get_pipeline(encoder, device)
    except MobileSAMv2Error as error:  # e.g. no network for the first download: the thresholds still count
        not_tuned = f"Mask filters not tuned: the {encoder} pipeline cannot be built: {error}"
    else:
        filters = tune_mask_filters(
            pipeline, list(zip(rgb, data.labels)), conf=choice.conf, iou=choice.iou, imgsz=imgsz, detector=detector,
            device=torch_device,
            before_image=lambda i: send(("stage", f"tuning the mask filters: segmenting plane {i + 1} of {len(rgb)}")),
        )
    return TuningResult(choice, filters, not_tuned, str(torch_device), imgsz, len(rgb))


def training_summary(report: TrainingReport) -> str:
    """A few lines on what :func:`~napari_mobilesamv2.training.train_detector` wrote (its model card)."""
    best = report.history[report.best_epoch - 1] if report.history else {}
    stopped = " (stopped early)" if report.stopped_early else ""
    t = report.thresholds
    return (
        f"Wrote {report.path} and its model card {report.card_path.name}. "
        f"Best epoch {report.best_epoch} of {report.epochs_run}{stopped}: held-out box mAP50 "
        f"{best.get('map50', 0.0):.3f}, recall {best.get('recall', 0.0):.3f}. "
        f"Thresholds chosen on {report.card['data']['n_val_images']} held-out image(s): conf {t.conf:g}, NMS IoU "
        f"{t.iou:g}; box F1 {report.after.f1:.3f} (before fine-tuning {report.before.f1:.3f} at conf 0.4, "
        f"IoU 0.9). {t.scores.seconds_per_image:.3f} s per image at imgsz {report.imgsz} on "
        f"{report.card['inference']['device']}. Segment with it: detector file {report.path.name}, imgsz "
        f"{report.imgsz}, conf {t.conf:g}, NMS IoU {t.iou:g}."
    )


def tuning_summary(choice, device: str, imgsz: int, n_planes: int, filters=None, not_tuned: str | None = None) -> str:
    """The thresholds :func:`~napari_mobilesamv2.training.tune_thresholds` chose, then the mask filters
    :func:`~napari_mobilesamv2.training.tune_mask_filters` chose (or why they were not tuned)."""
    s = choice.scores
    text = (
        f"Best on {n_planes} annotated plane(s): conf {choice.conf:g}, NMS IoU {choice.iou:g}: box F1 {s.f1:.3f} "
        f"(precision {s.precision:.3f}, recall {s.recall:.3f}; {s.n_matched} of {s.n_true} objects found). "
        f"{s.seconds_per_image:.3f} s per image at imgsz {imgsz} on {device}."
    )
    if filters is not None:
        a = filters.after
        text += (
            f" Mask filters: {filters.describe()}: instance F1 {a.f1:.3f} (precision {a.precision:.3f}, recall "
            f"{a.recall:.3f}; without filters {filters.before.f1:.3f}). {filters.seconds_per_image:.3f} s per image "
            "to detect and segment everything."
        )
    elif not_tuned:
        text += f" {not_tuned}"
    return text
