"""Segment anything through a stack: follow prompted objects from plane to plane.

An object prompted on one plane (points and/or a box) is segmented there; its mask
then prompts the decoder on the next plane along one stack axis (z, or t of a time
series), in both directions. What the next plane gets is chosen by
:attr:`~napari_mobilesamv2.options.PropagationOptions.next_prompt`: the mask's bounding
box, the box and the mask's innermost pixel as an object point, or the box and the mask
itself as the decoder's low-resolution mask input. An object stops where

* the decoder's predicted IoU falls below ``stop_iou``,
* the IoU of its mask with its mask on the previous plane falls below ``stop_overlap``,
* its mask is empty, or
* the stack ends.

Every prompted object keeps one id on all its planes: object ``k`` (prompt order) has id
``k + 1``. Like the plane engine, the run is a generator of
:class:`~napari_mobilesamv2.steps.Progress`, so a caller shows progress and stops it by no
longer iterating.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from .decode.labels import assemble_labels
from .decode.masks import MaskCrop, crop_to_content
from .decode.prompted import ObjectPrompt
from .errors import InputError
from .options import PropagationOptions
from .steps import PlaneKey, Progress, Steps, embed_cached, run

if TYPE_CHECKING:
    from .protocols import SegmentationPipeline

STOP_REASONS = ("start", "end of stack", "predicted IoU", "overlap", "empty mask")
#: The box a mask gives the next plane is grown by this share of its width and height on each
#: side, so that an object that moved or grew a little between planes still fits in it.
BOX_MARGIN = 0.1


@dataclass
class Propagation:
    """Prompted objects through a stack.

    Attributes
    ----------
    labels : numpy.ndarray
        (*stack_shape, H, W) int32; object ``k`` (prompt order) has id ``k + 1`` on every
        plane it reaches, 0 = background. Where objects overlap, the smaller is on top.
    table : dict of numpy.ndarray
        One row per object: ``id``, ``start_plane`` (flat C-order plane index), ``first``
        and ``last`` (index along the axis), ``n_planes``, ``predicted_iou`` (mean over
        its planes), ``stop_before`` and ``stop_after`` (why it stopped on each side, one
        of :data:`STOP_REASONS`; ``start`` when it was not followed).
    planes : dict of numpy.ndarray
        One row per object and plane reached: ``id``, ``plane`` (flat index),
        ``predicted_iou``, ``area`` (mask pixels).
    axis : int
        The stack axis followed.
    """

    labels: np.ndarray
    table: dict[str, np.ndarray]
    planes: dict[str, np.ndarray]
    axis: int

    @property
    def n_objects(self) -> int:
        return len(self.table["id"])


def propagate_steps(
    model: SegmentationPipeline,
    stack_shape: Sequence[int],
    read_plane: Callable[[PlaneKey], np.ndarray],
    objects: Sequence[tuple[PlaneKey, ObjectPrompt]],
    options: PropagationOptions = PropagationOptions(),
    conversion: dict[str, Any] | None = None,
    *,
    axis: int = -1,
    through: bool = True,
    embedding_of: Callable[[PlaneKey, np.ndarray], Any] | None = None,
    embeddings=None,
) -> Steps[Propagation]:
    """Segment prompted objects on their planes and follow them along `axis`.

    Parameters
    ----------
    model : SegmentationPipeline
        The pipeline (:class:`~napari_mobilesamv2.MobileSAMv2` or a stand-in); its
        ``segment_prompts`` is called once per plane with all objects followed there.
    stack_shape : sequence of int
        Shape of the stack axes, e.g. (Z,) or (T, Z).
    read_plane : callable
        Returns the pixels of the plane `key` (one plane in memory at a time).
    objects : sequence of (tuple of int, ObjectPrompt)
        Each object's plane (one index per stack axis) and its prompts on that plane.
    options : PropagationOptions
        What the next plane is prompted with, and when an object stops.
    conversion : dict, optional
        Keywords of :func:`~napari_mobilesamv2.imaging.to_rgb_uint8` for each plane.
    axis : int
        Stack axis to follow the objects along (default: the last, z of a (T, Z) stack).
    through : bool
        False: segment each object on its own plane only.
    embedding_of : callable, optional
        ``embedding_of(key, pixels)`` returns the plane's image embedding (e.g. from a cache).
    embeddings : EmbeddingCache, optional
        On-disk embedding cache used when `embedding_of` is not given, so that a second
        run over the same planes only runs the decoder.

    Yields
    ------
    Progress
        ``propagating``, after each plane decoded.

    Returns
    -------
    Propagation

    Raises
    ------
    InputError
        No objects, a plane index outside the stack, or an axis the stack lacks.
    """
    stack_shape = tuple(int(n) for n in stack_shape)
    axis = check_axis(axis, stack_shape)
    objects = [(check_plane(key, stack_shape), prompt) for key, prompt in objects]
    if not objects:
        raise InputError("no prompts: give at least one positive point or one box")
    conversion = conversion or {}
    embed = _embedder(model, conversion, embedding_of, embeddings)
    groups: dict[PlaneKey, list[int]] = {}
    for index, (key, _) in enumerate(objects):
        groups.setdefault(key, []).append(index)
    n_along = stack_shape[axis] if through else 1
    follow = _Follower(model, read_plane, embed, conversion, options)
    total = len(groups) * n_along
    for number, (key, members) in enumerate(groups.items()):
        start = follow.start(key, [objects[i][1] for i in members], members)
        done = number * n_along + 1
        yield Progress("propagating", done, total, _detail(key, members, len(members)))
        if not through:
            continue
        for step in (1, -1):
            live = dict(start)
            position = key[axis] + step
            while live and 0 <= position < stack_shape[axis]:
                plane = key[:axis] + (position,) + key[axis + 1:]
                live = follow.next(plane, live, side=step)
                done += 1
                yield Progress("propagating", min(done, total), total, _detail(plane, members, len(live)))
                position += step
            for index in live:
                follow.stop[index][step] = "end of stack"
    return follow.result(stack_shape, axis, len(objects))


def propagate(
    model: SegmentationPipeline,
    stack: Any,
    objects: Sequence[tuple[PlaneKey, ObjectPrompt]],
    options: PropagationOptions = PropagationOptions(),
    conversion: dict[str, Any] | None = None,
    *,
    axis: int = -1,
    rgb: bool = False,
    embeddings=None,
    on_progress: Callable[[Progress], Any] | None = None,
) -> Propagation:
    """Follow prompted objects through a (..., Y, X[, C]) array; see :func:`propagate_steps`.

    The stack is read one plane at a time (a memory-mapped or dask array is never
    loaded whole). `rgb`: the last axis holds RGB(A) channels.
    """
    plane_ndim = 3 if rgb else 2
    if stack.ndim <= plane_ndim:
        raise InputError(f"a stack needs at least one axis before the planes; got shape {stack.shape}")
    stack_shape = tuple(int(s) for s in stack.shape[: stack.ndim - plane_ndim])
    steps = propagate_steps(model, stack_shape, lambda key: np.asarray(stack[key]), objects, options, conversion,
                            axis=axis, embeddings=embeddings)
    return run(steps, on_progress)


def next_prompt(mask: np.ndarray, how: str) -> ObjectPrompt:
    """The prompt a mask gives the next plane: its box, and its innermost pixel or itself.

    The box is the mask's bounding box grown by :data:`BOX_MARGIN` on each side (within
    the image).

    Parameters
    ----------
    mask : numpy.ndarray
        (H, W) bool, not empty.
    how : str
        ``box``, ``box+point`` or ``box+mask`` (see :class:`~napari_mobilesamv2.options.PropagationOptions`).
    """
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    x0, y0, x1, y1 = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    dx, dy = BOX_MARGIN * (x1 - x0), BOX_MARGIN * (y1 - y0)
    h, w = mask.shape
    box = np.array([max(x0 - dx, 0), max(y0 - dy, 0), min(x1 + dx, w), min(y1 + dy, h)], np.float32)
    if how == "box+point":
        distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(distance)), mask.shape)
        return ObjectPrompt(np.array([[x + 0.5, y + 0.5]], np.float32), np.ones(1, np.int64), box)
    if how == "box+mask":
        return ObjectPrompt(box=box, mask=mask)
    return ObjectPrompt(box=box)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks (0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


class _Follower:
    """The state of one run: masks reached so far, why objects stopped."""

    def __init__(self, model, read_plane, embed, conversion: dict, options: PropagationOptions):
        self.model, self.read_plane, self.embed = model, read_plane, embed
        self.conversion, self.options = conversion, options
        self.found: dict[PlaneKey, list[tuple[int, MaskCrop, float]]] = {}
        self.start_key: dict[int, PlaneKey] = {}
        self.stop: dict[int, dict[int, str]] = {}
        self.shape: tuple[int, int] = (0, 0)

    def start(self, key: PlaneKey, prompts: list[ObjectPrompt], members: list[int]) -> dict[int, np.ndarray]:
        """Segment the objects on their own plane; the user's prompt is kept whatever its quality."""
        masks, ious = self._decode(key, prompts)
        for index, mask, iou in zip(members, masks, ious):
            self.start_key[index] = key
            reason = "start" if mask.any() else "empty mask"
            self.stop[index] = {1: reason, -1: reason}
            self._keep(key, index, mask, iou)
        return {index: mask for index, mask in zip(members, masks) if mask.any()}

    def next(self, key: PlaneKey, live: dict[int, np.ndarray], side: int) -> dict[int, np.ndarray]:
        """Decode the followed objects on `key`; returns those that go on."""
        prompts = [next_prompt(mask, self.options.next_prompt) for mask in live.values()]
        masks, ious = self._decode(key, prompts)
        going = {}
        for (index, previous), mask, iou in zip(live.items(), masks, ious):
            reason = self._stop_reason(mask, previous, iou)
            if reason is not None:
                self.stop[index][side] = reason
                continue
            self._keep(key, index, mask, iou)
            going[index] = mask
        return going

    def _stop_reason(self, mask: np.ndarray, previous: np.ndarray, iou: float) -> str | None:
        if not mask.any():
            return "empty mask"
        if iou < self.options.stop_iou:
            return "predicted IoU"
        if mask_iou(mask, previous) < self.options.stop_overlap:
            return "overlap"
        return None

    def _decode(self, key: PlaneKey, prompts: list[ObjectPrompt]) -> tuple[list[np.ndarray], np.ndarray]:
        pixels = self.read_plane(key)
        found = self.model.segment_prompts(pixels, prompts, embedding=self.embed(key, pixels), **self.conversion)
        self.shape = found.shape
        masks = [crop.to_full(found.shape) for crop in found.crops]
        return masks, np.asarray(found.predicted_iou, np.float64)

    def _keep(self, key: PlaneKey, index: int, mask: np.ndarray, iou: float) -> None:
        self.found.setdefault(key, []).append((index, crop_to_content(mask), float(iou)))

    def result(self, stack_shape: tuple[int, ...], axis: int, n_objects: int) -> Propagation:
        shape = self.shape
        labels = np.zeros((*stack_shape, *shape), np.int32)
        rows: dict[str, list] = {"id": [], "plane": [], "predicted_iou": [], "area": []}
        for key in sorted(self.found):
            entries = self.found[key]
            labels[key] = assemble_labels([c for _, c, _ in entries], shape, [i + 1 for i, _, _ in entries])[0]
            flat = int(np.ravel_multi_index(key, stack_shape))
            for index, crop, iou in entries:
                for name, value in zip(rows, (index + 1, flat, iou, crop.area)):
                    rows[name].append(value)
        planes = {
            "id": np.asarray(rows["id"], np.int32), "plane": np.asarray(rows["plane"], np.int64),
            "predicted_iou": np.asarray(rows["predicted_iou"], np.float32),
            "area": np.asarray(rows["area"], np.int64),
        }
        return Propagation(labels, self._table(planes, stack_shape, axis, n_objects), planes, axis)

    def _table(self, planes: dict, stack_shape: tuple[int, ...], axis: int, n: int) -> dict[str, np.ndarray]:
        along = np.unravel_index(planes["plane"], stack_shape)[axis] if len(planes["plane"]) else np.zeros(0, int)
        table: dict[str, np.ndarray] = {"id": np.arange(1, n + 1, dtype=np.int32)}
        starts = [self.start_key[i] for i in range(n)]
        table["start_plane"] = np.array([np.ravel_multi_index(k, stack_shape) for k in starts], np.int64)
        first, last, count, mean_iou = [], [], [], []
        for i in range(n):
            mine = planes["id"] == i + 1
            first.append(int(along[mine].min()) if mine.any() else starts[i][axis])
            last.append(int(along[mine].max()) if mine.any() else starts[i][axis])
            count.append(int(np.count_nonzero(planes["area"][mine])))
            mean_iou.append(float(planes["predicted_iou"][mine].mean()) if mine.any() else np.nan)
        table["first"], table["last"] = np.array(first, np.int64), np.array(last, np.int64)
        table["n_planes"] = np.array(count, np.int64)
        table["predicted_iou"] = np.array(mean_iou, np.float32)
        table["stop_before"] = np.array([self.stop[i][-1] for i in range(n)], dtype=object)
        table["stop_after"] = np.array([self.stop[i][1] for i in range(n)], dtype=object)
        return table


def _embedder(model, conversion: dict, embedding_of, embeddings) -> Callable[[PlaneKey, np.ndarray], Any]:
    if embedding_of is not None:
        return embedding_of

    def embed(key: PlaneKey, pixels: np.ndarray):
        return embed_cached(model, embeddings, model.prepare_image(pixels, **conversion), key)

    return embed


def check_axis(axis: int, stack_shape: tuple[int, ...]) -> int:
    """`axis` as a non-negative index of a stack axis; InputError when the stack has no such axis."""
    n = len(stack_shape)
    if n == 0:
        raise InputError("following objects through a stack needs a stack: the image has no axis besides its planes")
    if not -n <= int(axis) < n:
        raise InputError(f"the stack has {n} axis(es) besides its planes; axis {axis} does not exist "
                         f"(give 0 to {n - 1}, or -1 for the last)")
    return int(axis) % n


def check_plane(key: Sequence[int], stack_shape: tuple[int, ...]) -> PlaneKey:
    """`key` as a tuple of ints, one per stack axis; InputError when it lies outside the stack."""
    key = tuple(int(i) for i in np.atleast_1d(key)) if np.ndim(key) else (int(key),)
    if len(key) != len(stack_shape):
        raise InputError(f"a plane of this stack needs {len(stack_shape)} index(es), got {key}")
    for i, n in zip(key, stack_shape):
        if not 0 <= i < n:
            raise InputError(f"plane index {i} is outside the stack axis of size {n}")
    return key


def _detail(key: PlaneKey, members: list[int], n_live: int) -> str:
    where = ",".join(map(str, key))
    return f"plane {where}: {n_live} of {len(members)} object(s) followed"
