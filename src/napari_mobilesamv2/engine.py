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

from .errors import InputError
from .imaging import channels_last
from .options import EverythingOptions, ImageOptions
from .results import Segmentation
from .stack import LinkedStack, link_planes
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

    See :func:`segment_planes`; linking uses ``options.link_iou``
    (:func:`~napari_mobilesamv2.stack.link_planes`).
    """
    keys = stack_keys(stack_shape)
    found = yield from segment_planes(model, keys, read_plane, options, conversion, embedding_of=embedding_of)
    result = link_stack(found, stack_shape, options)
    yield Progress("linking", len(keys), len(keys), f"{result.link.n_objects} objects through {len(keys)} planes")
    return result


def link_stack(found: Sequence[Segmentation], stack_shape: Sequence[int], options: EverythingOptions) -> StackResult:
    """Link the objects of a stack's segmented planes (in :func:`stack_keys` order) through the stack.

    The step after all planes are done, whether they were segmented here or on a cluster.
    """
    keys = stack_keys(stack_shape)
    labels = np.stack([f.labels for f in found]).reshape(*stack_shape, *found[0].labels.shape)
    link = link_planes(labels, options.link_iou)
    return StackResult(link, list(found), keys)


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

