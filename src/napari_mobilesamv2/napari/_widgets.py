"""The "Segment everything" and "Segment anything" dock widgets.

The widgets only gather settings and layers; the work is done by the
:class:`~napari_mobilesamv2.napari.api.Job` objects of :mod:`.api`, whose model
half runs in a napari thread worker (progress in the activity dock, Cancel
button) and whose result is written into layers back on the main thread. A
cancelled or failed run changes no layer.
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
    Label,
    LineEdit,
    PushButton,
    RadioButtons,
)
from napari.layers import Image, Labels, Points, Shapes
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QWidget

from ..engine import Progress
from ..errors import InputError, MobileSAMv2Error
from ..options import (
    DEVICES, THROUGH_STACK_HELP, EverythingOptions, ImageOptions, ModelOptions, option_info, options_of,
)
from . import api
from ._layers import current_plane, image_view, points_on_plane, shapes_to_boxes
from ._options_form import OptionsForm, option_widget

log = logging.getLogger(__name__)

POLICIES = [("new ids", "new_ids"), ("fill background only", "fill_background"), ("overwrite", "overwrite")]
RUN_ANYTHING_KEY = "Shift-S"
TOGGLE_NEGATIVE_KEY = "Shift-N"


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


class ImageControls(Container):
    """Image layer picker and how its planes become RGB (normalization, channels)."""

    def __init__(self, viewer):
        super().__init__(labels=True)
        self.viewer = viewer
        self.image = ComboBox(label="image", choices=_layers_of(viewer, Image))
        self.normalization = option_widget(option_info(ImageOptions, "normalization"))
        self.channel_axis = ComboBox(label="channel axis", choices=self._axis_choices,
                                     tooltip=option_info(ImageOptions, "channel_axis").help_with_default())
        self.channels = LineEdit(label="channels", value="",
                                 tooltip=option_info(ImageOptions, "channels").help_with_default())
        self.extend([self.image, self.normalization, self.channel_axis, self.channels])
        self.image.changed.connect(self.channel_axis.reset_choices)
        self._follow_active_image()
        viewer.layers.selection.events.active.connect(self._follow_active_image)

    def release(self) -> None:
        """Stop following the viewer (the widget is being closed)."""
        self.viewer.layers.selection.events.active.disconnect(self._follow_active_image)

    def _axis_choices(self, _widget=None):
        layer = self.image.value
        choices = [("none (grey or RGB)", None)]
        if isinstance(layer, Image) and not layer.rgb:
            shape = layer.data[0].shape if layer.multiscale else layer.data.shape
            choices += [(f"axis {a} ({shape[a]})", a) for a in range(layer.ndim - 2)]
        return choices

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


class ModelControls(Container):
    """Encoder, device and whether to trust an unknown detector file (from :class:`ModelOptions`)."""

    def __init__(self):
        super().__init__(labels=True)
        infos = {info.name: info for info in options_of(ModelOptions)}
        self.encoder = option_widget(infos["encoder"])
        device = infos["device"]
        self.device = ComboBox(label="device", choices=DEVICES, value=device.default, tooltip=device.help_with_default())
        self.trust_weights = option_widget(infos["trust_weights"])
        self.extend([self.encoder, self.device, self.trust_weights])

    def settings(self) -> dict:
        return {"encoder": self.encoder.value, "device": self.device.value, "trust_weights": self.trust_weights.value}


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
            self._fire()
        return False

    def _fire(self, *_) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


class JobWidget(Container):
    """Base: image and model controls, and :class:`~.api.Job` runs in a thread worker, one at a time."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.worker = None
        self.status = Label(value="")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.cancel_button.changed.connect(self.cancel)
        self.last_error: str | None = None
        self._on_close: list[Callable[[], None]] = []
        self._closed = False
        self._watch = _ClosingWatch(self.native, self._close)
        self.images = ImageControls(napari_viewer)
        self._on_close.append(self.images.release)
        self.model = ModelControls()

    def _close(self) -> None:
        """The dock or viewer was closed: stop a run and drop our hooks into the viewer."""
        self._closed = True
        self.cancel()
        while self._on_close:
            self._on_close.pop()()

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
        self.last_error = None
        worker = create_worker(_carry_errors(job.steps), _ignore_errors=True)
        bar = progress(total=job.total, desc=job.description)
        worker.yielded.connect(partial(self._show_progress, bar))
        worker.finished.connect(bar.close)
        worker.returned.connect(lambda result: self._apply(job, result, then))
        worker.errored.connect(self._report)
        worker.warned.connect(_show_warning)
        worker.aborted.connect(lambda: self._set_status("cancelled; nothing was changed"))
        worker.finished.connect(self._finished)
        self.worker = worker
        self.cancel_button.enabled = True
        self._set_status(f"running: {job.description}")
        worker.start()

    def _show_progress(self, bar, step: Progress) -> None:
        # The status first: napari's progress bar processes pending Qt events while it
        # updates, so the run's later steps and its end may be handled inside the lines
        # below; their status must not be overwritten by this older one.
        self._set_status(f"running: {step.detail or step.stage}")
        bar.total = step.total
        bar.n = step.done
        bar.set_description(step.detail[:80] or step.stage)

    def cancel(self) -> None:
        """Stop the running job at its next step; no layer is changed."""
        if self.worker is not None:
            self.worker.quit()

    def _apply(self, job: api.Job, result, then: Callable | None) -> None:
        if self._closed:
            return  # closed while the result was on its way: write nothing
        try:
            layer = job.apply(result)
        except Exception as error:  # noqa: BLE001 - shown to the user, layers untouched
            self._report(error)
            return
        self._set_status(f"done: {job.description}")
        if then is not None:
            then(layer)

    def _finished(self) -> None:
        self.worker = None
        if not self._closed:  # the Qt widgets may be gone
            self.cancel_button.enabled = False

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
        show_error(message)

    def _set_status(self, text: str) -> None:
        if not self._closed:
            self.status.value = text[:200]


class SegmentEverythingWidget(JobWidget):
    """Dock widget: segment every object of the current plane or of the whole stack."""

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
        self.show_advanced = CheckBox(text="advanced settings", value=False)
        self.scope = RadioButtons(
            label="scope", choices=[("current plane", "plane"), ("whole stack", "stack")], value="plane"
        )
        self.link_iou = option_widget(everything["link_iou"])
        self.fill_gaps = option_widget(everything["fill_gaps"])
        self.output = ComboBox(label="output", choices=_layers_of(viewer, Labels, "new labels layer"))
        self.policy = ComboBox(label="id policy", choices=POLICIES, value="new_ids")
        self.run_button = PushButton(text="Segment everything")
        self.boxes = ComboBox(label="boxes layer", choices=_layers_of(viewer, Shapes, "none"))
        self.show_boxes_button = PushButton(text="Show boxes")
        self.decode_boxes_button = PushButton(text="Decode boxes")
        self.extend([
            self.images, self.model, self.strategy, self.main_options, self.show_advanced, self.advanced,
            self.scope, self.link_iou, self.fill_gaps, self.output, self.policy, self.run_button, self.cancel_button,
            self.boxes, self.show_boxes_button, self.decode_boxes_button, self.status,
        ])
        self.strategy.changed.connect(self._show_applicable)
        self.show_advanced.changed.connect(self._show_applicable)
        self.scope.changed.connect(self._show_applicable)
        self._show_applicable()
        self.run_button.changed.connect(self.run)
        self.show_boxes_button.changed.connect(self.show_boxes)
        self.decode_boxes_button.changed.connect(self.decode_boxes)

    def _show_applicable(self, _value=None) -> None:
        """Show only the settings that apply to the chosen strategy and scope."""
        strategy = self.strategy.value
        self.main_options.show_for(strategy)
        self.advanced.show_for(strategy)
        self.advanced.visible = self.show_advanced.value
        self.link_iou.visible = self.fill_gaps.visible = self.scope.value == "stack"

    def settings(self) -> dict:
        """Every setting that applies to the chosen strategy and scope, as keywords of
        :func:`~.api.segment_everything` (the advanced ones apply also while folded away)."""
        chosen = {"strategy": self.strategy.value, **self._applying(self.strategy.value)}
        if self.scope.value == "stack":
            chosen["link_iou"], chosen["fill_gaps"] = self.link_iou.value, self.fill_gaps.value
        return {**self.images.settings(), **self.model.settings(), **chosen}

    def run(self) -> None:
        """Segment everything with the current settings (in a worker)."""
        self.launch(lambda: api.prepare_everything(
            self.images.selected_image(), self.viewer, output=self.output.value, policy=self.policy.value,
            scope=self.scope.value, **self.settings(),
        ))

    def show_boxes(self) -> None:
        """Add the detector's boxes of the current plane as an editable Shapes layer."""
        self.launch(
            lambda: api.prepare_show_boxes(self.images.selected_image(), self.viewer, **self._box_settings()),
            then=self._pick_boxes,
        )

    def decode_boxes(self) -> None:
        """Decode the rectangles of the boxes layer, reusing the plane's cached embedding."""

        def make_job():
            if self.boxes.value is None:
                raise InputError("pick a boxes layer (use 'Show boxes' or draw rectangles in a Shapes layer)")
            return api.prepare_decode_box_layer(
                self.images.selected_image(), self.boxes.value, self.viewer, output=self.output.value,
                policy=self.policy.value, **self._box_settings(),
            )

        self.launch(make_job)

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

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        viewer = napari_viewer
        self.points = ComboBox(label="points", choices=_layers_of(viewer, Points, "none"))
        self.shapes = ComboBox(label="boxes", choices=_layers_of(viewer, Shapes, "none"))
        self.add_prompts_button = PushButton(text="Add prompt layers")
        self.negative = CheckBox(text=f"new points are negative ({TOGGLE_NEGATIVE_KEY})", value=False)
        self.output = ComboBox(label="output", choices=_layers_of(viewer, Labels, "new labels layer"))
        self.policy = ComboBox(label="id policy", choices=POLICIES, value="new_ids")
        self.clear_prompts = CheckBox(text="clear used prompts after a run", value=True)
        self.through_stack = CheckBox(text="through the stack", value=False, tooltip=THROUGH_STACK_HELP)
        self.run_button = PushButton(text=f"Segment ({RUN_ANYTHING_KEY})")
        self.extend([
            self.images, self.model, self.points, self.shapes, self.add_prompts_button, self.negative, self.output,
            self.policy, self.clear_prompts, self.through_stack, self.run_button, self.cancel_button, self.status,
        ])
        self.add_prompts_button.changed.connect(self.add_prompt_layers)
        self.negative.changed.connect(self._apply_point_sign)
        self.points.changed.connect(self._apply_point_sign)
        self.run_button.changed.connect(self.run)
        bindings = {RUN_ANYTHING_KEY: _KeyAction(self.run), TOGGLE_NEGATIVE_KEY: _KeyAction(self._toggle_negative)}
        for key, action in bindings.items():
            action.replaced = viewer.bind_key(key, action, overwrite=True)
        self._on_close.append(partial(_unbind_keys, viewer, bindings))
        self._used = (np.zeros(0, int), np.zeros(0, int))

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
                policy=self.policy.value, through_stack=self.through_stack.value, **self.settings(),
            )

        self.launch(make_job, then=self._after_run)

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
        self.output.reset_choices()
        self.output.value = labels  # later objects go into the same layer
        if self.clear_prompts.value:
            used_points, used_shapes = self._used
            _remove(self.points.value, used_points)
            _remove(self.shapes.value, used_shapes)


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

