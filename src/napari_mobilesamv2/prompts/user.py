"""Prompts a user gives: points and boxes, parsed into objects and checked against the image.

Values that cannot be prompts (wrong shapes, NaN, points outside the image, a box with no
area) raise :class:`~napari_mobilesamv2.errors.InputError` with a message saying what to fix.
"""

from __future__ import annotations

import logging

import numpy as np

from ..decode.masks import MaskCrop
from ..decode.prompted import ObjectPrompt
from ..errors import InputError

log = logging.getLogger(__name__)


def objects_from_prompts(
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    point_groups: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
) -> list[ObjectPrompt]:
    """Group point and box prompts into objects.

    * Each box is one object.
    * Without `point_groups`, each positive point (label 1) is one object and every
      negative point (label 0) is shared by all point objects.
    * With `point_groups` (one integer per point), the points of a group form one
      object; a group needs at least one positive point.

    Parameters
    ----------
    points : array-like, optional
        (N, 2) x, y image coordinates.
    point_labels : array-like, optional
        (N,) 1 (object) or 0 (background) per point; all 1 when not given.
    point_groups : array-like, optional
        (N,) object id of each point.
    boxes : array-like, optional
        (M, 4) x0, y0, x1, y1 boxes.

    Returns
    -------
    list of ObjectPrompt
        Point objects first (in order of their first point), then one per box.

    Raises
    ------
    InputError
        Coordinates that are not finite numbers, or labels/groups that do not match the points.
    """
    objects: list[ObjectPrompt] = []
    if points is not None and len(points):
        points = coordinates(points, 2, "points", "x, y")
        labels = np.ones(len(points), np.int64) if point_labels is None else np.asarray(point_labels, np.int64)
        if labels.shape != (len(points),) or not np.isin(labels, (0, 1)).all():
            raise InputError("point_labels must hold one 0 (background) or 1 (object) per point")
        if point_groups is None:
            negative = points[labels == 0]
            for p in points[labels == 1]:
                pts = np.concatenate([p[None], negative])
                objects.append(ObjectPrompt(pts, np.r_[1, np.zeros(len(negative), np.int64)]))
        else:
            groups = np.asarray(point_groups).reshape(-1)
            if groups.shape != (len(points),):
                raise InputError("point_groups must hold one group id per point")
            for g in dict.fromkeys(groups.tolist()):
                member = groups == g
                if labels[member].max() == 1:
                    objects.append(ObjectPrompt(points[member], labels[member]))
    if boxes is not None:
        for box in coordinates(boxes, 4, "boxes", "x0, y0, x1, y1"):
            objects.append(ObjectPrompt(box=box))
    return objects


def coordinates(values: object, width: int, what: str, layout: str) -> np.ndarray:
    """`values` as an (N, `width`) float32 array of finite numbers.

    Parameters
    ----------
    values : array-like
        The user's numbers, any shape with a multiple of `width` elements.
    width : int
        Numbers per item (2 for points, 4 for boxes).
    what, layout : str
        Name of the values and their layout (e.g. ``"boxes"``, ``"x0, y0, x1, y1"``) for messages.

    Raises
    ------
    InputError
        Not numbers, not a multiple of `width` of them, or NaN/infinity among them.
    """
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numbers ({layout}), not {values!r:.60}") from None
    if array.size % width:
        raise InputError(f"{what} need {width} numbers each ({layout}); got an array of shape {array.shape}")
    array = array.reshape(-1, width)
    if not np.isfinite(array).all():
        raise InputError(f"{what} must be finite numbers ({layout}); found NaN or infinity")
    return array


def check_fraction(name: str, value: float) -> None:
    """Raise :class:`InputError` unless `value` (the setting called `name`) lies in [0, 1]."""
    if not 0.0 <= float(value) <= 1.0:
        raise InputError(f"{name} must be between 0 and 1, not {value}")


def check_boxes(boxes: np.ndarray, shape: tuple[int, int], *, warn: bool = True) -> np.ndarray:
    """Clip boxes to the image, order their corners, drop the empty ones.

    Parameters
    ----------
    boxes : array-like
        (N, 4) x0, y0, x1, y1 boxes in image pixels, corners in any order.
    shape : tuple of int
        (H, W) of the image.
    warn : bool
        Log a warning naming how many boxes were dropped.

    Returns
    -------
    numpy.ndarray
        (M, 4) float32 boxes with x0 < x1 and y0 < y1, each at least one pixel wide and high.
    """
    boxes = coordinates(boxes, 4, "boxes", "x0, y0, x1, y1")
    h, w = shape
    x = np.sort(np.clip(boxes[:, [0, 2]], 0, w), axis=1)
    y = np.sort(np.clip(boxes[:, [1, 3]], 0, h), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    empty = (boxes[:, 2] - boxes[:, 0] < 1) | (boxes[:, 3] - boxes[:, 1] < 1)
    if empty.any() and warn:
        log.warning("ignoring %d box(es) with no area inside the %dx%d (width x height) image", int(empty.sum()), w, h)
    return boxes[~empty]


def check_object(obj: ObjectPrompt, shape: tuple[int, int]) -> ObjectPrompt:
    """`obj` with float32 points inside the (H, W) image and its box clipped to it.

    Raises
    ------
    InputError
        A point lies outside the image, the box has no area inside it, or the mask
        is not the image's size.
    """
    h, w = shape
    points = coordinates(obj.points, 2, "points", "x, y")
    inside = (points[:, 0] >= 0) & (points[:, 0] < w) & (points[:, 1] >= 0) & (points[:, 1] < h)
    if not inside.all():
        raise InputError(f"{int((~inside).sum())} point(s) lie outside the {w}x{h} (width x height) image")
    box = None
    if obj.box is not None:
        checked = check_boxes(obj.box, shape, warn=False)
        if len(checked) == 0:
            box = ", ".join(f"{v:g}" for v in np.asarray(obj.box, np.float64).reshape(-1))
            raise InputError(f"the box ({box}) has no area inside the {w}x{h} (width x height) image")
        box = checked[0]
    mask = None
    if obj.mask is not None:
        mask = np.asarray(obj.mask, bool)
        if mask.shape != (h, w):
            raise InputError(f"the mask prompt has shape {mask.shape}, but the image is {h}x{w} (height x width)")
    return ObjectPrompt(points, np.asarray(obj.labels, np.int64).reshape(-1), box, mask)


def prompt_box(obj: ObjectPrompt, crop: MaskCrop) -> np.ndarray:
    """(4,) float32 box reported for a prompted object: its own box, else its mask's box."""
    return np.asarray(obj.box if obj.box is not None else crop.bbox_xyxy, np.float32)
