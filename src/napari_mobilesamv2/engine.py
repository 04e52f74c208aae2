"""The plane engine: one loop over the planes of an image, for every front end.

Segmenting a stack, a folder or one image is the same loop: read a plane,
segment everything in it, go on; for a stack, link the objects through the
planes at the end. The loop is a generator that yields a :class:`Progress`
after every step (embedding, detecting, decoding a batch of boxes, assembling
labels, linking), so a caller shows progress and can stop between any two
steps by no longer iterating: the command line drives it with a progress bar,
the napari widgets in a worker thread whose Cancel button stops it.

:func:`run` drives a generator to its end for callers that need no progress.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .decode.masks import crop_to_content
from .errors import InputError
from .imaging import channels_last
from .options import EverythingOptions, ImageOptions
from .results import Segmentation, quality_mask
from .stack import Gap, LinkedStack, find_gaps, link_planes
from .steps import PlaneKey, Progress, Result, Steps, embed_cached, run

if TYPE_CHECKING:
    from .protocols import SegmentationPipeline

def stack_keys(stack_shape: Sequence[int]) -> list[PlaneKey]:
    """Index of every plane of a stack of `stack_shape`, in C order (``[()]`` for one plane)."""
    return [tuple(int(i) for i in key) for key in np.ndindex(*stack_shape)]


def segment_planes(
    model: SegmentationPipeline,
    keys: Sequence[PlaneKey],
    read_plane: Callable[[PlaneKey], np.ndarray],
    options: EverythingOptions,
    conversion: dict[str, Any] | None = None,
    *,
    embedding_of: Callable[[PlaneKey, np.ndarray], Any] | None = None,
    boxes_xyxy: np.ndarray | None = None,
    embeddings=None,
) -> Steps[list[Segmentation]]:
    """Segment everything in each plane, one after the other.

    Parameters
    ----------
    model : SegmentationPipeline
        The pipeline (:class:`~napari_mobilesamv2.MobileSAMv2` or a stand-in).
    keys : sequence of tuple of int
        The planes to segment, e.g. ``stack_keys(stack.shape[:-2])``.
    read_plane : callable
        Returns the pixels of the plane `key` (read lazily: one plane in memory at a time).
    options : EverythingOptions
        Segment-everything settings.
    conversion : dict, optional
        Keywords of :func:`~napari_mobilesamv2.imaging.to_rgb_uint8` for each plane
        (e.g. ``ImageOptions(...).conversion()``).
    embedding_of : callable, optional
        ``embedding_of(key, pixels)`` returns the plane's image embedding (e.g. from a cache).
    boxes_xyxy : numpy.ndarray, optional
        Box prompts to decode instead of the detector's (one plane only).
    embeddings : EmbeddingCache, optional
        On-disk embedding cache for the tiles of planes larger than ``options.tile``
        (those are segmented tile by tile, see :mod:`napari_mobilesamv2.tiled`).

    Yields
    ------
    Progress
        After each step of each plane.

    Returns
    -------
    list of Segmentation
        One per key, in order.
    """
    if boxes_xyxy is not None and len(keys) != 1:
        raise InputError("box prompts are decoded on one plane at a time")
    options.check_strategy()
    found: list[Segmentation] = []
    total = len(keys)
    for done, key in enumerate(keys):
        pixels = read_plane(key)
        if _needs_tiles(pixels, options, conversion or {}) and boxes_xyxy is None:
            result = yield from _tiled_plane(model, pixels, key, options, conversion or {}, embeddings)
        else:
            embedding = embedding_of(key, pixels) if embedding_of is not None else None
            plane_steps = model.segment_everything_steps(
                pixels, options, embedding=embedding, boxes_xyxy=boxes_xyxy, **(conversion or {})
            )
            result = yield from _within_plane(plane_steps, done, total, key)
        found.append(result)
        yield Progress("plane", done + 1, total, f"{_where(key)}: {len(result)} objects")
    return found


def _needs_tiles(pixels: np.ndarray, options: EverythingOptions, conversion: dict) -> bool:
    if options.tile is None or options.strategy != "object-aware":
        return False
    plane = channels_last(pixels, conversion.get("channel_axis"))
    return max(plane.shape[:2]) > options.tile


def _tiled_plane(model, pixels, key: PlaneKey, options, conversion: dict, embeddings) -> Steps[Segmentation]:
    """A plane larger than a tile, segmented tile by tile (labels assembled in memory)."""
    from .tiled import segment_tiled_steps

    plane = channels_last(pixels, conversion.get("channel_axis"))
    conversion = {k: v for k, v in conversion.items() if k != "channel_axis"}  # `plane` has its channels last
    tiled = yield from segment_tiled_steps(model, plane.shape[:2], lambda rows, cols: plane[rows, cols], options,
                                           conversion, plane=key, embeddings=embeddings)
    return tiled.segmentation()


def _within_plane(steps: Steps[Result], done: int, total: int, key: PlaneKey) -> Steps[Result]:
    """Re-yield a plane's own steps as progress of the whole run."""
    while True:
        try:
            stage, detail = next(steps)
        except StopIteration as finished:
            return finished.value
        yield Progress(stage, done, total, f"{_where(key)}: {detail}" if key else detail)


def _where(key: PlaneKey) -> str:
    return "plane " + ",".join(map(str, key)) if key else "image"


@dataclass
class StackResult:
    """Objects of a stack: per-plane results and their ids linked through the stack."""

    link: LinkedStack
    planes: list[Segmentation]
    keys: list[PlaneKey]


def segment_stack_steps(
    model: SegmentationPipeline,
    stack_shape: Sequence[int],
    read_plane: Callable[[PlaneKey], np.ndarray],
    options: EverythingOptions,
    conversion: dict[str, Any] | None = None,
    *,
    embedding_of: Callable[[PlaneKey, np.ndarray], Any] | None = None,
) -> Steps[StackResult]:
    """Segment every plane of a stack, then give an object one id through neighbouring planes.

    See :func:`segment_planes`; with ``options.fill_gaps`` objects missed on one plane
    are decoded there from their neighbours' boxes (:func:`fill_gap_steps`); linking uses
    ``options.link_iou`` (:func:`~napari_mobilesamv2.stack.link_planes`).
    """
    keys = stack_keys(stack_shape)
    found = yield from segment_planes(model, keys, read_plane, options, conversion, embedding_of=embedding_of)
    if options.fill_gaps:
        found = yield from fill_gap_steps(model, stack_shape, read_plane, found, options, conversion,
                                          embedding_of=embedding_of)
    result = link_stack(found, stack_shape, options)
    yield Progress("linking", len(keys), len(keys), f"{result.link.n_objects} objects through {len(keys)} planes")
    return result


def link_stack(found: Sequence[Segmentation], stack_shape: Sequence[int], options: EverythingOptions) -> StackResult:
    """Link the objects of a stack's segmented planes (in :func:`stack_keys` order) through the stack.

    The step after all planes are done (and their gaps filled), whether they were segmented
    here or on a cluster.
    """
    keys = stack_keys(stack_shape)
    labels = np.stack([f.labels for f in found]).reshape(*stack_shape, *found[0].labels.shape)
    link = link_planes(labels, options.link_iou)
    return StackResult(link, list(found), keys)


def fill_gap_steps(
    model: SegmentationPipeline,
    stack_shape: Sequence[int],
    read_plane: Callable[[PlaneKey], np.ndarray],
    planes: list[Segmentation],
    options: EverythingOptions,
    conversion: dict[str, Any] | None = None,
    *,
    embedding_of: Callable[[PlaneKey, np.ndarray], Any] | None = None,
) -> Steps[list[Segmentation]]:
    """Decode objects that a plane lacks but the planes on both sides hold.

    The gaps are those of :func:`~napari_mobilesamv2.stack.find_gaps` (along every stack
    axis, at ``options.link_iou``). On each plane with gaps the mean of the neighbours'
    boxes prompts the mask decoder; a mask is kept only where the plane has no object yet,
    and only if that part reaches ``options.link_iou`` with the object on a neighbouring
    plane (so linking joins the three) and passes the ``min_*`` filters. Planes larger than
    ``options.tile`` are left as they are.

    Parameters
    ----------
    model, stack_shape, read_plane, options, conversion, embedding_of
        As for :func:`segment_stack_steps`.
    planes : list of Segmentation
        The per-plane results, in the C order of the stack's planes.

    Yields
    ------
    Progress
        ``filling gaps``, after each plane with gaps.

    Returns
    -------
    list of Segmentation
        `planes`, where a plane with filled gaps has the new objects after its own (ids
        ``n + 1``, ... with detector score NaN).
    """
    keys = stack_keys(stack_shape)
    shape = planes[0].labels.shape
    flat = np.stack([p.labels for p in planes])
    by_plane: dict[int, list[Gap]] = {}
    for gap in find_gaps(flat.reshape(*stack_shape, *shape), options.link_iou):
        by_plane.setdefault(gap.plane, []).append(gap)
    planes = list(planes)
    filled = 0
    for plane, gaps in by_plane.items():
        pixels = read_plane(keys[plane])
        if _needs_tiles(pixels, options, conversion or {}):
            continue
        embedding = embedding_of(keys[plane], pixels) if embedding_of is not None else None
        if embedding is None:
            embedding = model.embed(model.prepare_image(pixels, **(conversion or {})))
        boxes = np.stack([gap.box_xyxy for gap in gaps])
        decoded = model.decode_boxes(embedding, boxes, options)
        keep = quality_mask(decoded, options.min_predicted_iou, options.min_stability, options.min_area)
        before = planes[plane]
        planes[plane] = _add_gap_objects(before, decoded, keep, boxes, gaps, flat, options.link_iou)
        filled += len(planes[plane]) - len(before)
        yield Progress("filling gaps", len(keys), len(keys), f"{_where(keys[plane])}: {filled} objects filled")
    return planes


def _add_gap_objects(found: Segmentation, decoded, keep: np.ndarray, boxes: np.ndarray, gaps: list[Gap],
                     flat: np.ndarray, link_iou: float) -> Segmentation:
    """`found` with the decoded gap masks that fit: painted on background only, linked to a neighbour."""
    labels = found.labels.copy()
    crops, rows = list(found.crops), []
    for i, gap in enumerate(gaps):
        if not keep[i]:
            continue
        free = decoded.crops[i].to_full(labels.shape) & (labels == 0)
        neighbours = (flat[gap.before] == gap.id_before, flat[gap.after] == gap.id_after)
        if max(_iou(free, other) for other in neighbours) < link_iou:
            continue
        labels[free] = len(crops) + 1
        crops.append(crop_to_content(free))
        rows.append(i)
    if not rows:
        return found
    n = len(found)
    visible = np.bincount(labels.ravel(), minlength=len(crops) + 1)[1:].astype(np.int64)
    return Segmentation(
        labels, crops, np.concatenate([found.boxes_xyxy.reshape(-1, 4), boxes[rows]]).astype(np.float32),
        np.concatenate([found.score, np.full(len(rows), np.nan)]).astype(np.float32),
        np.concatenate([found.predicted_iou, decoded.predicted_iou[rows]]).astype(np.float32),
        np.concatenate([found.stability, decoded.stability[rows]]).astype(np.float32),
        np.concatenate([found.visible_area[:n], visible[n:]]).astype(np.int64), found.strategy,
        None if found.tile is None else np.concatenate([found.tile, np.full(len(rows), -1)]).astype(np.int64),
    )


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def segment_stack(
    model: SegmentationPipeline,
    stack: Any,
    options: EverythingOptions = EverythingOptions(),
    image_options: ImageOptions = ImageOptions(),
    *,
    rgb: bool = False,
    on_progress: Callable[[Progress], Any] | None = None,
) -> StackResult:
    """Segment everything in every plane of a (..., Y, X[, C]) stack and link ids through it.

    The stack is read one plane at a time, so a memory-mapped or dask array is
    never loaded whole. `rgb`: the last axis holds RGB(A) channels.
    """
    stack_shape, read_plane = array_plane_reader(stack, 3 if rgb else 2)
    steps = segment_stack_steps(model, stack_shape, read_plane, options, image_options.conversion())
    return run(steps, on_progress)


def array_plane_reader(stack: Any, plane_ndim: int) -> tuple[tuple[int, ...], Callable[[PlaneKey], np.ndarray]]:
    """Stack shape and a plane reader of an array-like (numpy, memory-mapped, dask, zarr).

    The last `plane_ndim` axes (2 for grey, 3 for RGB or channels-last) form a plane.
    """
    if stack.ndim <= plane_ndim:
        kind = "RGB " if plane_ndim == 3 else ""
        raise InputError(f"a stack needs at least one axis before the {kind}planes; got shape {stack.shape}")
    stack_shape = tuple(int(s) for s in stack.shape[: stack.ndim - plane_ndim])
    return stack_shape, lambda key: np.asarray(stack[key])

