"""Stacks of per-plane label images: link objects across neighbouring planes by mask IoU.

Segment everything works on one 2D plane at a time, so the same nucleus gets an
unrelated id in each z plane (or time point). :func:`link_planes` gives it one id
through the stack: neighbouring planes (along every stack axis: z, and t for a
time series) are matched one-to-one, greedily by decreasing mask IoU, and matched
objects are joined. :func:`find_gaps` finds the objects that a plane lacks although
the planes before and after it hold them (a missed detection), so that they can be
decoded there from their neighbours' boxes. Pure numpy, so the CLI and scripts can use
it without napari.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass
class LinkedStack:
    """Objects of a stack with one id per linked object.

    Attributes
    ----------
    labels : numpy.ndarray
        (*stack_shape, H, W) int32; linked objects share an id, 0 = background.
    plane : numpy.ndarray
        (M,) flat (C-order) index of the plane of each per-plane object.
    local_id : numpy.ndarray
        (M,) id of each per-plane object in its own plane's labels.
    global_id : numpy.ndarray
        (M,) id the object has in `labels`.
    """

    labels: np.ndarray
    plane: np.ndarray
    local_id: np.ndarray
    global_id: np.ndarray

    @property
    def stack_shape(self) -> tuple[int, ...]:
        return tuple(self.labels.shape[:-2])

    @property
    def n_objects(self) -> int:
        return int(self.global_id.max(initial=0))


def mask_iou(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every object of label image `a` with every object of label image `b`.

    Returns
    -------
    ids_a, ids_b : numpy.ndarray
        The non-zero ids present in `a` and in `b`.
    iou : numpy.ndarray
        (len(ids_a), len(ids_b)) float64.
    """
    if a.shape != b.shape:
        raise InputError(f"label planes differ in shape: {a.shape} and {b.shape}")
    ids_a, index_a = np.unique(a, return_inverse=True)
    ids_b, index_b = np.unique(b, return_inverse=True)
    # Position 0 is reserved for the background so that areas include all pixels.
    index_a = index_a.ravel() + (0 if ids_a[0] == 0 else 1)
    index_b = index_b.ravel() + (0 if ids_b[0] == 0 else 1)
    ids_a, ids_b = ids_a[ids_a != 0], ids_b[ids_b != 0]
    n_a, n_b = len(ids_a) + 1, len(ids_b) + 1
    counts = np.bincount(index_a * n_b + index_b, minlength=n_a * n_b).reshape(n_a, n_b)
    intersection = counts[1:, 1:]
    union = counts[1:].sum(1)[:, None] + counts[:, 1:].sum(0)[None, :] - intersection
    return ids_a, ids_b, intersection / np.maximum(union, 1)


def match_objects(a: np.ndarray, b: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """One-to-one matches between the objects of two label planes.

    Pairs are taken greedily from the highest IoU down; a pair needs an IoU of at
    least `iou_threshold`.

    Returns
    -------
    numpy.ndarray
        (K, 2) int64 pairs ``(id in a, id in b)``.
    """
    ids_a, ids_b, iou = mask_iou(a, b)
    rows, cols = np.nonzero(iou >= iou_threshold)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_a, used_b, pairs = set(), set(), []
    for r, c in zip(rows[order], cols[order]):
        if r not in used_a and c not in used_b:
            used_a.add(r)
            used_b.add(c)
            pairs.append((ids_a[r], ids_b[c]))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def neighbour_pairs(stack_shape: Sequence[int], axes: Sequence[int] | None = None) -> Iterator[tuple[int, int]]:
    """Flat indices of every pair of planes that are neighbours along one of `axes`."""
    stack_shape = tuple(stack_shape)
    axes = range(len(stack_shape)) if axes is None else axes
    flat = np.arange(int(np.prod(stack_shape, dtype=np.int64))).reshape(stack_shape)
    for axis in axes:
        before = np.delete(flat, -1, axis=axis).ravel()
        after = np.delete(flat, 0, axis=axis).ravel()
        yield from zip(before.tolist(), after.tolist())


def neighbour_triples(
    stack_shape: Sequence[int], axes: Sequence[int] | None = None
) -> Iterator[tuple[int, int, int]]:
    """Flat indices ``(before, plane, after)`` of every three consecutive planes along one of `axes`."""
    stack_shape = tuple(stack_shape)
    axes = range(len(stack_shape)) if axes is None else axes
    flat = np.arange(int(np.prod(stack_shape, dtype=np.int64))).reshape(stack_shape)
    for axis in axes:
        n = stack_shape[axis]
        if n < 3:
            continue
        before = np.take(flat, range(0, n - 2), axis=axis).ravel()
        middle = np.take(flat, range(1, n - 1), axis=axis).ravel()
        after = np.take(flat, range(2, n), axis=axis).ravel()
        yield from zip(before.tolist(), middle.tolist(), after.tolist())


@dataclass(frozen=True)
class Gap:
    """An object on the planes `before` and `after` of `plane` that `plane` lacks.

    Attributes
    ----------
    plane, before, after : int
        Flat (C-order) plane indices.
    id_before, id_after : int
        The object's per-plane ids on `before` and `after`.
    box_xyxy : numpy.ndarray
        (4,) float32 mean of its boxes on `before` and `after` (x0, y0, x1, y1, pixel edges):
        the box prompt for `plane`.
    """

    plane: int
    before: int
    after: int
    id_before: int
    id_after: int
    box_xyxy: np.ndarray


def find_gaps(planes: np.ndarray, iou_threshold: float = 0.5, axes: Sequence[int] | None = None) -> list[Gap]:
    """Objects present on the planes on both sides of a plane and missing on it.

    An object of plane ``k - 1`` that matches nothing on plane ``k`` and an object of
    plane ``k + 1`` that matches nothing on plane ``k`` form a gap when they match each
    other (mask IoU at least `iou_threshold`, one-to-one as in :func:`match_objects`).

    Parameters
    ----------
    planes : numpy.ndarray
        (*stack_shape, H, W) integer labels, each plane numbered on its own.
    iou_threshold : float
        Least mask IoU for two objects to be the same object (as in :func:`link_planes`).
    axes : sequence of int, optional
        Stack axes to look along (default: all).

    Returns
    -------
    list of Gap
        In order of the axes, then of the planes.
    """
    planes = np.asarray(planes)
    if planes.ndim < 2 or planes.dtype.kind not in "iub":
        raise InputError(f"expected integer label planes (..., H, W), got {planes.dtype} of shape {planes.shape}")
    flat = planes.reshape(-1, *planes.shape[-2:])
    gaps = []
    for before, plane, after in neighbour_triples(planes.shape[:-2], axes):
        lost_before = _unmatched(flat[before], flat[plane], iou_threshold)
        lost_after = _unmatched(flat[after], flat[plane], iou_threshold)
        if not (lost_before.any() and lost_after.any()):
            continue
        kept_before = np.where(lost_before, flat[before], 0)
        kept_after = np.where(lost_after, flat[after], 0)
        for id_before, id_after in match_objects(kept_before, kept_after, iou_threshold):
            box = (_box_of(flat[before] == id_before) + _box_of(flat[after] == id_after)) / 2
            gaps.append(Gap(plane, before, after, int(id_before), int(id_after), box.astype(np.float32)))
    return gaps


def _unmatched(labels: np.ndarray, other: np.ndarray, iou_threshold: float) -> np.ndarray:
    """(H, W) bool: the pixels of the objects of `labels` that match no object of `other`."""
    matched = match_objects(labels, other, iou_threshold)[:, 0]
    return (labels > 0) & ~np.isin(labels, matched)


def _box_of(mask: np.ndarray) -> np.ndarray:
    """(4,) float64 x0, y0, x1, y1 (pixel edges) of the True pixels."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float64)


def link_planes(
    planes: np.ndarray, iou_threshold: float = 0.5, axes: Sequence[int] | None = None
) -> LinkedStack:
    """Give objects that overlap in neighbouring planes one id.

    Parameters
    ----------
    planes : numpy.ndarray
        (*stack_shape, H, W) integer labels, each plane numbered on its own.
    iou_threshold : float
        Least mask IoU for two objects in neighbouring planes to be the same object.
    axes : sequence of int, optional
        Stack axes to link along (default: all, e.g. z and t of a (T, Z, Y, X) stack).

    Returns
    -------
    LinkedStack
        Ids are numbered 1..N in order of first appearance (plane by plane, then by
        per-plane id).
    """
    planes = np.asarray(planes)
    if planes.ndim < 2 or planes.dtype.kind not in "iub":
        raise InputError(f"expected integer label planes (..., H, W), got {planes.dtype} of shape {planes.shape}")
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise InputError(f"the linking IoU threshold must be in (0, 1], not {iou_threshold}")
    stack_shape = planes.shape[:-2]
    flat = planes.reshape(-1, *planes.shape[-2:])
    ids_per_plane = [np.unique(p[p != 0]).astype(np.int64) for p in flat]
    plane = np.repeat(np.arange(len(flat), dtype=np.int64), [len(ids) for ids in ids_per_plane])
    local_id = np.concatenate([*ids_per_plane, np.zeros(0, np.int64)])
    node_of = {(int(p), int(i)): n for n, (p, i) in enumerate(zip(plane, local_id))}
    parent = np.arange(len(local_id))
    for first, second in neighbour_pairs(stack_shape, axes):
        for id_a, id_b in match_objects(flat[first], flat[second], iou_threshold):
            _union(parent, node_of[first, int(id_a)], node_of[second, int(id_b)])
    global_id = _number_roots(parent)
    return LinkedStack(_relabel(flat, plane, local_id, global_id).reshape(planes.shape), plane, local_id, global_id)


def _find(parent: np.ndarray, node: int) -> int:
    while parent[node] != node:
        parent[node] = parent[parent[node]]
        node = parent[node]
    return node


def _union(parent: np.ndarray, a: int, b: int) -> None:
    root_a, root_b = _find(parent, a), _find(parent, b)
    if root_a != root_b:
        parent[max(root_a, root_b)] = min(root_a, root_b)


def _number_roots(parent: np.ndarray) -> np.ndarray:
    """1-based id of each node's set, in order of the sets' first node."""
    roots = np.array([_find(parent, n) for n in range(len(parent))], dtype=np.int64)
    _, first_index, inverse = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.empty(len(first_index), np.int64)
    rank[np.argsort(first_index, kind="stable")] = np.arange(1, len(first_index) + 1)
    return rank[inverse].reshape(-1)


def _relabel(flat: np.ndarray, plane: np.ndarray, local_id: np.ndarray, global_id: np.ndarray) -> np.ndarray:
    out = np.zeros(flat.shape, np.int32)
    for p in range(len(flat)):
        mine = plane == p
        if mine.any():
            lookup = np.zeros(int(local_id[mine].max()) + 1, np.int32)
            lookup[local_id[mine]] = global_id[mine]
            out[p] = lookup[np.where(flat[p] > 0, flat[p], 0)]
    return out


def linked_table(link: LinkedStack, plane_tables: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One row per linked object from the per-plane object tables.

    Parameters
    ----------
    link : LinkedStack
        Output of :func:`link_planes`.
    plane_tables : sequence of dict
        For each plane (flat order), columns ``id`` and optionally ``score``,
        ``predicted_iou``, ``stability``, ``visible_area`` (e.g. ``Segmentation.table()``).

    Returns
    -------
    dict
        ``id``; ``score`` (best detector score), ``predicted_iou`` and ``stability``
        (means over the planes), ``area`` (pixels visible in all planes together),
        ``first_plane``, ``last_plane`` (flat plane indices) and ``n_planes``.
    """
    n = link.n_objects
    columns: dict[str, np.ndarray] = {"id": np.arange(1, n + 1, dtype=np.int32)}
    values = {name: np.full(len(link.global_id), np.nan) for name in ("score", "predicted_iou", "stability")}
    area = np.zeros(len(link.global_id), np.int64)
    for p, table in enumerate(plane_tables):
        rows = np.flatnonzero(link.plane == p)
        if not len(rows):
            continue
        where = {int(i): k for k, i in enumerate(np.asarray(table["id"]))}
        picks = np.array([where.get(int(i), -1) for i in link.local_id[rows]])
        found = picks >= 0
        for name, column in values.items():
            if name in table:
                column[rows[found]] = np.asarray(table[name], np.float64)[picks[found]]
        if "visible_area" in table:
            area[rows[found]] = np.asarray(table["visible_area"], np.int64)[picks[found]]
    index = link.global_id - 1
    columns["score"] = _reduce(index, values["score"], n, np.fmax)
    columns["predicted_iou"] = _mean(index, values["predicted_iou"], n)
    columns["stability"] = _mean(index, values["stability"], n)
    columns["area"] = np.bincount(index, weights=area, minlength=n).astype(np.int64)
    columns["first_plane"] = _reduce(index, link.plane.astype(np.float64), n, np.fmin, np.inf).astype(np.int64)
    columns["last_plane"] = _reduce(index, link.plane.astype(np.float64), n, np.fmax, -np.inf).astype(np.int64)
    columns["n_planes"] = np.bincount(index, minlength=n).astype(np.int64)
    return columns


def _reduce(index: np.ndarray, values: np.ndarray, n: int, ufunc, start: float = np.nan) -> np.ndarray:
    out = np.full(n, start)
    ufunc.at(out, index, values)
    return out


def _mean(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    finite = np.isfinite(values)
    total = np.bincount(index[finite], weights=values[finite], minlength=n)
    count = np.bincount(index[finite], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)

