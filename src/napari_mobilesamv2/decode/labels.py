"""Label images from masks, and writing new labels into existing ones without losing data.

Overlap rule: masks are painted from the largest to the smallest area (ties in
prompt order), so a small object lying on a larger one stays visible, as in the
official MobileSAMv2 script. Mask ``i`` gets id ``i + 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from .masks import MaskCrop

ID_POLICIES = ("new_ids", "fill_background", "overwrite")


def paint_order(areas: np.ndarray) -> np.ndarray:
    """Indices from the largest to the smallest area; equal areas keep their order."""
    return np.argsort(-np.asarray(areas, dtype=np.int64), kind="stable")


def assemble_labels(
    crops: Sequence[MaskCrop], shape: tuple[int, int], ids: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Paint masks into one int32 label image.

    Parameters
    ----------
    crops : sequence of MaskCrop
        The masks.
    shape : tuple of int
        (H, W) of the image.
    ids : sequence of int, optional
        Id of each mask; ``1..N`` by default.

    Returns
    -------
    labels : numpy.ndarray
        (H, W) int32, 0 = background.
    visible_area : numpy.ndarray
        (N,) int64 pixels of each object left visible after overlaps.
    """
    ids = np.arange(1, len(crops) + 1) if ids is None else np.asarray(ids)
    labels = np.zeros(shape, dtype=np.int32)
    areas = np.array([c.area for c in crops], dtype=np.int64)
    for i in paint_order(areas):
        crop = crops[i]
        h, w = crop.shape
        region = labels[crop.top:crop.top + h, crop.left:crop.left + w]
        region[crop.mask] = ids[i]
    visible = np.bincount(labels.ravel(), minlength=int(ids.max(initial=0)) + 1)
    return labels, visible[ids] if len(ids) else np.zeros(0, np.int64)


def merge_labels(existing: np.ndarray, new: np.ndarray, policy: str = "new_ids") -> tuple[np.ndarray, dict[int, int]]:
    """Combine a new label image with a user's existing labels; `existing` is not modified.

    Policies
    --------
    ``"new_ids"``
        New objects get ids after ``existing.max()`` and are painted over.
    ``"fill_background"``
        Like ``new_ids`` but only pixels that are 0 in `existing` change.
    ``"overwrite"``
        New objects keep their own ids and are painted over; other pixels keep theirs.

    The result is upcast (int32, then int64) when the ids would not fit the
    existing dtype; ids never wrap around.

    Returns
    -------
    merged : numpy.ndarray
        A new array.
    id_map : dict
        New-result id -> id written into `merged`.
    """
    if policy not in ID_POLICIES:
        raise InputError(f"id policy must be one of {', '.join(ID_POLICIES)}, not {policy!r}")
    if existing.shape != new.shape:
        raise InputError(f"the labels have shape {existing.shape} but the result has shape {new.shape}")
    if existing.dtype.kind not in "iu" and existing.dtype != bool:
        raise InputError(f"labels must hold integers, not {existing.dtype}")
    new_ids = np.unique(new[new > 0])
    offset = 0 if policy == "overwrite" else int(existing.max(initial=0))
    id_map = {int(i): int(i) + offset for i in new_ids}
    top_id = max([offset, *id_map.values()], default=0)
    merged = existing.astype(_dtype_holding(existing.dtype, top_id), copy=True)
    write = new > 0
    if policy == "fill_background":
        write &= existing == 0
    merged[write] = new[write].astype(merged.dtype) + offset
    return merged, id_map


def _dtype_holding(dtype: np.dtype, top_id: int) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype != bool and top_id <= np.iinfo(dtype).max:
        return dtype
    return np.dtype(np.int32) if top_id <= np.iinfo(np.int32).max else np.dtype(np.int64)
