"""The "Segment everything" and "Segment anything" dock widgets.

The two docks of a viewer share one image and model section (:class:`SharedSettings`):
it shows in the first dock opened, and moves to the other one when that dock closes.
Each dock scrolls, wraps its messages and shows only the controls that apply, so it
fits a small screen.

The widgets only gather settings and layers; the work is done by the
:class:`~napari_mobilesamv2.napari.api.Job` objects of :mod:`.api`, whose model
half runs in a napari thread worker (stages, a progress bar in the dock and in the
activity dock, an estimate of the time left, a Cancel button that stops between two
steps) and whose result is written into layers back on the main thread. A cancelled
or failed run changes no layer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    RadioButtons,
)
from napari.layers import Image, Labels, Points, Shapes
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QWidget

from ..engine import Progress
from ..errors import InputError, MobileSAMv2Error
from ..options import THROUGH_STACK_HELP, EverythingOptions, ImageOptions, option_info, options_of
from . import api
from ._layers import current_plane, image_view, points_on_plane, shapes_to_boxes
from ._model_section import ModelControls
from ._options_form import OptionsForm, option_widget
from ._progress import RunClock, describe, format_duration, step_fraction
from ._qt_helpers import breakable, narrow_combo, wrapping_label

log = logging.getLogger(__name__)

POLICIES = [
    ("new ids", "new_ids"), ("fill background only", "fill_background"), ("replace touched objects", "overwrite"),
]
RUN_ANYTHING_KEY = "Shift-S"
TOGGLE_NEGATIVE_KEY = "Shift-N"
#: resolution of the progress bars
PROGRESS_STEPS = 1000
#: the status line is scrolled into view again this late, once its wrapped text is laid out
REVEAL_AGAIN_MS = 150
#: a hint about a possible channel axis is given for stack axes this short
CHANNEL_LIKE = 5

#: help of the controls that have no core setting behind them
TIPS = {
    "tracks": "for a time series: also add a Tracks layer of the objects' centroids (track id = object id; "
              "the first stack axis is time)",
    "image": "the image layer to segment (follows the active image layer)",
    "output": "where the objects go: a new Labels layer, or an existing one of the same shape and scale",
    "policy": "writing into an existing layer: 'new ids' paints new objects over it with ids after its largest; "
              "'fill background only' changes only pixels that are 0; 'replace touched objects' removes the "
              "objects the new ones touch and paints the new ones with new ids",
    "scope": "segment the displayed plane, or every plane of the stack (objects are linked through the planes)",
    "advanced": "show the detector input size, batch size, quality filters and tiling",
    "run_everything": "find every object of the displayed plane or of the whole stack",
    "cancel": "stop the run within about a second; no layer is changed",
    "boxes": "a Shapes layer whose rectangles are decoded by 'Decode boxes'",
    "show_boxes": "add the detector's boxes of the displayed plane as editable rectangles",
    "decode_boxes": "decode one mask per rectangle of the boxes layer on the displayed plane (only the decoder runs)",
    "points": "Points layer of prompts: each positive point is one object, negative points mark background",
    "shapes": "Shapes layer of prompts: each rectangle (or the bounding box of a polygon or ellipse) is one object",
    "add_prompts": "add a Points layer (green positive, red negative) and a Shapes layer for boxes, in the image's frame",
    "negative": f"the next points you click mark background ({TOGGLE_NEGATIVE_KEY} toggles)",
    "clear_prompts": "remove the prompts that were used once the objects are written",
    "run_anything": f"segment the objects marked on the displayed plane ({RUN_ANYTHING_KEY})",
    "progress": "progress of the current run",
}


def _layers_of(viewer, kind, none_label: str | None = None) -> Callable:
    """Choices callback: the viewer's layers of one type, optionally after a 'none' entry."""

    def choices(_widget=None):
        found = [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]
        return ([(none_label, None)] if none_label else []) + found

    return choices


class StepError(Exception):
    """Carries an error out of the worker thread.

    superqt's generator worker takes a RuntimeError (torch's usual error type) for a
    deleted worker: it would drop the error and never finish.
    """


def _carry_errors(steps: Callable) -> Callable:
    def guarded():
        try:
            return (yield from steps())
        except Exception as error:  # noqa: BLE001 - re-raised, reported on the main thread
            raise StepError(str(error)) from error

    return guarded


def _header(text: str) -> Label:
    """A section title."""
    return Label(value=f"<b>{text}</b>")


class ImageControls(Container):
    """Image layer picker and how its planes become RGB (normalization, channels)."""

    def __init__(self, viewer):
        super().__init__(labels=True)
        self.viewer = viewer
        self.image = narrow_combo(ComboBox(label="image", choices=_layers_of(viewer, Image), tooltip=TIPS["image"]))
        self.normalization = option_widget(option_info(ImageOptions, "normalization"))
        self.channel_axis = narrow_combo(ComboBox(
            label="channel axis", choices=self._axis_choices,
            tooltip=option_info(ImageOptions, "channel_axis").help_with_default(),
        ))
        self.channels = LineEdit(label="channels", value="",
                                 tooltip=option_info(ImageOptions, "channels").help_with_default())
        self.extend([self.image, self.normalization, self.channel_axis, self.channels])
        self.image.changed.connect(self.channel_axis.reset_choices)
        self.channel_axis.changed.connect(self._show_applicable)
        self._hinted: set[tuple] = set()
        self._follow_active_image()
        self._show_applicable()
        viewer.layers.selection.events.active.connect(self._follow_active_image)

    def release(self) -> None:
        """Stop following the viewer (the widget is being closed)."""
        self.viewer.layers.selection.events.active.disconnect(self._follow_active_image)

    def _axis_choices(self, _widget=None):
        layer = self.image.value
        choices = [("none (grey or RGB)", None)]
        if isinstance(layer, Image) and not layer.rgb:
            shape = _shape(layer)
            choices += [(f"axis {a} ({shape[a]})", a) for a in range(layer.ndim - 2)]
        return choices

    def _show_applicable(self, _value=None) -> None:
        self.channels.visible = self.channel_axis.value is not None

    def _follow_active_image(self, _event=None):
        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            self.image.reset_choices()
            self.image.value = active

    def settings(self) -> dict:
        """normalization, channel_axis and channels as keywords for :mod:`.api`."""
        text = self.channels.value.strip()
        try:
            channels = tuple(int(c) for c in text.replace(" ", ",").split(",") if c) or None
        except ValueError:
            raise InputError(f"channels must be integers separated by commas, not {text!r}") from None
        return {
            "normalization": self.normalization.value, "channel_axis": self.channel_axis.value, "channels": channels,
        }

    def selected_image(self) -> Image:
        if self.image.value is None:
            raise InputError("open an image first (or pick one in 'image')")
        return self.image.value

    def stack_axes(self) -> int:
        """Number of stack axes (z, t, ...) of the chosen image with the chosen channel axis."""
        layer = self.image.value
        if not isinstance(layer, Image):
            return 0
        return max(0, layer.ndim - 2 - (self.channel_axis.value is not None))

    def channel_hint(self) -> str | None:
        """A hint, once per layer, when a short stack axis might hold channels (no channel axis chosen)."""
        layer = self.image.value
        if not isinstance(layer, Image) or layer.rgb or self.channel_axis.value is not None:
            return None
        shape = _shape(layer)
        short = [a for a in range(layer.ndim - 2) if 2 <= shape[a] <= CHANNEL_LIKE]
        key = (id(layer), shape)
        if not short or key in self._hinted:
            return None
        self._hinted.add(key)
        axis = short[0]
        return (f"{layer.name!r} has {shape[axis]} planes along axis {axis}; they are segmented as planes of a "
                f"stack. If they are channels, choose 'axis {axis}' in 'channel axis'.")


def _shape(layer: Image) -> tuple[int, ...]:
    return tuple(layer.data[0].shape if layer.multiscale else layer.data.shape)


class SharedSettings:
    """The image and model section of one viewer, shown once however many docks use it.

    It shows in the first dock that joins; the others show a line saying where it is.
    When that dock closes, the section moves to the next open dock.
    """

    _of_viewer: dict[int, SharedSettings] = {}

    def __init__(self, viewer):
        self.viewer = viewer
        self.docks: list[JobWidget] = []
        self.holder: JobWidget | None = None
        self.images = ImageControls(viewer)
        self.model = ModelControls(launch=self._launch)
        self.section = Container(labels=False, widgets=[_header("Image"), self.images, _header("Model"), self.model])
        self.section.margins = (0, 0, 0, 0)

    @classmethod
    def of(cls, viewer) -> SharedSettings:
        """The viewer's shared section (made when its first dock opens)."""
        key = id(_unwrapped(viewer))
        shared = cls._of_viewer.get(key)
        if shared is None or _unwrapped(shared.viewer) is not _unwrapped(viewer):
            shared = cls._of_viewer[key] = cls(viewer)
        return shared

    def join(self, dock: JobWidget) -> None:
        self.docks.append(dock)
        if self.holder is None:
            self._place(dock)
        else:
            dock.shared_note.value = f"Image and model settings: in the '{self.holder.title}' dock."
            dock.shared_note.visible = True

    def leave(self, dock: JobWidget) -> None:
        if dock in self.docks:
            self.docks.remove(dock)
        if self.holder is dock:
            self.holder = None
            if not dock._destroyed:  # else the section goes with the dock's widgets (the viewer closes)
                dock.settings_slot.remove(self.section)
                if self.docks:
                    self._place(self.docks[0])
        if not self.docks:
            self.images.release()
            SharedSettings._of_viewer.pop(id(_unwrapped(self.viewer)), None)

    def _place(self, dock: JobWidget) -> None:
        self.holder = dock
        dock.shared_note.visible = False
        dock.settings_slot.append(self.section)
        self.section.visible = True
        for other in self.docks:
            if other is not dock:
                other.shared_note.value = f"Image and model settings: in the '{dock.title}' dock."

    def _launch(self, make_job: Callable[[], api.Job], then: Callable | None = None) -> None:
        if self.holder is not None:
            self.holder.launch(make_job, then)


def _unwrapped(viewer):
    """The viewer itself: napari hands each dock its own proxy of it."""
    return getattr(viewer, "__wrapped__", viewer)


class _ClosingWatch(QObject):
    """Calls `callback` once when `widget` leaves its dock or is destroyed.

    Closing a napari dock widget takes the widget out of the dock (its parent
    becomes None) without deleting it.
    """

    def __init__(self, widget: QWidget, callback: Callable[[], None]):
        super().__init__(widget)
        self._callback: Callable[[], None] | None = callback
        widget.installEventFilter(self)
        widget.destroyed.connect(self._fire)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.ParentChange and watched.parent() is None:
            self._fire(destroyed=False)
        return False

    def _fire(self, *_, destroyed: bool = True) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback(destroyed)


class _FitWidth(QObject):
    """Keeps a vertical scroll area as wide as its content needs (it never scrolls sideways),
    so nothing is clipped; the content itself stays narrow (wrapping labels, narrow combo boxes)."""

    def __init__(self, scroll):
        super().__init__(scroll)
        self._scroll = scroll
        scroll.widget().installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.LayoutRequest:
            self.fit()
        return False

    def fit(self) -> None:
        scroll = self._scroll
        width = scroll.widget().minimumSizeHint().width()
        scroll.setMinimumWidth(width + scroll.verticalScrollBar().sizeHint().width() + 2 * scroll.frameWidth())


class JobWidget(Container):
    """Base of the docks: the shared image and model section, and :class:`~.api.Job` runs in a
    thread worker, one at a time, with a progress bar, Cancel and a word-wrapped status line.

    The dock scrolls: its ``native`` widget is the scroll area.
    """

    title = "MobileSAMv2"

    def __init__(self, napari_viewer):
        super().__init__(labels=False, scrollable=True)
        self.root_native_widget.setMinimumWidth(0)
        self.viewer = napari_viewer
        self.worker = None
        self.status = wrapping_label()
        self.progress_bar = ProgressBar(min=0, max=PROGRESS_STEPS, value=0, visible=False, tooltip=TIPS["progress"])
        self.cancel_button = PushButton(text="Cancel", enabled=False, tooltip=TIPS["cancel"])
        self.cancel_button.changed.connect(self.cancel)
        self.last_error: str | None = None
        self.last_summary: str | None = None
        self._on_close: list[Callable[[], None]] = []
        self._closed = False
        self._destroyed = False
        self._channel_hint: str | None = None
        self._watch = _ClosingWatch(self.native, self._close)
        self.settings_slot = Container(labels=False)
        self.settings_slot.margins = (0, 0, 0, 0)
        self.shared_note = wrapping_label(visible=False)
        self.shared = SharedSettings.of(napari_viewer)
        self.shared.join(self)
        self._on_close.append(partial(self.shared.leave, self))
        self.extend([self.settings_slot, self.shared_note])
        self._fit = _FitWidth(self.root_native_widget)

    @property
    def native(self):
        """The dock's outermost Qt widget (the scroll area), which napari puts into the dock."""
        return self.root_native_widget

    @property
    def images(self) -> ImageControls:
        return self.shared.images

    @property
    def model(self) -> ModelControls:
        return self.shared.model

    def _connect_shared(self, callback: Callable) -> None:
        """Call `callback` when the shared image or channel axis changes (until the dock closes)."""
        for signal in (self.images.image.changed, self.images.channel_axis.changed):
            signal.connect(callback)
            self._on_close.append(partial(signal.disconnect, callback))

    def _close(self, destroyed: bool = False) -> None:
        """The dock or viewer was closed: stop a run and drop our hooks into the viewer.

        `destroyed`: the Qt widgets are being deleted (the viewer closes), so nothing may be
        moved out of them or into another dock.
        """
        self._closed = True
        self._destroyed = destroyed
        self.cancel()
        while self._on_close:
            try:
                self._on_close.pop()()
            except (RuntimeError, ValueError, TypeError):  # a hook whose other end is gone already
                pass

    @property
    def is_running(self) -> bool:
        return self.worker is not None

    def launch(self, make_job: Callable[[], api.Job], then: Callable | None = None) -> None:
        """Prepare a job here (validating the inputs), run its steps in a worker."""
        if self.is_running:
            show_info("MobileSAMv2 is still running; wait or cancel it first")
            return
        try:
            job = make_job()
        except Exception as error:  # noqa: BLE001 - shown as a notification, nothing started
            self._report(error)
            return
        self.last_error = self.last_summary = None
        worker = create_worker(_carry_errors(job.steps), _ignore_errors=True)
        bar = progress(total=PROGRESS_STEPS, desc=job.description[:60])
        clock = RunClock()
        worker.yielded.connect(partial(self._show_progress, bar, clock))
        worker.finished.connect(bar.close)
        worker.returned.connect(lambda result: self._apply(job, result, then, clock))
        worker.errored.connect(self._report)
        worker.warned.connect(_show_warning)
        worker.aborted.connect(lambda: self._set_status("cancelled; nothing was changed"))
        worker.finished.connect(self._finished)
        self.worker = worker
        self.cancel_button.enabled = True
        self.progress_bar.value = 0
        self.progress_bar.visible = True
        self._set_status(f"starting: {job.description}")
        worker.start()

    def _show_progress(self, bar, clock: RunClock, step: Progress) -> None:
        # The status first: napari's progress bar processes pending Qt events while it
        # updates, so the run's later steps and its end may be handled inside the lines
        # below; their status must not be overwritten by this older one.
        fraction = step_fraction(step)
        text = describe(step)
        left = clock.time_left(fraction)
        if left is not None:
            text += f" (about {format_duration(left)} left)"
        if self.worker is None:
            return  # a late step of a finished run
        self._set_status(text)
        position = round(fraction * PROGRESS_STEPS)
        if not self._closed:
            self.progress_bar.value = position
        bar.set_description(text[:60])
        if position > bar.n:
            bar.update(position - bar.n)

    def cancel(self) -> None:
        """Stop the running job at its next step (within about a second); no layer is changed."""
        if self.worker is not None:
            self.worker.quit()
            self._set_status("cancelling…")

    def _apply(self, job: api.Job, result, then: Callable | None, clock: RunClock) -> None:
        if self._closed:
            return  # closed while the result was on its way: write nothing
        try:
            layer = job.apply(result)
        except Exception as error:  # noqa: BLE001 - shown to the user, layers untouched
            self._report(error)
            return
        self.progress_bar.value = PROGRESS_STEPS
        self.last_summary = self._summary(job, result, clock.elapsed)
        hint, self._channel_hint = self._channel_hint, None
        if hint:
            self.last_summary += f". {hint}"
        self._set_status(self.last_summary)
        self._reveal_status()
        if _found(result) == 0:
            show_info(self.last_summary)
        if then is not None:
            then(layer)

    def _summary(self, job: api.Job, result, seconds: float) -> str:
        """``done: N objects in t s (what)``, with a hint when nothing was found."""
        took = format_duration(seconds) if seconds >= 10 else f"{seconds:.1f} s"
        found = _found(result)
        if found is None:
            return f"done: {job.description} in {took}"
        what = ("box" if isinstance(result, api.BoxesResult) else "object") + ("" if found == 1 else "s")
        what = what.replace("boxs", "boxes")
        text = f"done: {found} {what} in {took} ({job.description})"
        return f"{text}. {self.empty_hint()}" if found == 0 else text

    def empty_hint(self) -> str:
        """What to try when a run found nothing."""
        return "Nothing found: check the channels and normalization of the image."

    def _finished(self) -> None:
        self.worker = None
        if not self._closed:  # the Qt widgets may be gone
            self.cancel_button.enabled = False
            if self.last_summary is None:
                self.progress_bar.visible = False

    def _report(self, error: BaseException) -> None:
        if isinstance(error, StepError) and error.__cause__ is not None:
            error = error.__cause__
        if isinstance(error, MobileSAMv2Error):
            message = str(error)
        else:
            log.error("MobileSAMv2 failed", exc_info=error)
            message = f"MobileSAMv2 failed: {type(error).__name__}: {error}"
        self.last_error = message
        self._set_status(message)
        self._reveal_status()
        show_error(message)

    def _set_status(self, text: str) -> None:
        if not self._closed:
            self.status.value = breakable(text[:600])
            self.status.tooltip = text

    def _reveal_status(self) -> None:
        """Scroll the dock so that the status line (a summary or an error) is in view."""
        if not self._closed:
            QTimer.singleShot(0, self._scroll_to_status)
            QTimer.singleShot(REVEAL_AGAIN_MS, self._scroll_to_status)  # after the wrapped text is laid out

    def _scroll_to_status(self) -> None:
        if not self._closed:
            self.root_native_widget.ensureWidgetVisible(self.status.native)

    def _hint_channels(self) -> None:
        """Remember a hint about a possible channel axis, for the summary of the next run."""
        self._channel_hint = self.images.channel_hint()


def _found(result) -> int | None:
    """Objects (or boxes) in a job's result; None for results that are neither."""
    if isinstance(result, api.LabelsResult):
        return len(result.table["id"])
    if isinstance(result, api.BoxesResult):
        return len(result.boxes_xyxy)
    return None


class SegmentEverythingWidget(JobWidget):
    """Dock widget: segment every object of the current plane or of the whole stack."""

    title = "Segment everything"

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        viewer = napari_viewer
        everything = {info.name: info for info in options_of(EverythingOptions)}
        self.strategy = option_widget(everything["strategy"])
        self.main_options = OptionsForm(
            everything[name] for name in ("conf", "iou", "max_prompts", "points_per_side")
        )
        self.advanced = OptionsForm(
            everything[name] for name in ("imgsz", "batch_size", "exact", "min_predicted_iou", "min_stability",
                                          "min_area", "tile", "overlap")
        )
        self.show_advanced = CheckBox(text="advanced settings", value=False, tooltip=TIPS["advanced"])
        self.scope = RadioButtons(
            label="scope", choices=[("current plane", "plane"), ("whole stack", "stack")], value="plane",
            tooltip=TIPS["scope"],
        )
        self.link_iou = option_widget(everything["link_iou"])
        self.fill_gaps = option_widget(everything["fill_gaps"])
        self.output = narrow_combo(ComboBox(label="output", choices=_layers_of(viewer, Labels, "new labels layer"),
                                            tooltip=TIPS["output"]))
        self.policy = ComboBox(label="id policy", choices=POLICIES, value="new_ids", tooltip=TIPS["policy"])
        self.run_button = PushButton(text="Segment everything", tooltip=TIPS["run_everything"])
        self.boxes = narrow_combo(ComboBox(label="boxes layer", choices=_layers_of(viewer, Shapes, "none"),
                                           tooltip=TIPS["boxes"]))
        self.show_boxes_button = PushButton(text="Show boxes", tooltip=TIPS["show_boxes"])
        self.decode_boxes_button = PushButton(text="Decode boxes", tooltip=TIPS["decode_boxes"])
        self.add_tracks = CheckBox(text="add tracks", value=False, tooltip=TIPS["tracks"])
        self.where = Container(labels=True, widgets=[self.scope, self.link_iou, self.fill_gaps, self.add_tracks])
        self.labels_folder = FileEdit(label="large labels folder", mode="d", value=api.default_labels_folder(),
                                      tooltip=api.LABELS_FOLDER_HELP.format(limit=api.large_io.NAPARI_PLANE_LIMIT))
        self.destination = Container(labels=True, widgets=[self.output, self.policy, self.labels_folder])
        self.box_section = Container(labels=True, widgets=[
            _header("Editable boxes"), self.boxes,
            Container(layout="horizontal", labels=False, widgets=[self.show_boxes_button, self.decode_boxes_button]),
        ])
        self.extend([
            _header("Segment everything"), self.strategy, self.main_options, self.show_advanced, self.advanced,
            self.where, self.destination,
            Container(layout="horizontal", labels=False, widgets=[self.run_button, self.cancel_button]),
            self.progress_bar, self.status, self.box_section,
        ])
        for control in (self.strategy, self.show_advanced, self.scope, self.output):
            control.changed.connect(self._show_applicable)
        self._connect_shared(self._show_applicable)
        self._show_applicable()
        self.run_button.changed.connect(self.run)
        self.show_boxes_button.changed.connect(self.show_boxes)
        self.decode_boxes_button.changed.connect(self.decode_boxes)

    def _show_applicable(self, _value=None) -> None:
        """Show only the settings that apply to the chosen strategy, image, scope and output."""
        strategy = self.strategy.value
        self.main_options.show_for(strategy)
        self.advanced.show_for(strategy)
        self.advanced.visible = self.show_advanced.value
        self.labels_folder.visible = self.show_advanced.value  # matters for large images only
        stack = self._has_stack()
        self.scope.visible = stack
        self.link_iou.visible = self.fill_gaps.visible = stack and self.scope.value == "stack"
        self.add_tracks.visible = stack and self.scope.value == "stack"
        self.where.visible = stack
        self.policy.visible = self.output.value is not None
        self.box_section.visible = strategy == "object-aware"

    def _has_stack(self) -> bool:
        return self.images.stack_axes() > 0

    def _scope(self) -> str:
        return self.scope.value if self._has_stack() else "plane"

    def settings(self) -> dict:
        """Every setting that applies to the chosen strategy and scope, as keywords of
        :func:`~.api.segment_everything` (the advanced ones apply also while folded away)."""
        chosen = {"strategy": self.strategy.value, **self._applying(self.strategy.value)}
        if self._scope() == "stack":
            chosen["link_iou"], chosen["fill_gaps"] = self.link_iou.value, self.fill_gaps.value
        return {**self.images.settings(), **self.model.settings(), **chosen}

    def run(self) -> None:
        """Segment everything with the current settings (in a worker)."""
        self._hint_channels()
        self.launch(lambda: api.prepare_everything(
            self.images.selected_image(), self.viewer, output=self.output.value, policy=self.policy.value,
            scope=self._scope(), labels_folder=self.labels_folder.value,
            embeddings_folder=self.model.embeddings_folder.value, **self.settings(),
        ), then=self._add_tracks if self._scope() == "stack" and self.add_tracks.value else None)

    def _add_tracks(self, labels: Labels) -> None:
        api.tracks_layer(labels, self.viewer)

    def show_boxes(self) -> None:
        """Add the detector's boxes of the current plane as an editable Shapes layer."""
        self.launch(
            lambda: api.prepare_show_boxes(self.images.selected_image(), self.viewer,
                                           embeddings_folder=self.model.embeddings_folder.value, **self._box_settings()),
            then=self._pick_boxes,
        )

    def decode_boxes(self) -> None:
        """Decode the rectangles of the boxes layer, reusing the plane's cached embedding."""

        def make_job():
            if self.boxes.value is None:
                raise InputError("pick a boxes layer (use 'Show boxes' or draw rectangles in a Shapes layer)")
            return api.prepare_decode_box_layer(
                self.images.selected_image(), self.boxes.value, self.viewer, output=self.output.value,
                policy=self.policy.value, embeddings_folder=self.model.embeddings_folder.value, **self._box_settings(),
            )

        self.launch(make_job)

    def empty_hint(self) -> str:
        if self.strategy.value == "object-aware":
            conf = self.main_options.controls["conf"].value
            return (f"Nothing found: lower the detector conf (now {conf:g}), or check the channels and normalization "
                    "of the image.")
        return "Nothing found: lower the quality filters (advanced settings), or check the channels and normalization."

    def _box_settings(self) -> dict:
        """Settings of the object-aware strategy, whatever strategy is chosen (boxes come from the detector)."""
        return {**self.images.settings(), **self.model.settings(), **self._applying("object-aware")}

    def _applying(self, strategy: str) -> dict:
        """The values of the main and advanced settings that apply to `strategy`."""
        return {
            name: value for form in (self.main_options, self.advanced) for name, value in form.values().items()
            if strategy in form.infos[name].spec.strategies
        }

    def _pick_boxes(self, layer: Shapes) -> None:
        self.boxes.reset_choices()
        self.boxes.value = layer


class SegmentAnythingWidget(JobWidget):
    """Dock widget: segment the objects marked by points and boxes on the current plane."""

    title = "Segment anything"

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        viewer = napari_viewer
        self.points = narrow_combo(ComboBox(label="points", choices=_layers_of(viewer, Points, "none"),
                                            tooltip=TIPS["points"]))
        self.shapes = narrow_combo(ComboBox(label="boxes", choices=_layers_of(viewer, Shapes, "none"),
                                            tooltip=TIPS["shapes"]))
        self.add_prompts_button = PushButton(text="Add prompt layers", tooltip=TIPS["add_prompts"])
        self.negative = CheckBox(text=f"new points are negative ({TOGGLE_NEGATIVE_KEY})", value=False,
                                 tooltip=TIPS["negative"])
        self.output = narrow_combo(ComboBox(label="output", choices=_layers_of(viewer, Labels, "new labels layer"),
                                            tooltip=TIPS["output"]))
        self.policy = ComboBox(label="id policy", choices=POLICIES, value="new_ids", tooltip=TIPS["policy"])
        self.clear_prompts = CheckBox(text="clear used prompts after a run", value=True, tooltip=TIPS["clear_prompts"])
        self.through_stack = CheckBox(text="through the stack", value=False, tooltip=THROUGH_STACK_HELP)
        self.run_button = PushButton(text=f"Segment ({RUN_ANYTHING_KEY})", tooltip=TIPS["run_anything"])
        self.extend([
            _header("Segment anything"),
            Container(labels=True, widgets=[self.points, self.shapes]),
            self.add_prompts_button, self.negative,
            Container(labels=True, widgets=[self.output, self.policy]),
            self.clear_prompts, self.through_stack,
            Container(layout="horizontal", labels=False, widgets=[self.run_button, self.cancel_button]),
            self.progress_bar, self.status,
        ])
        self.add_prompts_button.changed.connect(self.add_prompt_layers)
        self.negative.changed.connect(self._apply_point_sign)
        self.points.changed.connect(self._apply_point_sign)
        self.output.changed.connect(self._show_applicable)
        self._connect_shared(self._show_applicable)
        self.run_button.changed.connect(self.run)
        bindings = {RUN_ANYTHING_KEY: _KeyAction(self.run), TOGGLE_NEGATIVE_KEY: _KeyAction(self._toggle_negative)}
        for key, action in bindings.items():
            action.replaced = viewer.bind_key(key, action, overwrite=True)
        self._on_close.append(partial(_unbind_keys, viewer, bindings))
        self._used = (np.zeros(0, int), np.zeros(0, int))
        self._active_at_start = None
        self._show_applicable()

    def _show_applicable(self, _value=None) -> None:
        self.policy.visible = self.output.value is not None
        stack = self.images.stack_axes() > 0
        self.through_stack.visible = stack
        if not stack:
            self.through_stack.value = False

    def settings(self) -> dict:
        return {**self.images.settings(), **self.model.settings()}

    def _view(self):
        return image_view(self.images.selected_image(), self.viewer, ImageOptions(**self.images.settings()))

    def run(self) -> None:
        """Segment the prompted objects of the current plane (in a worker)."""

        def make_job():
            image = self.images.selected_image()
            self._used = self._prompts_on_plane()
            return api.prepare_anything(
                image, self.viewer, points=self.points.value, shapes=self.shapes.value, output=self.output.value,
                policy=self.policy.value, through_stack=self.through_stack.value,
                embeddings_folder=self.model.embeddings_folder.value, **self.settings(),
            )

        self._hint_channels()
        self._active_at_start = self.viewer.layers.selection.active
        self.launch(make_job, then=self._after_run)

    def empty_hint(self) -> str:
        return ("Nothing found: the prompts gave empty masks; put points inside the object or draw a box around it, "
                "and check the channels and normalization of the image.")

    def add_prompt_layers(self) -> None:
        """Add a Points layer (green positive / red negative) and a Shapes layer for boxes."""
        try:
            view = self._view()
        except MobileSAMv2Error as error:
            self._report(error)
            return
        transform = view.labels_transform()
        name = view.layer.name
        shapes = self.viewer.add_shapes(
            ndim=view.ndim, name=f"{name} prompt boxes", edge_color="cyan", face_color="transparent", **transform
        )
        points = self.viewer.add_points(
            ndim=view.ndim, name=f"{name} prompts", features={"positive": np.zeros(0, bool)},
            feature_defaults={"positive": True}, face_color="positive",
            face_color_cycle={True: "lime", False: "red"}, border_color="white",
            size=max(4.0, min(view.data.shape[a] for a in view.plane_axes) / 40), **transform,
        )
        self.points.reset_choices()
        self.shapes.reset_choices()
        self.points.value, self.shapes.value = points, shapes
        shapes.mode = "add_rectangle"
        points.mode = "add"
        self.viewer.layers.selection.active = points
        self._apply_point_sign()

    def _toggle_negative(self) -> None:
        self.negative.value = not self.negative.value

    def _apply_point_sign(self, _value=None) -> None:
        points = self.points.value
        if isinstance(points, Points) and "positive" in points.features:
            points.feature_defaults = {"positive": not self.negative.value}

    def _prompts_on_plane(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the points and shapes a run on the current plane uses."""
        view = self._view()
        plane = current_plane(view, self.viewer)
        points, shapes = self.points.value, self.shapes.value
        used_points = points_on_plane(points, view, plane).index if points is not None else np.zeros(0, int)
        used_shapes = shapes_to_boxes(shapes, view, plane)[1] if shapes is not None else np.zeros(0, int)
        return used_points, used_shapes

    def _after_run(self, labels: Labels) -> None:
        active = self._active_at_start
        self.output.reset_choices()
        self.output.value = labels  # later objects go into the same layer
        if self.clear_prompts.value:
            used_points, used_shapes = self._used
            _remove(self.points.value, used_points)
            _remove(self.shapes.value, used_shapes)
        self.negative.value = False  # the next click adds an object again
        points = self.points.value
        prompt_layers = [layer for layer in (points, self.shapes.value) if layer is not None]
        if active in prompt_layers and active in self.viewer.layers:
            # keep clicking: the prompt layer stays the active one, not the new labels layer
            self.viewer.layers.selection.active = active

def _show_warning(showwarning_args: tuple) -> None:
    """A warning from the worker thread (e.g. about trusting a weights file), as a notification."""
    show_warning(str(showwarning_args[0]))


class _KeyAction:
    """A widget's key binding; remembers the binding it replaced, to give it back on closing."""

    def __init__(self, call: Callable[[], None]):
        self.call = call
        self.replaced: Callable | None = None
        self.closed = False

    def __call__(self, _viewer) -> None:
        if not self.closed:
            self.call()


def _unbind_keys(viewer, bindings: dict[str, _KeyAction], *_) -> None:
    """Remove our key bindings when the widget goes and give back the ones they replaced.

    A binding made on top of ours (e.g. by a second dock) stays; one of a closed dock
    is skipped in favour of the binding that dock replaced.
    """
    for key, action in bindings.items():
        action.closed = True
        current = viewer.bind_key(key, None)
        if current is not action:
            if current is not None:
                viewer.bind_key(key, current)
            continue
        previous = action.replaced
        while isinstance(previous, _KeyAction) and previous.closed:
            previous = previous.replaced
        if previous is not None:
            viewer.bind_key(key, previous)


def _remove(layer, indices: np.ndarray) -> None:
    if layer is not None and len(indices):
        mode = layer.mode
        layer.selected_data = {int(i) for i in indices}
        layer.remove_selected()
        layer.mode = mode

