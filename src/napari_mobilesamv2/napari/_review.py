"""The "Review objects" dock: step through the objects of a segment-everything result.

The objects of a Labels layer whose ``features`` hold the object table (score,
predicted IoU, stability, area) are ranked by one column and shown one at a time,
centred, with the others dimmed. Keys accept, reject, merge or split the current
object; range sliders hide objects (through the layer's colormap, the labels are not
touched) until "Apply filters" removes them.

Every change of the labels is one step of the layer's own undo history (Ctrl+Z on
the layer or "Undo last change"). napari's undo restores pixels only, so each
change also records the features table before and after it, and the table follows
the history when it is undone or redone (:class:`FeatureHistory`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, FloatRangeSlider, Label, PushButton
from napari.layers import Labels, Shapes
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import Qt
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import QShortcut

from .. import review
from ..errors import InputError, MobileSAMv2Error
from ..options import ImageOptions
from . import api
from ._layers import check_output, image_view, set_labels_exactly
from ._widgets import JobWidget

#: key -> action of the review (bound on the viewer and the reviewed layer while a review is on,
#: and on the dock while it has the focus)
REVIEW_KEYS: dict[str, str] = {
    "A": "accept", "R": "reject", "Delete": "reject", "N": "next", "B": "back", "M": "merge", "S": "split",
}
DIMMED = 0.35  # opacity factor of the objects other than the current one
UNLISTED_COLOUR = (0.75, 0.75, 0.75, 1.0)  # labels painted during the review (not in the colour table)
ACCEPTED = "accepted"  # features column marking accepted objects

_HELP = {
    "labels": "the Labels layer to review; it needs the object table that Segment everything writes into "
              "its features (score, predicted IoU, stability, area)",
    "rank": "the column the objects are ranked by",
    "order": "; ".join(f"{name}: {text}" for name, text in review.ORDERS.items()),
    "only_current": "hide every object except the current one (napari's 'show selected')",
    "start": "start stepping through the objects of the chosen layer (press again to stop; filters not yet "
             "applied are dropped, nothing else changes)",
    "back": "go to the previous object (key B)",
    "next": "go to the next object (key N)",
    "accept": "mark the object as accepted (features column 'accepted') and go to the next (key A)",
    "reject": "delete the object from the labels, one undo step (key R or Delete)",
    "merge": "make the object part of the previous one in the queue, one undo step (key M)",
    "split": "first press: draw boxes over parts of the object in the 'split boxes' layer; second press: "
             "decode the boxes with the model and cut the parts out as new objects, one undo step (key S)",
    "undo": "undo the last change of the labels layer and its table (Ctrl+Z on the layer does the same)",
    "apply": "delete the objects the filters hide, one undo step",
    "reset": "show every object again (open every filter)",
}


def _wrapped(label: Label) -> Label:
    label.native.setWordWrap(True)
    return label


def _row(*widgets) -> Container:
    return Container(widgets=widgets, layout="horizontal", labels=False)


def _undo_history(layer: Labels):
    # napari 0.9's Labels keeps its history in these deques of items (lists of atoms); undo
    # and redo move an item between them, keeping the atom objects.
    return getattr(layer, "_undo_history", ()), getattr(layer, "_redo_history", ())


def _history_key(layer: Labels) -> tuple:
    """Changes when an item is added to, undone from or redone into the history."""
    undo, redo = _undo_history(layer)
    return len(undo), len(redo), id(undo[-1]) if len(undo) else 0, id(redo[-1]) if len(redo) else 0


def _last_item(layer: Labels):
    undo, _ = _undo_history(layer)
    return undo[-1] if len(undo) else None


@dataclass
class _Change:
    atom: Any  # the first atom of the change's history item (kept by undo and redo)
    before: pd.DataFrame
    after: pd.DataFrame
    status: str = "undo"  # where its item is: "undo" (applied), "redo" (undone), "old" (applied, out of reach)


class FeatureHistory:
    """The features table of a Labels layer, following the layer's undo history.

    Each change made by the review records its history item and the table before
    and after. :meth:`sync` (after an undo, a redo or a new edit) finds how many
    changes are applied now and puts the matching table back.
    """

    def __init__(self, layer: Labels):
        self.layer = layer
        self.changes: list[_Change] = []
        self.applied = 0

    def record(self, item, before: pd.DataFrame, after: pd.DataFrame) -> None:
        self.changes = self.changes[: self.applied]  # undone changes can no longer be redone
        self.changes.append(_Change(item[0], before, after))
        self.applied = len(self.changes)

    def sync(self) -> bool:
        """Put back the table of the current history state; True if it changed."""
        undo, redo = _undo_history(self.layer)
        in_undo = {id(atom) for item in undo for atom in item}
        in_redo = {id(atom) for item in redo for atom in item}
        for change in self.changes:
            if id(change.atom) in in_undo:
                change.status = "undo"
            elif id(change.atom) in in_redo:
                change.status = "redo"
            elif change.status != "redo":
                change.status = "old"  # dropped off the end of a full history: stays applied
            else:
                change.status = "gone"  # undone, then a new edit cleared the redo history
        applied = sum(c.status in ("undo", "old") for c in self.changes)
        old_applied = self.applied
        table = None
        if applied < old_applied:
            table = self.changes[applied].before
        elif applied > old_applied:
            table = self.changes[applied - 1].after
        self.changes = [c for c in self.changes if c.status != "gone"]
        self.applied = applied
        if table is not None:
            self.layer.features = table.copy()
        return table is not None


class _KeyBinding:
    """One review key bound on a viewer or layer; remembers the binding it replaced."""

    def __init__(self, provider, key: str, action: Callable[[], None]):
        self.provider, self.key, self.action = provider, key, action
        self.replaced = provider.bind_key(key, self, overwrite=True)

    def __call__(self, *_) -> None:
        self.action()

    def release(self) -> None:
        current = self.provider.bind_key(self.key, None)
        if current is not self and current is not None:  # bound on top of ours: keep it
            self.provider.bind_key(self.key, current)
        elif self.replaced is not None:
            self.provider.bind_key(self.key, self.replaced)


class ReviewWidget(JobWidget):
    """Dock widget: review the objects of a segment-everything result one by one, and filter them."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        viewer = napari_viewer
        self.labels_layer = ComboBox(label="labels", choices=self._labels_layers, tooltip=_HELP["labels"])
        self.rank_by = ComboBox(
            label="rank by", choices=[(review.COLUMN_NAMES[c], c) for c in review.REVIEW_COLUMNS],
            value=review.DEFAULT_RANK_COLUMN,
            tooltip=_HELP["rank"] + ": " + "; ".join(f"{review.COLUMN_NAMES[c]}: {h}"
                                                     for c, h in review.REVIEW_COLUMNS.items()),
        )
        self.order = ComboBox(label="order", choices=list(review.ORDERS), value=review.DEFAULT_ORDER,
                              tooltip=_HELP["order"])
        self.only_current = CheckBox(text="show only the current object", value=False, tooltip=_HELP["only_current"])
        self.start_button = PushButton(text="Start review", tooltip=_HELP["start"])
        self.current = _wrapped(Label(value="not reviewing"))
        self.current.tooltip = "the object shown, its place in the queue and its values"
        buttons = {}
        for name, text in (("back", "Back (B)"), ("next", "Next (N)"), ("accept", "Accept (A)"),
                           ("reject", "Reject (R)"), ("merge", "Merge with previous (M)"), ("split", "Split (S)"),
                           ("undo", "Undo last change"), ("apply", "Apply filters"), ("reset", "Reset filters")):
            buttons[name] = PushButton(text=text, tooltip=_HELP[name])
        self.buttons = buttons
        self.sliders = {
            column: FloatRangeSlider(label=review.COLUMN_NAMES[column], min=0.0, max=1.0, value=(0.0, 1.0),
                                     tooltip=f"show only objects whose {review.COLUMN_NAMES[column]} lies in this "
                                             f"range ({help}; objects without a value stay shown)")
            for column, help in review.REVIEW_COLUMNS.items()
        }
        self.filter_summary = _wrapped(Label(value=""))
        self.filter_summary.tooltip = "how many objects the filters hide"
        split_help = _wrapped(Label(value="Split decodes boxes with these image and model settings:"))
        split_help.tooltip = _HELP["split"]
        self.status.native.setWordWrap(True)
        self.status.tooltip = "what the review did last, or why it could not"
        self.cancel_button.tooltip = "stop a running split; nothing is changed"
        self.body = Container(labels=True, widgets=[
            self.labels_layer, self.rank_by, self.order, self.only_current, self.start_button, self.current,
            _row(buttons["back"], buttons["next"], buttons["accept"]),
            _row(buttons["reject"], buttons["merge"]),
            _row(buttons["split"], buttons["undo"]),
            *self.sliders.values(), self.filter_summary, _row(buttons["apply"], buttons["reset"]),
            split_help, self.cancel_button, self.status,
        ])
        self.extend([self.body])  # the dock itself scrolls; the shared image/model section is above

        self.layer: Labels | None = None
        self.queue = np.zeros(0, np.int64)
        self.position = 0
        self.accepted: set[int] = set()
        self.history: FeatureHistory | None = None
        self.split_boxes: Shapes | None = None
        self._present = np.zeros(0, np.int64)
        self._colormap = None
        self._show_selected = False
        self._bindings: list[_KeyBinding] = []
        self._setting_sliders = False
        self._changing = False
        self._seen_history: tuple = ()
        self._centred_on: int | None = None

        self.start_button.changed.connect(self.toggle)
        actions = {
            "back": self.back, "next": self.next, "accept": self.accept, "reject": self.reject, "merge": self.merge,
            "split": self.split, "undo": self.undo, "apply": self.apply_filters, "reset": self.reset_filters,
        }
        for name, action in actions.items():
            buttons[name].changed.connect(partial(self._guarded, action))
        for slider in self.sliders.values():
            slider.changed.connect(self._filters_changed)
        self.rank_by.changed.connect(self._order_changed)
        self.order.changed.connect(self._order_changed)
        self.only_current.changed.connect(self._recolour)
        self._shortcuts = []
        for key, name in REVIEW_KEYS.items():
            shortcut = QShortcut(QKeySequence(key), self.native)
            shortcut.setContext(Qt.WidgetWithChildrenShortcut)
            shortcut.activated.connect(partial(self._key, name))
            self._shortcuts.append(shortcut)
        viewer.layers.events.removed.connect(self._layer_removed)
        self._on_close.append(self.stop)
        self._on_close.append(lambda: viewer.layers.events.removed.disconnect(self._layer_removed))
        self._enable()

    def reset_choices(self, *_) -> None:
        """Refresh the layer pickers (napari calls this when layers are added or removed)."""
        super().reset_choices()
        self.body.reset_choices()

    # -- choosing and starting -----------------------------------------------------------------

    def _labels_layers(self, _widget=None) -> list:
        layers = [layer for layer in self.viewer.layers if isinstance(layer, Labels)]
        with_table = [layer for layer in layers if _has_table(layer)]
        return [(layer.name, layer) for layer in with_table + [la for la in layers if la not in with_table]]

    @property
    def is_reviewing(self) -> bool:
        return self.layer is not None

    def toggle(self) -> None:
        """Start the review of the chosen layer, or stop the one running."""
        if self.is_reviewing:
            self.stop()
        else:
            self._guarded(self.start)

    def start(self, layer: Labels | None = None) -> None:
        """Review `layer` (default: the chosen one) from its first object in the ranking."""
        layer = layer if layer is not None else self.labels_layer.value
        if layer is None:
            raise InputError("no Labels layer: run Segment everything first, then pick its labels layer")
        if layer.multiscale:
            raise InputError(f"{layer.name!r} is a multiscale layer; its objects cannot be edited here")
        if not _has_table(layer):
            raise InputError(
                f"{layer.name!r} has no object table (features with {', '.join(review.REVIEW_COLUMNS)}): "
                "run Segment everything into it first"
            )
        self.stop()
        features = layer.features
        if self.rank_by.value not in features:
            self.rank_by.value = next(c for c in review.REVIEW_COLUMNS if c in features)
        accepted = features[ACCEPTED].eq(True).to_numpy() if ACCEPTED in features else np.zeros(len(features), bool)
        self.accepted = set(review.table_ids(features)[accepted].tolist())
        self._colormap, self._show_selected = layer.colormap, layer.show_selected_label
        self.layer = layer
        self.history = FeatureHistory(layer)
        self._seen_history = _history_key(layer)
        layer.events.set_data.connect(self._history_moved)
        layer.events.paint.connect(self._history_moved)
        try:
            self._bindings = [_KeyBinding(provider, key, partial(self._key, name))
                              for provider in (self.viewer, layer) for key, name in REVIEW_KEYS.items()]
            self._count_objects()
            self._fit_sliders()
            self.viewer.layers.selection.active = layer
            self.position = 0
            self._rebuild_queue()
        except Exception:
            self.stop()  # no half-started review: keys and colours back
            raise
        self.start_button.text = "Stop review"
        self._enable()
        self._set_status(f"reviewing {layer.name!r}: {len(self.queue)} objects")

    def stop(self) -> None:
        """End the review: keys and colours go back to what they were; changes stay."""
        layer, self.layer = self.layer, None
        for binding in self._bindings:
            binding.release()
        self._bindings = []
        if layer is not None:
            layer.events.set_data.disconnect(self._history_moved)
            layer.events.paint.disconnect(self._history_moved)
            layer.colormap = self._colormap
            layer.show_selected_label = self._show_selected
        if self.split_boxes is not None and self.split_boxes in self.viewer.layers:
            self.viewer.layers.remove(self.split_boxes)
        self.split_boxes = None
        self.queue = np.zeros(0, np.int64)
        self.history = None
        self._centred_on = None
        if not self._closed:
            self.start_button.text = "Start review"
            self.current.value = "not reviewing"
            self.filter_summary.value = ""
            self._enable()

    def _layer_removed(self, event) -> None:
        if event.value is self.layer:
            self.stop()
        elif event.value is self.split_boxes:
            self.split_boxes = None

    def _enable(self) -> None:
        on = self.is_reviewing
        for name, button in self.buttons.items():
            button.enabled = on
        for widget in (self.labels_layer, ):
            widget.enabled = not on

    def _guarded(self, action: Callable[[], Any], *_) -> None:
        try:
            action()
        except MobileSAMv2Error as error:
            self._report(error)

    def _key(self, name: str) -> None:
        if self.is_reviewing and not self._closed:
            self._guarded(getattr(self, name))

    # -- the queue ---------------------------------------------------------------------------------

    def table(self) -> pd.DataFrame:
        """The rows of the layer's features for objects present in its labels."""
        features = self.layer.features
        return features[np.isin(review.table_ids(features), self._present)].reset_index(drop=True)

    def current_id(self) -> int | None:
        """Label value of the object shown, or None when the queue is empty."""
        return int(self.queue[self.position]) if len(self.queue) else None

    def _count_objects(self) -> None:
        data = np.asarray(self.layer.data)
        top = int(data.max(initial=0))
        if data.dtype.kind in "iu" and data.dtype != np.uint64 and data.min(initial=0) >= 0 and top <= 8 * data.size:
            ids = np.flatnonzero(np.bincount(data.ravel(), minlength=top + 1))  # linear time, no sort
        else:
            ids = np.unique(data)
        self._present = ids[ids > 0].astype(np.int64)

    def _ranges(self) -> dict[str, tuple[float | None, float | None]]:
        """Slider ranges; an end at the slider's limit is open."""
        ranges = {}
        for column, slider in self.sliders.items():
            if not slider.enabled:
                continue
            low, high = slider.value
            tolerance = (slider.max - slider.min) * 1e-6
            ranges[column] = (None if low <= slider.min + tolerance else low,
                              None if high >= slider.max - tolerance else high)
        return ranges

    def kept_ids(self) -> np.ndarray:
        """Objects the filters keep."""
        return review.filter_ids(self.table(), self._ranges())

    def hidden_ids(self) -> np.ndarray:
        """Objects the filters hide (they stay in the labels until "Apply filters")."""
        table = self.table()
        ids = review.table_ids(table)
        return ids[~np.isin(ids, review.filter_ids(table, self._ranges()))]

    def _rebuild_queue(self, keep: int | None = None) -> None:
        """Rank the kept objects again; stay on `keep` if it is still there, else on the same place."""
        table = self.table()
        self.queue = review.rank_objects(table, self.rank_by.value, order=self.order.value,
                                         ids=review.filter_ids(table, self._ranges()))
        if keep is not None and keep in self.queue:
            self.position = int(np.flatnonzero(self.queue == keep)[0])
        self.position = int(np.clip(self.position, 0, max(len(self.queue) - 1, 0)))
        self._show_current()

    def _order_changed(self, _value=None) -> None:
        if self.is_reviewing:
            self._guarded(partial(self._rebuild_queue, self.current_id()))

    def _fit_sliders(self) -> None:
        """Slider limits from the table's values; every slider fully open."""
        table = self.table()
        self._setting_sliders = True
        try:
            for column, slider in self.sliders.items():
                limits = review.column_range(table, column) if column in table else None
                slider.enabled = limits is not None and limits[1] > limits[0]  # nothing to filter otherwise
                low, high = limits if slider.enabled else (0.0, 1.0)
                slider.min, slider.max = min(low, slider.min), max(high, slider.max)  # valid in any order
                slider.min, slider.max = low, high
                slider.step = (high - low) / 100
                slider.value = (low, high)
        finally:
            self._setting_sliders = False

    def _filters_changed(self, _value=None) -> None:
        if self.is_reviewing and not self._setting_sliders:
            self._rebuild_queue(self.current_id())

    # -- showing ---------------------------------------------------------------------------------

    def _show_current(self) -> None:
        current = self.current_id()
        hidden = len(self.hidden_ids())
        self.filter_summary.value = f"{hidden} object(s) hidden by the filters" if hidden else "no object hidden"
        if current is None:
            self.current.value = "no objects left to review" + (f" ({hidden} hidden by the filters)" if hidden else "")
            self._recolour()
            return
        table = self.table()
        row = table[review.table_ids(table) == current].iloc[0]
        values = ", ".join(f"{review.COLUMN_NAMES[c]} {_number(row[c])}" for c in review.REVIEW_COLUMNS if c in row)
        mark = " (accepted)" if current in self.accepted else ""
        self.current.value = f"object {self.position + 1} of {len(self.queue)}: id {current}{mark}; {values}"
        self._recolour()
        if current != self._centred_on:  # not after every paint stroke or filter move
            self._centre_on(current)
            self._centred_on = current

    def _recolour(self, _value=None) -> None:
        """Current object in its colour, the others dimmed, hidden ones transparent."""
        layer = self.layer
        if layer is None:
            return
        current = self.current_id()
        colours = np.asarray(self._colormap.map(self._present), np.float64).reshape(-1, 4)
        colours[:, 3] *= np.where(self._present == current, 1.0, DIMMED)
        colours[np.isin(self._present, self.hidden_ids()), 3] = 0.0
        table = {None: UNLISTED_COLOUR, 0: (0.0, 0.0, 0.0, 0.0)}
        table.update({int(i): tuple(c) for i, c in zip(self._present, colours)})
        layer.colormap = DirectLabelColormap(color_dict=table)
        layer.show_selected_label = bool(self.only_current.value)
        if current is not None:
            layer.selected_label = current

    def _centre_on(self, object_id: int) -> None:
        """Centre the view on the object and move the sliders to a plane that shows it."""
        layer, viewer = self.layer, self.viewer
        where = np.nonzero(np.asarray(layer.data) == object_id)
        if not where[0].size:
            return
        offset = viewer.dims.ndim - layer.ndim
        displayed = [d - offset for d in viewer.dims.displayed if d >= offset]
        middle = len(where[0]) // 2  # a voxel of the object, on a plane in the middle of its planes
        point = np.array([(w.min() + w.max()) / 2 if a in displayed else w[middle] for a, w in enumerate(where)],
                         np.float64)
        world = np.asarray(layer.data_to_world(point), np.float64)
        for axis in range(layer.ndim):
            if axis not in displayed:
                viewer.dims.set_point(axis + offset, world[axis])
        _camera(viewer).center = tuple(world[a] for a in displayed)

    # -- actions ---------------------------------------------------------------------------------

    def next(self) -> None:
        """Go to the next object of the queue."""
        if self.position + 1 >= len(self.queue):
            self._set_status("this is the last object of the queue")
            return
        self.position += 1
        self._show_current()

    def back(self) -> None:
        """Go to the previous object of the queue."""
        if self.position == 0:
            self._set_status("this is the first object of the queue")
            return
        self.position -= 1
        self._show_current()

    def accept(self) -> None:
        """Mark the current object as accepted and go to the next one."""
        current = self._require_current()
        self.accepted.add(current)
        self._write_features(self.layer.features)
        self._set_status(f"object {current} accepted")
        if self.position + 1 < len(self.queue):
            self.position += 1
        self._show_current()

    def reject(self) -> None:
        """Delete the current object (one undo step); the next one takes its place."""
        current = self._require_current()
        data = np.asarray(self.layer.data)
        self._change(review.relabel_edit(data, {current: 0}), review.drop_rows(self.layer.features, [current]),
                     keep=None)
        self._set_status(f"object {current} rejected (deleted)")

    def merge(self) -> None:
        """Make the current object part of the previous one in the queue (one undo step)."""
        current = self._require_current()
        if self.position == 0:
            raise InputError("the first object of the queue has no previous object to merge with; go to the next")
        previous = int(self.queue[self.position - 1])
        data = np.asarray(self.layer.data)
        rows = review.merge_rows(self.layer.features, previous, current)
        if "n_planes" in rows:
            ids = review.table_ids(rows)
            rows["n_planes"][ids == previous] = self._planes_spanned(data, (previous, current))
        self._change(review.relabel_edit(data, {current: previous}), rows, keep=previous)
        self._set_status(f"object {current} merged into object {previous}")

    def _planes_spanned(self, data: np.ndarray, ids) -> int:
        where = np.nonzero(np.isin(data, ids))
        offset = self.viewer.dims.ndim - data.ndim
        displayed = {d - offset for d in self.viewer.dims.displayed}
        stack = [w for a, w in enumerate(where) if a not in displayed]
        return len(np.unique(np.stack(stack, axis=1), axis=0)) if stack else 1

    def apply_filters(self) -> None:
        """Delete the objects the filters hide (one undo step) and open the filters again."""
        hidden = self.hidden_ids()
        if not len(hidden):
            self._set_status("no object is hidden by the filters; nothing to apply")
            return
        data = np.asarray(self.layer.data)
        self._change(review.relabel_edit(data, {int(i): 0 for i in hidden}),
                     review.drop_rows(self.layer.features, hidden), keep=self.current_id(), refit=True)
        self._set_status(f"{len(hidden)} filtered object(s) deleted")

    def reset_filters(self) -> None:
        """Open every filter: every object is shown again."""
        self._fit_sliders()
        self._rebuild_queue(self.current_id())

    def undo(self) -> None:
        """Undo the last change of the labels layer (and of its table, if the review made it)."""
        self.layer.undo()

    def split(self) -> None:
        """First call: add a Shapes layer for boxes. Next calls: decode its boxes and split the current object."""
        current = self._require_current()
        boxes = self.split_boxes
        if boxes is None or boxes not in self.viewer.layers:
            self.split_boxes = self._add_split_boxes()
            self._set_status(f"draw a box over each part of object {current}, then press S (or Split) again")
            return
        if not boxes.nshapes:
            self._set_status(f"draw a box over each part of object {current} in {boxes.name!r} first")
            return
        layer = self.layer

        def make_job() -> api.Job:
            image = self.images.selected_image()
            settings = {**self.images.settings(), **self.model.settings()}
            view = image_view(image, self.viewer, ImageOptions(**self.images.settings()))
            check_output(view, layer)
            job = api.prepare_decode_box_layer(image, boxes, self.viewer, **settings)
            return api.Job(job.steps, job.total, partial(self._apply_split, layer, current),
                           f"split object {current}")

        self.launch(make_job)

    def _add_split_boxes(self) -> Shapes:
        layer = self.layer
        boxes = Shapes(
            ndim=layer.ndim, name=f"{layer.name} split boxes", edge_color="magenta", face_color="transparent",
            scale=layer.scale, translate=layer.translate, rotate=layer.rotate, shear=layer.shear,
            affine=layer.affine.affine_matrix,
        )
        self.viewer.add_layer(boxes)
        boxes.mode = "add_rectangle"
        self._bindings.append(_KeyBinding(boxes, "S", partial(self._key, "split")))  # instead of 'select mode'
        return boxes

    def _apply_split(self, layer: Labels, object_id: int, result: api.LabelsResult) -> Labels:
        if layer is not self.layer:
            raise InputError("the review of this layer was stopped before the split finished; nothing was changed")
        region = np.asarray(layer.data[result.key])
        first = int(np.asarray(layer.data).max(initial=0)) + 1
        split, id_map = review.split_object(region, object_id, result.labels, first)
        counts = {int(i): int(n) for i, n in zip(*np.unique(split[split > 0], return_counts=True))}
        remaining = int((np.asarray(layer.data) == object_id).sum()) - sum(counts[j] for j in id_map.values())
        rows = review.as_columns(layer.features)
        id_name = review.id_column(rows)
        ids = review.table_ids(rows)
        if remaining and "area" in rows:
            rows["area"] = rows["area"].astype(np.int64)
            rows["area"][ids == object_id] = remaining
        elif not remaining:
            rows = review.drop_rows(rows, [object_id])
        parts = np.asarray(list(id_map))
        table_rows = np.searchsorted(result.table["id"], parts)
        added = {name: np.asarray(result.table[name])[table_rows] for name in ("score", "predicted_iou", "stability")}
        added.update({"index": np.array(list(id_map.values()), np.int64),
                      "area": np.array([counts[j] for j in id_map.values()], np.int64),
                      "slice": np.asarray(result.table["slice"])[table_rows]})
        if id_name == "index" and "id" in rows:
            added["id"] = added["index"]
        elif id_name == "id":
            added["id"] = added.pop("index")
        rows = review.concat_rows(rows, added)

        def write():
            set_labels_exactly(layer, result.key, split, split != region)

        self._change(write, rows, keep=object_id if remaining else int(first))
        if self.split_boxes is not None:
            self.split_boxes.data = []
        self.viewer.layers.selection.active = layer
        self._set_status(f"object {object_id} split: new object(s) {', '.join(map(str, id_map.values()))}")
        return layer

    # -- changes ---------------------------------------------------------------------------------

    def _require_current(self) -> int:
        current = self.current_id()
        if current is None:
            raise InputError("no object to review: every object is done or hidden by the filters")
        return current

    def _change(self, edit, rows: dict[str, np.ndarray], keep: int | None, refit: bool = False) -> None:
        """Apply `edit` to the labels as one undo step and set the table to `rows`.

        `edit` is ``(index, values)`` for ``data_setitem`` or a function that writes.
        """
        layer = self.layer
        before = layer.features.copy()
        last = _last_item(layer)
        self._changing = True  # the layer's own events of this change are not an undo or redo
        try:
            with layer.block_history():
                if callable(edit):
                    edit()
                else:
                    layer.data_setitem(*edit)
        finally:
            self._changing = False
        item = _last_item(layer)
        self._seen_history = _history_key(layer)
        has_history = hasattr(layer, "_undo_history")  # without it (another napari) the table cannot follow undo
        if has_history and (item is None or item is last):
            self._set_status("nothing changed")
            return
        self._write_features(rows)
        if has_history:
            self.history.record(item, before, layer.features.copy())
        self._count_objects()
        if refit:
            self._fit_sliders()
        self._rebuild_queue(keep)

    def _write_features(self, rows) -> None:
        frame = pd.DataFrame(rows)
        ids = review.table_ids(frame)
        if self.accepted or ACCEPTED in frame:
            frame[ACCEPTED] = np.isin(ids, list(self.accepted))
        self.layer.features = frame.sort_values(review.id_column(frame), kind="stable").reset_index(drop=True)

    def _history_moved(self, _event=None) -> None:
        """After an undo, a redo or an edit: the table follows the history, the queue follows both."""
        if self.history is None or self._changing or _history_key(self.layer) == self._seen_history:
            return  # e.g. a colour change refreshes the layer: no undo or redo
        self._seen_history = _history_key(self.layer)
        current = self.current_id()
        if self.history.sync():
            self._write_features(self.layer.features)
        self._count_objects()
        self._rebuild_queue(current)


def _camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9 on)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def _has_table(layer: Labels) -> bool:
    features = layer.features
    return ("index" in features or "id" in features) and any(c in features for c in review.REVIEW_COLUMNS)


def _number(value) -> str:
    value = float(value)
    if np.isnan(value):
        return "-"
    return f"{value:.0f}" if value.is_integer() and abs(value) >= 10 else f"{value:.3g}"
