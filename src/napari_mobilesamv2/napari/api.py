"""Everything the widgets do, callable from Python on a napari viewer and its layers.

Each action is a :class:`Job` in two halves: ``steps`` (reads planes and runs the
models; safe in a worker thread, touches no layer) and ``apply`` (writes the result
into layers; main thread). The widgets run ``steps`` in a napari thread worker; the
functions below (:func:`segment_everything`, :func:`segment_anything`,
:func:`show_boxes`, :func:`decode_box_layer`) run both halves at once, for scripts.

Settings are plain keywords: the fields of :class:`~napari_mobilesamv2.options.ModelOptions`,
:class:`~napari_mobilesamv2.options.EverythingOptions` and
:class:`~napari_mobilesamv2.options.ImageOptions`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Points, Shapes, Tracks

from .. import engine
from ..decode.labels import ID_POLICIES
from ..errors import InputError
from ..options import EverythingOptions, ImageOptions, ModelOptions, PropagationOptions
from ..protocols import SegmentationPipeline
from ..results import Segmentation
from ..stack import linked_table
from ._layers import (
    ImageView,
    Plane,
    PointPrompts,
    add_features,
    boxes_to_rectangles,
    check_output,
    current_plane,
    image_view,
    new_labels_data,
    object_features,
    points_on_plane,
    shapes_to_boxes,
    write_into_layer,
)
from ._models import EMBEDDINGS, get_pipeline

SCOPES = ("plane", "stack")


def pipeline_for(model: ModelOptions) -> SegmentationPipeline:
    """The (cached) pipeline of these model settings."""
    return get_pipeline(model.encoder, model.device, model.trust_weights)


@dataclass
class LabelsResult:
    """Labels to write at `key` of the output, with one table row per object."""

    labels: np.ndarray
    key: tuple
    table: dict[str, np.ndarray]


@dataclass
class BoxesResult:
    """Detector boxes of one plane (pixel-edge x0, y0, x1, y1) and their scores."""

    boxes_xyxy: np.ndarray
    score: np.ndarray
    plane: Plane


@dataclass
class Job:
    """A prepared action: ``steps`` yields a :class:`~napari_mobilesamv2.engine.Progress` after
    every step and returns a result that ``apply`` writes into the viewer; `total` is the
    number of planes."""

    steps: Callable[[], Generator[engine.Progress, None, Any]]
    total: int
    apply: Callable[[Any], Any]
    description: str

    def run(self) -> Any:
        """Run both halves here and now (scripts)."""
        steps = self.steps()
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return self.apply(done.value)


def split_settings(settings: dict[str, Any]) -> tuple[ModelOptions, EverythingOptions, ImageOptions]:
    """Sort keyword settings into the three options objects of :mod:`napari_mobilesamv2.options`."""
    groups = (ModelOptions, EverythingOptions, ImageOptions)
    values: list[dict[str, Any]] = [{} for _ in groups]
    for name, value in settings.items():
        for group, bucket in zip(groups, values):
            if name in {f.name for f in fields(group)}:
                bucket[name] = value
                break
        else:
            known = sorted(f.name for g in groups for f in fields(g))
            raise InputError(f"unknown setting {name!r}; known settings: {', '.join(known)}")
    return tuple(group(**kw) for group, kw in zip(groups, values))  # type: ignore[return-value]


# -- segment everything ------------------------------------------------------------------------


def prepare_everything(
    image: Image,
    viewer=None,
    *,
    output: Labels | None = None,
    policy: str = "new_ids",
    scope: str = "plane",
    plane: Plane | None = None,
    pipeline: SegmentationPipeline | None = None,
    boxes_xyxy: np.ndarray | None = None,
    box_scores: np.ndarray | None = None,
    name: str | None = None,
    **settings,
) -> Job:
    """A :class:`Job` that segments everything in the current plane or the whole stack.

    See :func:`segment_everything` for the parameters.
    """
    model, options, image_options = split_settings(settings)
    _check_choice("id policy", policy, ID_POLICIES)
    _check_choice("scope", scope, SCOPES)
    view = image_view(image, viewer, image_options)
    check_output(view, output)
    planes = view.planes() if scope == "stack" else [_plane(view, viewer, plane)]

    def steps():
        pipe = yield from _load(pipeline, model)
        embedding_of = partial(_plane_embedding, pipe, view)
        if scope == "plane":
            found, = yield from engine.segment_planes(
                pipe, planes, view.read, options, view.conversion(), embedding_of=embedding_of, boxes_xyxy=boxes_xyxy,
            )
            return _plane_result(view, planes[0], found, box_scores)
        stacked = yield from engine.segment_stack_steps(
            pipe, view.stack_shape, view.read, options, view.conversion(), embedding_of=embedding_of,
        )
        return _stack_result(view, stacked)

    def apply(result: LabelsResult) -> Labels:
        return apply_labels(result, view, viewer, output, policy, name or f"{image.name} objects")

    where = "the whole stack" if scope == "stack" else "the current plane"
    total = len(planes)
    return Job(steps, total, apply, f"segment everything in {where} of {image.name}")


def segment_everything(
    image: Image,
    viewer=None,
    *,
    output: Labels | None = None,
    policy: str = "new_ids",
    scope: str = "plane",
    plane: Plane | None = None,
    pipeline: SegmentationPipeline | None = None,
    name: str | None = None,
    **settings,
) -> Labels:
    """Segment every object of an image layer into a labels layer.

    Parameters
    ----------
    image : napari.layers.Image
        Grey, RGB(A) or multi-channel (give `channel_axis`), any dtype, 2D to nD.
    viewer : napari.Viewer, optional
        Gives the displayed plane and receives a new labels layer. Without it the
        plane is made of the last two axes and `plane` (or plane 0) is used.
    output : napari.layers.Labels, optional
        Write into this layer (one undo step) instead of a new one.
    policy : str
        ``new_ids`` (after the layer's largest id), ``fill_background`` (only
        where the layer is 0) or ``overwrite``.
    scope : str
        ``plane`` (the current plane) or ``stack`` (every plane, then objects
        linked through z/t by mask IoU, see `link_iou`).
    plane : tuple of int, optional
        Index along each stack axis; default: the viewer's current position.
    pipeline : SegmentationPipeline, optional
        Use this pipeline (a :class:`~napari_mobilesamv2.MobileSAMv2` or a stand-in)
        instead of building one from `encoder` and `device`.
    name : str, optional
        Name of a new labels layer (default ``"<image> objects"``).
    **settings
        Any field of :class:`~napari_mobilesamv2.options.ModelOptions` (``encoder``,
        ``device``, ``trust_weights``), :class:`~napari_mobilesamv2.options.EverythingOptions`
        (``strategy``, ``conf``, ``iou``, ``imgsz``, ``max_prompts``, ``batch_size``,
        ``exact``, ``min_*`` filters, ``points_per_side``, ``link_iou``) and
        :class:`~napari_mobilesamv2.options.ImageOptions` (``normalization``,
        ``channel_axis``, ``channels``).

    Returns
    -------
    napari.layers.Labels
        The labels layer written to. Its ``features`` hold one row per new object:
        ``index``/``id``, ``score``, ``predicted_iou``, ``stability``, ``area``, ``slice``.
    """
    return prepare_everything(
        image, viewer, output=output, policy=policy, scope=scope, plane=plane, pipeline=pipeline, name=name,
        **settings,
    ).run()


def _load(pipeline: SegmentationPipeline | None, model: ModelOptions) -> engine.Steps[SegmentationPipeline]:
    """The pipeline to use, loading it (a step of its own: it may download weights)."""
    pipe = pipeline or pipeline_for(model)
    yield engine.Progress("models", 0, 1, f"models ready ({getattr(pipe, 'encoder_name', 'custom')})")
    return pipe


def _plane_embedding(pipeline: SegmentationPipeline, view: ImageView, plane: Plane, pixels: np.ndarray):
    return cached_embedding(pipeline, view, plane, pixels)


def cached_embedding(pipeline: SegmentationPipeline, view: ImageView, plane: Plane, image: np.ndarray | None = None):
    """The image embedding of `plane`, computed once per layer, plane and conversion."""
    key = (id(pipeline), *view.cache_key(plane))

    def compute():
        pixels = view.read(plane) if image is None else image
        return pipeline.embed(pipeline.prepare_image(pixels, **view.conversion()))

    return EMBEDDINGS.get_or_compute(key, compute)


def _plane_result(view: ImageView, plane: Plane, found: Segmentation, scores=None) -> LabelsResult:
    table = found.table()
    table["area"] = table["visible_area"]
    if scores is not None and len(scores) == len(found):
        table["score"] = np.asarray(scores, np.float32)
    table["slice"] = np.full(len(found), view.describe(plane), dtype=object)
    return LabelsResult(found.labels, view.labels_key(plane), table)


def _stack_result(view: ImageView, stacked: engine.StackResult) -> LabelsResult:
    link, found, planes = stacked.link, stacked.planes, stacked.keys
    table = linked_table(link, [s.table() for s in found])
    first = [view.describe(planes[i]) for i in table["first_plane"]]
    last = [view.describe(planes[i]) for i in table["last_plane"]]
    table["slice"] = np.array([a if a == b else f"{a} to {b}" for a, b in zip(first, last)], dtype=object)
    labels = new_labels_data(view)
    flat = link.labels.reshape(-1, *found[0].labels.shape)
    for i, p in enumerate(planes):
        labels[view.labels_key(p)] = flat[i]
    return LabelsResult(labels, (slice(None),) * labels.ndim, table)


def apply_labels(
    result: LabelsResult, view: ImageView, viewer, output: Labels | None, policy: str, name: str
) -> Labels:
    """Write a result into `output` (one undo step) or into a new labels layer."""
    if output is None:
        data = new_labels_data(view)
        data[result.key] = result.labels
        id_map = {int(i): int(i) for i in result.table["id"]}
        layer = Labels(data, name=name, **view.labels_transform())
        if viewer is not None:
            _add_above(viewer, layer, view.layer)
    else:
        check_output(view, output)
        id_map = write_into_layer(output, result.labels, result.key, policy)
        layer = output
    written = np.asarray(layer.data[result.key])
    add_features(layer, object_features(result.table, id_map, written))
    return layer


# -- segment anything ------------------------------------------------------------------------


def prepare_anything(
    image: Image,
    viewer=None,
    *,
    points: Points | None = None,
    shapes: Shapes | None = None,
    output: Labels | None = None,
    policy: str = "new_ids",
    plane: Plane | None = None,
    pipeline: SegmentationPipeline | None = None,
    name: str | None = None,
    through_stack: bool = False,
    axis: int | None = None,
    embeddings=None,
    **settings,
) -> Job:
    """A :class:`Job` that segments the prompted objects; see :func:`segment_anything`."""
    propagation, settings = _propagation_settings(settings)
    model, _, image_options = split_settings(settings)
    _check_choice("id policy", policy, ID_POLICIES)
    view = image_view(image, viewer, image_options)
    check_output(view, output)
    plane = _plane(view, viewer, plane)
    no_points = PointPrompts(np.zeros((0, 2)), np.zeros(0, np.int64))
    prompts = points_on_plane(points, view, plane) if points is not None else no_points
    boxes = shapes_to_boxes(shapes, view, plane)[0] if shapes is not None else np.zeros((0, 4), np.float32)
    if not (prompts.labels == 1).any() and not len(boxes):
        raise InputError(
            "no prompts on this plane: add a positive point or a box (a rectangle; polygons and ellipses "
            "count by their bounding box, lines and paths are ignored; points with positive=False mark "
            "background and need a positive point or a box too)"
        )

    if through_stack:
        return _through_stack_job(view, viewer, plane, prompts, boxes, propagation, axis, model, pipeline, output,
                                  policy, name or f"{image.name} objects", embeddings)

    def steps():
        pipe = yield from _load(pipeline, model)
        found = pipe.segment_anything(
            view.read(plane), points=prompts.points, point_labels=prompts.labels, point_groups=prompts.groups,
            boxes=boxes, embedding=cached_embedding(pipe, view, plane), **view.conversion(),
        )
        yield engine.Progress("plane", 1, 1, f"{len(found)} objects")
        return _plane_result(view, plane, found)

    def apply(result: LabelsResult) -> Labels:
        return apply_labels(result, view, viewer, output, policy, name or f"{image.name} objects")

    return Job(steps, 1, apply, f"segment anything in {image.name}")


def _propagation_settings(settings: dict[str, Any]) -> tuple[PropagationOptions, dict[str, Any]]:
    """The :class:`PropagationOptions` among keyword settings, and the other settings."""
    names = {f.name for f in fields(PropagationOptions)}
    chosen = {k: v for k, v in settings.items() if k in names}
    return PropagationOptions(**chosen), {k: v for k, v in settings.items() if k not in names}


def _through_stack_job(view: ImageView, viewer, plane: Plane, prompts: PointPrompts, boxes: np.ndarray,
                       options: PropagationOptions, axis: int | None, model: ModelOptions,
                       pipeline: SegmentationPipeline | None, output: Labels | None, policy: str, name: str,
                       embeddings=None) -> Job:
    """Segment anything on `plane` and follow the objects along a stack axis of the layer."""
    from ..embedding_cache import EmbeddingCache
    from ..prompts.user import objects_from_prompts
    from ..propagate import propagate_steps

    if not view.stack_axes:
        raise InputError(f"{view.layer.name!r} has no stack axis to follow objects through (it is one plane)")
    axis = view.stack_axes[-1] if axis is None else int(axis)
    if axis not in view.stack_axes:
        raise InputError(f"axis {axis} of {view.layer.name!r} is not a stack axis; choose one of "
                         f"{', '.join(map(str, view.stack_axes))}")
    objects = objects_from_prompts(prompts.points, prompts.labels, prompts.groups, boxes)
    n_along = view.data.shape[axis]
    if embeddings is not None and not isinstance(embeddings, EmbeddingCache):
        embeddings = EmbeddingCache(embeddings)

    def steps():
        pipe = yield from _load(pipeline, model)
        embedding_of = partial(_plane_embedding, pipe, view) if embeddings is None else None
        found = yield from propagate_steps(
            pipe, view.stack_shape, view.read, [(plane, obj) for obj in objects], options, view.conversion(),
            axis=view.stack_axes.index(axis), embedding_of=embedding_of, embeddings=embeddings,
        )
        return _propagation_result(view, found)

    def apply(result: LabelsResult) -> Labels:
        return apply_labels(result, view, viewer, output, policy, name)

    return Job(steps, n_along, apply, f"segment anything through axis {axis} of {view.layer.name}")


def _propagation_result(view: ImageView, found) -> LabelsResult:
    """The followed objects as labels of the whole layer and one table row per object."""
    planes = view.planes()
    labels = new_labels_data(view)
    flat = found.labels.reshape(-1, *found.labels.shape[-2:])
    for index in np.unique(found.planes["plane"]):
        labels[view.labels_key(planes[index])] = flat[index]
    table = {name: found.table[name] for name in ("id", "predicted_iou", "n_planes")}
    first = [view.describe(planes[i]) for i in found.table["start_plane"]]
    table["slice"] = np.array([f"{where} ({a} to {b} along the axis)" for where, a, b in
                               zip(first, found.table["first"], found.table["last"])], dtype=object)
    return LabelsResult(labels, (slice(None),) * labels.ndim, table)


def segment_anything(
    image: Image,
    viewer=None,
    *,
    points: Points | None = None,
    shapes: Shapes | None = None,
    output: Labels | None = None,
    policy: str = "new_ids",
    plane: Plane | None = None,
    pipeline: SegmentationPipeline | None = None,
    name: str | None = None,
    through_stack: bool = False,
    axis: int | None = None,
    embeddings=None,
    **settings,
) -> Labels:
    """Segment the objects marked by points and shapes on the current plane.

    Prompt conventions
    ------------------
    * Each positive point is one object; negative points (``positive`` feature
      False) are background for every point object. Points with the same
      ``object`` feature value form one object together.
    * Each shape (rectangle, or the bounding box of a polygon/ellipse) is one object.
    * Only prompts on the current plane are used.

    Through the stack
    -----------------
    With ``through_stack=True`` each object is segmented on the current plane, then its
    mask prompts the next plane along `axis` (a stack axis of the image layer; default
    the last one, z of a (T, Z, Y, X) image), in both directions, until the decoder's
    predicted IoU or the overlap with the previous plane's mask falls below
    ``stop_iou`` / ``stop_overlap``, or the stack ends; ``next_prompt`` chooses what
    the next plane gets (see :class:`~napari_mobilesamv2.options.PropagationOptions`).
    Each object keeps one id on all its planes; the labels are written as one undo step.
    The planes' embeddings are kept in the session's memory cache (the last few planes),
    or with `embeddings` (a folder or an
    :class:`~napari_mobilesamv2.embedding_cache.EmbeddingCache`) on disk, so that a second
    run over the same planes only runs the mask decoder.

    The plane's embedding is cached, so running again with edited prompts only
    runs the mask decoder. Other parameters are those of :func:`segment_everything`
    (``encoder``, ``device``, ``trust_weights``, ``normalization``, ``channel_axis``,
    ``channels``).
    """
    return prepare_anything(
        image, viewer, points=points, shapes=shapes, output=output, policy=policy, plane=plane,
        pipeline=pipeline, name=name, through_stack=through_stack, axis=axis, embeddings=embeddings, **settings,
    ).run()


# -- tracks ----------------------------------------------------------------------------------------


def tracks_layer(labels: Labels, viewer=None, *, name: str | None = None) -> Tracks:
    """A Tracks layer of the object centroids of a time series of labels.

    Parameters
    ----------
    labels : napari.layers.Labels
        (T, Y, X) or (T, Z, Y, X) labels whose objects keep their id through time (e.g. from
        :func:`segment_everything` with ``scope="stack"``, or :func:`segment_anything` with
        ``through_stack=True`` along t); the first axis is time.
    viewer : napari.Viewer, optional
        Receives the layer.
    name : str, optional
        Name of the layer (default ``"<labels> tracks"``).

    Returns
    -------
    napari.layers.Tracks
        One point per object and time point (track id = label id), in the labels' frame;
        ``features`` hold ``area`` and ``score`` (from the labels layer's ``score`` feature
        when it has one).
    """
    from ..tracks import tracks_data, tracks_table

    data = np.asarray(labels.data)
    scores = None
    features = labels.features
    if "id" in features and "score" in features and len(features):
        ids = np.asarray(features["id"], np.int64)
        scores = np.full(int(ids.max(initial=0)), np.nan)
        scores[ids - 1] = np.asarray(features["score"], np.float64)
    table = tracks_table(data, scores)
    if not len(table["id"]):
        raise InputError(f"{labels.name!r} has no objects to track")
    layer = Tracks(
        tracks_data(table, with_z=data.ndim == 4), name=name or f"{labels.name} tracks",
        features={"area": table["area"], "score": table["score"]}, scale=labels.scale, translate=labels.translate,
    )
    return viewer.add_layer(layer) if viewer is not None else layer


# -- editable box proposals ----------------------------------------------------------------------


def prepare_show_boxes(
    image: Image, viewer=None, *, plane: Plane | None = None, pipeline: SegmentationPipeline | None = None, **settings
) -> Job:
    """A :class:`Job` that adds the detector's boxes of the current plane as rectangles."""
    model, options, image_options = split_settings(settings)
    view = image_view(image, viewer, image_options)
    plane = _plane(view, viewer, plane)

    def steps():
        pipe = yield from _load(pipeline, model)
        pixels = view.read(plane)
        rgb = pipe.prepare_image(pixels, **view.conversion())
        cached_embedding(pipe, view, plane, pixels)  # ready for "Decode boxes"
        yield engine.Progress("embedding", 0, 1, "embedding done")
        boxes, scores = pipe.detect(rgb, conf=options.conf, iou=options.iou, imgsz=options.imgsz)
        yield engine.Progress("detecting", 1, 1, f"{len(boxes)} boxes")
        return BoxesResult(boxes[: options.max_prompts], scores[: options.max_prompts], plane)

    def apply(result: BoxesResult) -> Shapes:
        return add_box_layer(result, view, viewer)

    return Job(steps, 1, apply, f"detect boxes in {image.name}")


def show_boxes(image: Image, viewer=None, **kwargs) -> Shapes:
    """Add the detector's boxes on the current plane as an editable Shapes layer.

    Rectangles carry their detector ``score`` as a feature (NaN for ones you add).
    Edit them, then call :func:`decode_box_layer`. Keywords as :func:`prepare_show_boxes`.
    """
    return prepare_show_boxes(image, viewer, **kwargs).run()


def add_box_layer(result: BoxesResult, view: ImageView, viewer=None) -> Shapes:
    """A Shapes layer of rectangles for detector boxes, in the image's frame."""
    rectangles = boxes_to_rectangles(result.boxes_xyxy, view, result.plane)
    layer = Shapes(
        rectangles, ndim=view.ndim, shape_type="rectangle", name=f"{view.layer.name} boxes",
        features={"score": np.asarray(result.score, np.float64)}, edge_color="yellow", face_color="transparent",
        edge_width=max(1.0, min(view.data.shape[a] for a in view.plane_axes) / 256),
        metadata={"mobilesamv2_image": view.layer.name}, **view.labels_transform(),
    )
    layer.feature_defaults = {"score": np.nan}
    return viewer.add_layer(layer) if viewer is not None else layer


def prepare_decode_box_layer(
    image: Image,
    shapes: Shapes,
    viewer=None,
    *,
    output: Labels | None = None,
    policy: str = "new_ids",
    plane: Plane | None = None,
    pipeline: SegmentationPipeline | None = None,
    name: str | None = None,
    **settings,
) -> Job:
    """A :class:`Job` that decodes the (edited) rectangles of `shapes` on the current plane."""
    view = image_view(image, viewer, split_settings(settings)[2])
    plane = _plane(view, viewer, plane)
    boxes, kept = shapes_to_boxes(shapes, view, plane)
    usable = _has_area(boxes, view)
    if not usable.any():
        raise InputError(
            f"no boxes of {shapes.name!r} lie on this plane inside the image (draw rectangles; polygons and "
            "ellipses count by their bounding box, lines and paths are ignored)"
        )
    scores = np.asarray(shapes.features["score"], np.float64)[kept] if "score" in shapes.features else None
    return prepare_everything(
        image, viewer, output=output, policy=policy, scope="plane", plane=plane, pipeline=pipeline,
        boxes_xyxy=boxes[usable], box_scores=None if scores is None else scores[usable],
        name=name or f"{image.name} objects", **{**settings, "strategy": "object-aware"},
    )


def decode_box_layer(image: Image, shapes: Shapes, viewer=None, **kwargs) -> Labels:
    """Segment one object per rectangle of `shapes` (only the mask decoder runs when the
    plane's embedding is cached, e.g. after :func:`show_boxes`). Keywords as
    :func:`segment_everything`."""
    return prepare_decode_box_layer(image, shapes, viewer, **kwargs).run()


def _has_area(boxes: np.ndarray, view: ImageView) -> np.ndarray:
    """The boxes the core keeps: at least one pixel wide and high inside the image."""
    rows, cols = view.plane_axes
    h, w = view.data.shape[rows], view.data.shape[cols]
    x = np.clip(boxes[:, [0, 2]], 0, w)
    y = np.clip(boxes[:, [1, 3]], 0, h)
    return (np.abs(x[:, 1] - x[:, 0]) >= 1) & (np.abs(y[:, 1] - y[:, 0]) >= 1)


# -- helpers ---------------------------------------------------------------------------------


def _add_above(viewer, layer, image: Image) -> None:
    """Insert `layer` just above `image`, so prompt layers drawn on top stay visible."""
    index = viewer.layers.index(image) + 1 if image in viewer.layers else len(viewer.layers)
    viewer.layers.insert(index, layer)


def _plane(view: ImageView, viewer, plane: Plane | None) -> Plane:
    if plane is None:
        return current_plane(view, viewer)
    plane = tuple(int(i) for i in np.atleast_1d(plane)) if np.ndim(plane) else (int(plane),)
    view.key(plane)  # validates
    return plane


def _check_choice(what: str, value: str, choices) -> None:
    if value not in choices:
        raise InputError(f"{what} must be one of {', '.join(choices)}, not {value!r}")
