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

import math
import os
import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Points, Shapes, Tracks

from .. import engine, large_io, tiled
from ..decode.labels import ID_POLICIES, paint_order
from ..decode.prompted import ObjectPrompt
from ..errors import InputError, OutputError
from ..imaging import MAX_PIXELS
from ..models.download import cache_dir
from ..options import EverythingOptions, ImageOptions, ModelOptions, PropagationOptions
from ..prompts.user import check_object, objects_from_prompts
from ..protocols import SegmentationPipeline
from ..results import Segmentation
from ..steps import embed_cached
from ..stack import linked_table
from ..tiling import paint_window, shift_crop
from ._layers import (
    ImageView,
    Plane,
    PointPrompts,
    add_features,
    boxes_to_rectangles,
    check_output,
    current_plane,
    image_view,
    label_counts,
    new_labels_data,
    object_features,
    points_on_plane,
    shapes_to_boxes,
    write_pieces_into_layer,
)
from ._features_history import last_step, remember_run
from ._models import EMBEDDINGS, EmbeddingCache, get_pipeline, is_loaded

SCOPES = ("plane", "stack")
LABELS_SUBFOLDER = "labels"
"""Folder of the cache folder where large results are written unless another folder is chosen."""
LABELS_FOLDER_HELP = (
    "labels of a plane larger than {limit} px on a side are written here as a new zarr folder named after the "
    "layer (nothing is overwritten) and shown from there"
)


def pipeline_for(model: ModelOptions) -> SegmentationPipeline:
    """The (cached) pipeline of these model settings."""
    return get_pipeline(model.encoder, model.device, model.trust_weights)


@dataclass
class LabelsResult:
    """Labels to write at `key` of the output, with one table row per object.

    `pieces`, when given, replaces (`key`, `labels`): labels of several disjoint
    windows of the output, as ``(key, labels)`` pairs.
    """

    labels: np.ndarray | None
    key: tuple | None
    table: dict[str, np.ndarray]
    pieces: list[tuple[tuple, np.ndarray]] | None = None

    def parts(self) -> list[tuple[tuple, np.ndarray]]:
        return self.pieces if self.pieces is not None else [(self.key, self.labels)]


@dataclass
class StoredLabels:
    """Labels written to a zarr array at `path` (a large result), with one table row per object."""

    path: Path
    table: dict[str, np.ndarray]
    counts: np.ndarray = field(repr=False)


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
    labels_folder: str | os.PathLike | None = None,
    embeddings_folder: str | os.PathLike | None = None,
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
    name = name or f"{image.name} objects"
    tiles = scope == "plane" and boxes_xyxy is None and _tiles_plane(view, options)
    if tiles:
        options = options.replace(tile=tile_side(options))
    stored = scope == "plane" and output is None and is_large(view) and _plane_is_last(view)
    disk = embeddings_on_disk(embeddings_folder)

    def steps():
        pipe = yield from _load(pipeline, model)
        embedding_of = partial(_plane_embedding, pipe, view, disk=disk)
        if scope == "stack":
            stacked = yield from engine.segment_stack_steps(
                pipe, view.stack_shape, view.read, options, view.conversion(), embedding_of=embedding_of,
            )
            return _stack_result(view, stacked)
        if tiles:
            found = yield from tiled.segment_tiled_steps(
                pipe, view.plane_shape, partial(view.read_window, planes[0]), options, view.window_conversion(),
                plane=planes[0], embeddings=disk,
            )
        else:
            found, = yield from engine.segment_planes(
                pipe, planes, view.read, options, view.conversion(), embedding_of=embedding_of, boxes_xyxy=boxes_xyxy,
            )
        if stored:
            return (yield from _store_labels(view, planes[0], found, labels_folder, name, box_scores))
        if tiles:
            found = found.segmentation()
        return _plane_result(view, planes[0], found, box_scores)

    def apply(result: LabelsResult | StoredLabels) -> Labels:
        if isinstance(result, StoredLabels):
            return add_stored_labels(result, view, viewer, name)
        return apply_labels(result, view, viewer, output, policy, name)

    where = "the whole stack" if scope == "stack" else "the current plane"
    total = len(planes)
    return Job(steps, total, apply, f"segment everything in {where} of {image.name}")


def embeddings_on_disk(folder: str | os.PathLike | None):
    """The on-disk embedding cache in `folder`
    (:class:`~napari_mobilesamv2.embedding_cache.EmbeddingCache`), or None for no folder.

    Embeddings kept there are reused by later segment everything, segment anything and box
    decoding runs, also in later sessions and by the command line's ``--embeddings``.
    """
    if not folder or str(folder) in ("", "."):  # an empty folder field: magicgui gives Path(".")
        return None
    from ..embedding_cache import EmbeddingCache as DiskEmbeddings

    return DiskEmbeddings(Path(folder).expanduser())


def is_large(view: ImageView) -> bool:
    """Whether the planes of `view` are large: longer than :data:`~napari_mobilesamv2.large_io.NAPARI_PLANE_LIMIT`
    on a side. Large planes are segmented in tiles, their new labels are written to a zarr
    folder, and segment anything embeds only windows around the prompts."""
    return max(view.plane_shape) > large_io.NAPARI_PLANE_LIMIT


def tile_side(options: EverythingOptions) -> int:
    """The tile (and segment-anything window) side: ``options.tile``, else
    :data:`~napari_mobilesamv2.options.LARGE_IMAGE_TILE`."""
    return options.tile if options.tile is not None else tiled.LARGE_IMAGE_TILE


def default_labels_folder() -> Path:
    """Where large results are written unless another folder is chosen: ``labels`` in the cache folder."""
    return cache_dir() / LABELS_SUBFOLDER


def _tiles_plane(view: ImageView, options: EverythingOptions) -> bool:
    """Whether a plane is segmented tile by tile: a chosen tile smaller than the plane, or a large plane."""
    if options.strategy != "object-aware":
        return False
    if options.tile is not None:
        return max(view.plane_shape) > options.tile
    return is_large(view)


def _plane_is_last(view: ImageView) -> bool:
    """Whether the plane axes are the layer's last two (as a zarr label pyramid needs)."""
    return view.plane_axes == (view.ndim - 2, view.ndim - 1)


def _store_labels(
    view: ImageView, plane: Plane, found, folder: str | os.PathLike | None, name: str, scores=None,
) -> engine.Steps[StoredLabels]:
    """Write the labels of a large plane to a new zarr array, one chunk-sized window at a time.

    `found` is a :class:`~napari_mobilesamv2.tiled.TiledSegmentation` (labels painted
    window by window) or a :class:`~napari_mobilesamv2.results.Segmentation`.
    """
    path = _new_output(folder, name)
    height, width = view.plane_shape
    side = large_io.DEFAULT_CHUNK
    windows = [(slice(y, min(height, y + side)), slice(x, min(width, x + side)))
               for y in range(0, height, side) for x in range(0, width, side)]
    labels = getattr(found, "labels", None)
    counts = np.zeros(len(found) + 1, np.int64)
    axes = None if view.ndim <= 4 else "".join(chr(ord("a") + i) for i in range(view.ndim - 2)) + "yx"
    # leaving the block by an error or a cancelled run discards the partial output
    with large_io.LabelsWriter(path, view.labels_shape, axes=axes) as writer:
        for done, (rows, cols) in enumerate(windows):
            block = labels[rows, cols] if labels is not None else found.paint(rows, cols)[0]
            counts += np.bincount(block.ravel(), minlength=len(counts))[: len(counts)]
            writer.write(view.labels_window_key(plane, rows, cols), block)
            yield engine.Progress("writing", done + 1, len(windows), f"writing labels {done + 1} of {len(windows)}")
    return StoredLabels(path, _objects_table(view, plane, found, scores), counts)


def _objects_table(view: ImageView, plane: Plane, found, scores=None) -> dict[str, np.ndarray]:
    n = len(found)
    scores = scores if scores is not None and len(scores) == n else found.score
    return {
        "id": np.arange(1, n + 1, dtype=np.int64), "score": np.asarray(scores, np.float32),
        "predicted_iou": np.asarray(found.predicted_iou, np.float32),
        "stability": np.asarray(found.stability, np.float32),
        "slice": np.full(n, view.describe(plane), dtype=object),
    }


def _new_output(folder: str | os.PathLike | None, name: str) -> Path:
    """A zarr path named after `name` in `folder` that no file or folder holds yet (nothing is overwritten)."""
    # an empty folder field (magicgui gives Path(".")) means the default folder, not the working directory
    folder = Path(folder).expanduser() if folder and str(folder) not in ("", ".") else default_labels_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"cannot create the labels folder {folder} ({error.strerror or error}); choose another folder"
        ) from None
    stem = re.sub(r"[^\w.-]+", "_", name).strip("._") or "labels"
    for number in range(1, 10_000):
        path = folder / (f"{stem}.zarr" if number == 1 else f"{stem}_{number}.zarr")
        if not path.exists() and not path.with_name(path.name + ".partial").exists():
            return path
    raise OutputError(f"the labels folder {folder} holds too many outputs named {stem}; choose another folder")


def add_stored_labels(result: StoredLabels, view: ImageView, viewer, name: str) -> Labels:
    """A new Labels layer that reads `result`'s zarr array (a pyramid for large planes), with its features."""
    data = large_io.open_labels_for_napari(result.path)
    layer = Labels(
        data, name=name, multiscale=isinstance(data, list), metadata={"mobilesamv2_labels": str(result.path)},
        **view.labels_transform(),
    )
    table = result.table
    id_map = {int(i): int(i) for i in table["id"]}
    add_features(layer, object_features(table, id_map, counts=result.counts))
    if viewer is not None:
        _add_above(viewer, layer, view.layer)
    return layer


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
    labels_folder: str | os.PathLike | None = None,
    embeddings_folder: str | os.PathLike | None = None,
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
        where the layer is 0) or ``overwrite`` (the existing objects the new ones
        touch are removed; new ids after the layer's largest).
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
    labels_folder : str or path-like, optional
        Where the labels of a large plane (see :func:`is_large`) are written, as a new
        zarr array named after the layer (an existing one is never replaced); default
        :func:`default_labels_folder`. The new layer reads them from there.
    embeddings_folder : str or path-like, optional
        A folder of image embeddings kept on disk (see :func:`embeddings_on_disk`): those
        found there are reused, the others computed and added. The same folder works with
        the command line's ``--embeddings``.
    **settings
        Any field of :class:`~napari_mobilesamv2.options.ModelOptions` (``encoder``,
        ``device``, ``trust_weights``), :class:`~napari_mobilesamv2.options.EverythingOptions`
        (``strategy``, ``conf``, ``iou``, ``imgsz``, ``max_prompts``, ``batch_size``,
        ``exact``, ``min_*`` filters, ``points_per_side``, ``link_iou``, ``tile``,
        ``overlap``) and
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
        labels_folder=labels_folder, embeddings_folder=embeddings_folder, **settings,
    ).run()


def _load(pipeline: SegmentationPipeline | None, model: ModelOptions) -> engine.Steps[SegmentationPipeline]:
    """The pipeline to use, loading it (a step of its own: it may download weights)."""
    if pipeline is None and not is_loaded(model.encoder, model.device):
        yield engine.Progress("loading", 0, 1, f"loading the {model.encoder} models (first run with them)")
    pipe = pipeline or pipeline_for(model)
    yield engine.Progress("models", 1, 1, f"models ready ({getattr(pipe, 'encoder_name', 'custom')})")
    return pipe


def _plane_embedding(pipeline: SegmentationPipeline, view: ImageView, plane: Plane, pixels: np.ndarray, disk=None):
    return cached_embedding(pipeline, view, plane, pixels, disk=disk)


def cached_embedding(
    pipeline: SegmentationPipeline, view: ImageView, plane: Plane, image: np.ndarray | None = None, disk=None,
):
    """The image embedding of `plane`, computed once per layer, plane and conversion.

    With `disk` (see :func:`embeddings_on_disk`) an embedding missing from memory is read
    from that folder when it holds it, else computed and stored there.
    """
    key = (id(pipeline), *view.cache_key(plane))

    def compute():
        pixels = view.read(plane) if image is None else image
        return embed_cached(pipeline, disk, pipeline.prepare_image(pixels, **view.conversion()), plane=tuple(plane))

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
    parts = result.parts()
    if output is None:
        data = new_labels_data(view)
        for key, labels in parts:
            data[key] = labels
        id_map = {int(i): int(i) for i in result.table["id"]}
        layer = Labels(data, name=name, **view.labels_transform())
        if viewer is not None:
            _add_above(viewer, layer, view.layer)
    else:
        check_output(view, output)
        step, table = last_step(output), output.features.copy()
        id_map = write_pieces_into_layer(output, parts, policy)
        layer = output
    top = max(id_map.values(), default=0)
    counts = label_counts([np.asarray(layer.data[key]) for key, _ in parts], top)
    add_features(layer, object_features(result.table, id_map, counts=counts))
    if output is not None:
        remember_run(output, step, table)  # undo restores the table too
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
    embeddings_folder: str | os.PathLike | None = None,
    **settings,
) -> Job:
    """A :class:`Job` that segments the prompted objects; see :func:`segment_anything`."""
    propagation, settings = _propagation_settings(settings)
    model, options, image_options = split_settings(settings)
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

    disk = embeddings_on_disk(embeddings_folder)
    if through_stack:
        return _through_stack_job(view, viewer, plane, prompts, boxes, propagation, axis, model, pipeline, output,
                                  policy, name or f"{image.name} objects", disk)
    windowed = is_large(view)
    if windowed:
        objects = [check_object(o, view.plane_shape) for o in objects_from_prompts(
            prompts.points, prompts.labels, prompts.groups, boxes)]
        windows = prompt_windows([_extent(o) for o in objects], view.plane_shape, tile_side(options))

    def steps():
        pipe = yield from _load(pipeline, model)
        if windowed:
            return (yield from _segment_windows(pipe, view, plane, objects, windows, disk))
        embedding = cached_embedding(pipe, view, plane, disk=disk)
        yield engine.Progress("embedding", 0, 1, "image embedded")
        found = pipe.segment_anything(
            view.read(plane), points=prompts.points, point_labels=prompts.labels, point_groups=prompts.groups,
            boxes=boxes, embedding=embedding, **view.conversion(),
        )
        yield engine.Progress("plane", 1, 1, f"{len(found)} objects")
        return _plane_result(view, plane, found)

    def apply(result: LabelsResult) -> Labels:
        return apply_labels(result, view, viewer, output, policy, name or f"{image.name} objects")

    return Job(steps, 1, apply, f"segment anything in {image.name}")


Window = tuple[int, int, int, int]
"""(y0, x0, y1, x1) of a window of a plane, half-open pixel edges."""


def prompt_windows(extents: Sequence[Window], shape: tuple[int, int], side: int) -> list[tuple[Window, list[int]]]:
    """Windows to embed around prompted objects, and which objects each one decodes.

    Objects are taken in order; each joins the first group whose bounding rectangle
    stays within `side` x `side` pixels with it, else starts a group. A group's window
    is `side` x `side` (the plane, along an axis shorter than `side`), chosen among
    windows on a grid of `side`/2 steps (so nearby prompts reuse one cached
    embedding), the one that holds the group most centrally; when no grid window
    holds it, the window is centred on it and kept inside the plane. A single object
    larger than `side` gets its bounding rectangle with a margin of `side`/8.

    Parameters
    ----------
    extents : sequence of (y0, x0, y1, x1)
        Each object's prompts as a rectangle of pixel edges inside the plane.
    shape : (int, int)
        (H, W) of the plane.
    side : int
        Window side.

    Returns
    -------
    list of (window, members)
        One window per group, with the positions of its objects in `extents`.

    Raises
    ------
    InputError
        One object's window would hold more pixels than one embedding can take.
    """
    groups: list[tuple[list[int], list[int]]] = []  # (bounding rectangle, members)
    for i, extent in enumerate(extents):
        for box, members in groups:
            joined = [min(box[0], extent[0]), min(box[1], extent[1]), max(box[2], extent[2]), max(box[3], extent[3])]
            if joined[2] - joined[0] <= side and joined[3] - joined[1] <= side:
                box[:] = joined
                members.append(i)
                break
        else:
            groups.append((list(extent), [i]))
    windows = []
    for box, members in groups:
        y0, y1 = _window_span(box[0], box[2], shape[0], side)
        x0, x1 = _window_span(box[1], box[3], shape[1], side)
        if (y1 - y0) * (x1 - x0) > MAX_PIXELS:
            raise InputError(
                f"the prompts of one object span {box[2] - box[0]} x {box[3] - box[1]} pixels, more than one "
                "embedding can take; draw a smaller box"
            )
        windows.append(((y0, x0, y1, x1), members))
    return windows


def _window_span(low: int, high: int, size: int, side: int) -> tuple[int, int]:
    """Start and stop of a window along one axis holding ``[low, high)`` (see :func:`prompt_windows`)."""
    if size <= side:
        return 0, size
    if high - low > side:
        margin = side // 8
        return max(0, low - margin), min(size, high + margin)
    step = max(1, side // 2)
    starts = sorted({min(k * step, size - side) for k in range(math.ceil((size - side) / step) + 1)})
    centre = (low + high) / 2
    holding = [s for s in starts if s <= low and high <= s + side]
    if holding:
        start = min(holding, key=lambda s: (abs(s + side / 2 - centre), s))
    else:
        start = int(np.clip(round(centre - side / 2), 0, size - side))
    return start, start + side


def _extent(obj: ObjectPrompt) -> Window:
    """The pixels an object's positive points and box cover, as (y0, x0, y1, x1) pixel edges."""
    corners = [np.asarray(obj.points, np.float64)[np.asarray(obj.labels) == 1]]
    if obj.box is not None:
        x0, y0, x1, y1 = np.asarray(obj.box, np.float64)
        corners.append(np.array([[x0, y0], [max(x0, x1 - 1e-6), max(y0, y1 - 1e-6)]]))
    xy = np.concatenate(corners).reshape(-1, 2)
    (left, top), (right, bottom) = np.floor(xy.min(0)), np.floor(xy.max(0)) + 1
    return int(top), int(left), int(bottom), int(right)


def _in_window(obj: ObjectPrompt, window: Window) -> ObjectPrompt:
    """`obj` in window coordinates; negative points outside the window are left out."""
    y0, x0, y1, x1 = window
    points = np.asarray(obj.points, np.float32).reshape(-1, 2) - np.array([x0, y0], np.float32)
    inside = (points[:, 0] >= 0) & (points[:, 0] < x1 - x0) & (points[:, 1] >= 0) & (points[:, 1] < y1 - y0)
    box = None if obj.box is None else np.asarray(obj.box, np.float32) - np.array([x0, y0, x0, y0], np.float32)
    return ObjectPrompt(points[inside], np.asarray(obj.labels, np.int64)[inside], box)


# Intensity ranges of recently segmented planes (per layer, plane and conversion), for windows
RANGES = EmbeddingCache(size=8)


def _segment_windows(
    pipe: SegmentationPipeline, view: ImageView, plane: Plane, objects: list[ObjectPrompt],
    windows: list[tuple[Window, list[int]]],
    disk=None,
) -> engine.Steps[LabelsResult]:
    """Segment prompted objects of a large plane, embedding only a window around each group of them."""
    conversion = RANGES.get_or_compute(view.cache_key(plane), lambda: tiled.tile_conversion(
        partial(view.read_window, plane), view.plane_shape, view.window_conversion()))
    n = len(objects)
    crops: list = [None] * n
    predicted_iou, stability = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for done, (window, members) in enumerate(windows):
        y0, x0, y1, x1 = window
        pixels = view.read_window(plane, slice(y0, y1), slice(x0, x1))

        def embed(pixels=pixels, window=window):
            return embed_cached(pipe, disk, pipe.prepare_image(pixels, **conversion), plane=tuple(plane), tile=window)

        embedding = EMBEDDINGS.get_or_compute((id(pipe), *view.cache_key(plane), ("window", *window)), embed)
        found = pipe.segment_prompts(pixels, [_in_window(objects[i], window) for i in members], embedding=embedding,
                                     **conversion)
        for k, i in enumerate(members):
            crops[i] = shift_crop(found.crops[k], y0, x0)
        predicted_iou[members], stability[members] = found.predicted_iou, found.stability
        yield engine.Progress("decoding", done + 1, len(windows), f"window {done + 1} of {len(windows)}: "
                                                                   f"{len(members)} objects")
    order = paint_order(np.array([c.area for c in crops], np.int64))
    pieces = []
    for y0, x0, y1, x1 in _disjoint([w for w, _ in windows]):
        rows, cols = slice(y0, y1), slice(x0, x1)
        pieces.append((view.labels_window_key(plane, rows, cols), paint_window(crops, (rows, cols), order=order)[0]))
    table = {
        "id": np.arange(1, n + 1, dtype=np.int64), "score": np.full(n, np.nan, np.float32),
        "predicted_iou": predicted_iou, "stability": stability, "slice": np.full(n, view.describe(plane), dtype=object),
    }
    return LabelsResult(None, None, table, pieces)


def _disjoint(windows: list[Window]) -> list[Window]:
    """Overlapping windows joined into their bounding rectangles, until none overlap."""
    rects = [list(w) for w in windows]
    joined = True
    while joined:
        joined = False
        for i in range(len(rects)):
            for j in range(i + 1, len(rects)):
                a, b = rects[i], rects[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    rects[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
                    del rects[j]
                    joined = True
                    break
            if joined:
                break
    return [tuple(r) for r in rects]


def _propagation_settings(settings: dict[str, Any]) -> tuple[PropagationOptions, dict[str, Any]]:
    """The :class:`PropagationOptions` among keyword settings, and the other settings."""
    names = {f.name for f in fields(PropagationOptions)}
    chosen = {k: v for k, v in settings.items() if k in names}
    return PropagationOptions(**chosen), {k: v for k, v in settings.items() if k not in names}


def _through_stack_job(view: ImageView, viewer, plane: Plane, prompts: PointPrompts, boxes: np.ndarray,
                       options: PropagationOptions, axis: int | None, model: ModelOptions,
                       pipeline: SegmentationPipeline | None, output: Labels | None, policy: str, name: str,
                       disk=None) -> Job:
    """Segment anything on `plane` and follow the objects along a stack axis of the layer
    (embeddings kept on `disk` when given, see :func:`embeddings_on_disk`)."""
    from ..propagate import propagate_steps

    if not view.stack_axes:
        raise InputError(f"{view.layer.name!r} has no stack axis to follow objects through (it is one plane)")
    axis = view.stack_axes[-1] if axis is None else int(axis)
    if axis not in view.stack_axes:
        raise InputError(f"axis {axis} of {view.layer.name!r} is not a stack axis; choose one of "
                         f"{', '.join(map(str, view.stack_axes))}")
    objects = objects_from_prompts(prompts.points, prompts.labels, prompts.groups, boxes)
    n_along = view.data.shape[axis]

    def steps():
        pipe = yield from _load(pipeline, model)
        embedding_of = partial(_plane_embedding, pipe, view) if disk is None else None
        found = yield from propagate_steps(
            pipe, view.stack_shape, view.read, [(plane, obj) for obj in objects], options, view.conversion(),
            axis=view.stack_axes.index(axis), embedding_of=embedding_of, embeddings=disk,
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
    embeddings_folder: str | os.PathLike | None = None,
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
    or with `embeddings_folder` on disk, so that a second run over the same planes only
    runs the mask decoder.

    The plane's embedding is cached, so running again with edited prompts only
    runs the mask decoder. On a large plane (see :func:`is_large`) only windows
    around the prompts are read and embedded (:func:`prompt_windows`; ``tile`` sets
    their side, 1024 by default). Other parameters are those of :func:`segment_everything`
    (``embeddings_folder``, ``encoder``, ``device``, ``trust_weights``, ``normalization``,
    ``channel_axis``, ``channels``).
    """
    return prepare_anything(
        image, viewer, points=points, shapes=shapes, output=output, policy=policy, plane=plane,
        pipeline=pipeline, name=name, through_stack=through_stack, axis=axis, embeddings_folder=embeddings_folder,
        **settings,
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
    image: Image, viewer=None, *, plane: Plane | None = None, pipeline: SegmentationPipeline | None = None,
    embeddings_folder: str | os.PathLike | None = None, **settings
) -> Job:
    """A :class:`Job` that adds the detector's boxes of the current plane as rectangles."""
    model, options, image_options = split_settings(settings)
    view = image_view(image, viewer, image_options)
    plane = _plane(view, viewer, plane)
    disk = embeddings_on_disk(embeddings_folder)

    def steps():
        pipe = yield from _load(pipeline, model)
        pixels = view.read(plane)
        rgb = pipe.prepare_image(pixels, **view.conversion())
        cached_embedding(pipe, view, plane, pixels, disk=disk)  # ready for "Decode boxes"
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
    embeddings_folder: str | os.PathLike | None = None,
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
    job = prepare_everything(
        image, viewer, output=output, policy=policy, scope="plane", plane=plane, pipeline=pipeline,
        boxes_xyxy=boxes[usable], box_scores=None if scores is None else scores[usable],
        name=name or f"{image.name} objects", embeddings_folder=embeddings_folder,
        **{**settings, "strategy": "object-aware"},
    )
    job.description = f"decode the boxes of {shapes.name}"
    return job


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
    """Insert `layer` above `image` and every image and labels layer (earlier results would
    hide it), but below the points and shapes on top, so prompts stay visible."""
    layers = list(viewer.layers)
    covering = [i for i, other in enumerate(layers) if isinstance(other, (Image, Labels))]
    start = layers.index(image) if image in layers else -1
    viewer.layers.insert(max([start, *covering]) + 1, layer)


def _plane(view: ImageView, viewer, plane: Plane | None) -> Plane:
    if plane is None:
        return current_plane(view, viewer)
    plane = tuple(int(i) for i in np.atleast_1d(plane)) if np.ndim(plane) else (int(plane),)
    view.key(plane)  # validates
    return plane


def _check_choice(what: str, value: str, choices) -> None:
    if value not in choices:
        raise InputError(f"{what} must be one of {', '.join(choices)}, not {value!r}")
