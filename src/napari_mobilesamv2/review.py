"""Reviewing the objects of a segmentation: rank, filter, remove, merge and split them.

A *table* is a mapping of column name -> (N,) array with one row per object, as
:meth:`~napari_mobilesamv2.results.Segmentation.table` returns it or as a napari
Labels layer's ``features`` holds it (a pandas DataFrame works as is). An object's
label value is in its ``index`` column (napari's) or, without one, its ``id`` column.
Label arrays may have any number of dimensions; functions here never modify their
inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import InputError

#: the columns objects can be ranked and filtered by -> their help text
REVIEW_COLUMNS: dict[str, str] = {
    "score": "detector confidence of the object's box (empty for grid and hand-drawn prompts)",
    "predicted_iou": "the mask decoder's estimate of how well the mask fits the object (0 to 1)",
    "stability": "how little the mask changes when its threshold moves (1 = not at all)",
    "area": "pixels the object has in the labels (voxels for objects linked through a stack)",
}
#: readable names of :data:`REVIEW_COLUMNS`
COLUMN_NAMES: dict[str, str] = {
    "score": "detector score", "predicted_iou": "predicted IoU", "stability": "stability", "area": "area",
}
DEFAULT_RANK_COLUMN = "score"
#: ranking orders -> their help text
ORDERS: dict[str, str] = {
    "lowest first": "doubtful objects first: the lowest values come first",
    "highest first": "the best objects first: the highest values come first",
}
DEFAULT_ORDER = "lowest first"
#: how :func:`merge_rows` combines two rows, per column
MERGE_RULES = (
    "score: the higher of the two; predicted_iou and stability: the mean weighted by area; "
    "area: the sum; slice: both, separated by '; ' when they differ; other columns: those of the object that is kept"
)

Table = Mapping[str, Any]


def id_column(table: Table) -> str:
    """The column of `table` that holds label values: ``index`` if present, else ``id``.

    Raises
    ------
    InputError
        If the table has neither.
    """
    for name in ("index", "id"):
        if name in table:
            return name
    raise InputError("the object table has no 'index' or 'id' column; run Segment everything to make one")


def table_ids(table: Table) -> np.ndarray:
    """(N,) int64 label values of the rows of `table`."""
    return np.asarray(table[id_column(table)], dtype=np.int64)


def _values(table: Table, column: str) -> np.ndarray:
    if column not in table:
        known = ", ".join(c for c in REVIEW_COLUMNS if c in table) or "none"
        raise InputError(f"the object table has no column {column!r}; columns to use: {known}")
    return np.asarray(table[column], dtype=np.float64)


def rank_objects(
    table: Table, column: str, *, order: str = DEFAULT_ORDER, ids: Iterable[int] | None = None
) -> np.ndarray:
    """Label values of the objects in review order.

    Parameters
    ----------
    table : mapping of str to array
        One row per object.
    column : str
        Column to rank by, e.g. ``"score"`` or ``"predicted_iou"``.
    order : str
        ``"lowest first"`` or ``"highest first"`` (:data:`ORDERS`).
    ids : iterable of int, optional
        Rank only these objects (e.g. those kept by :func:`filter_ids`); others are left out.

    Returns
    -------
    numpy.ndarray
        (M,) int64 label values. Objects whose value is NaN come last; equal values
        keep the order of their label values.
    """
    if order not in ORDERS:
        raise InputError(f"order must be one of {', '.join(map(repr, ORDERS))}, not {order!r}")
    labels = table_ids(table)
    values = _values(table, column)
    rows = np.arange(len(labels)) if ids is None else np.flatnonzero(np.isin(labels, np.fromiter(ids, np.int64)))
    labels, values = labels[rows], values[rows]
    key = -values if order == "highest first" else values
    key = np.where(np.isnan(key), np.inf, key)
    # lexsort: the last key is the primary one; NaN (now inf) sorts after every number
    ranked = np.lexsort((labels, np.isnan(values), key))
    return labels[ranked]


def column_range(table: Table, column: str) -> tuple[float, float] | None:
    """(min, max) of the finite values of a column, or None when it has none."""
    values = _values(table, column)
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else None


def filter_ids(table: Table, ranges: Mapping[str, tuple[float | None, float | None]]) -> np.ndarray:
    """Label values of the objects whose values lie in every given range.

    Parameters
    ----------
    table : mapping of str to array
        One row per object.
    ranges : mapping of str to (low, high)
        Inclusive range per column; ``None`` leaves that end open. A NaN value (e.g.
        the detector score of a hand-drawn object) passes: there is nothing to judge.

    Returns
    -------
    numpy.ndarray
        (M,) int64 label values, in table order.
    """
    keep = np.ones(len(table_ids(table)), dtype=bool)
    for column, (low, high) in ranges.items():
        values = _values(table, column)
        known = ~np.isnan(values)
        if low is not None:
            keep &= ~known | (values >= low)
        if high is not None:
            keep &= ~known | (values <= high)
    return table_ids(table)[keep]


# -- label arrays ------------------------------------------------------------------------------


def relabel_edit(labels: np.ndarray, mapping: Mapping[int, int]) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The pixels whose label is a key of `mapping`, and their new values.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label array, any number of dimensions.
    mapping : mapping of int to int
        Old label value -> new value (0 removes the object).

    Returns
    -------
    index : tuple of numpy.ndarray
        ``np.nonzero``-style index of the pixels that change.
    values : numpy.ndarray
        Their new values, in the dtype of `labels`.
    """
    labels = np.asarray(labels)
    old = np.fromiter(mapping.keys(), np.int64, len(mapping))
    new = np.fromiter(mapping.values(), np.int64, len(mapping))
    _check_fits(labels, new)
    index = np.nonzero(np.isin(labels, old))
    found = labels[index].astype(np.int64)
    order = np.argsort(old)
    values = new[order][np.searchsorted(old[order], found)]
    return index, values.astype(labels.dtype)


def _check_fits(labels: np.ndarray, values: np.ndarray) -> None:
    if labels.dtype.kind not in "iu":
        raise InputError(f"labels must hold integers, not {labels.dtype}")
    info = np.iinfo(labels.dtype)
    if values.size and (values.min() < max(info.min, 0) or values.max() > info.max):
        raise InputError(f"label values {values.min()}..{values.max()} do not fit {labels.dtype} labels")


def remove_ids(labels: np.ndarray, ids: Iterable[int]) -> np.ndarray:
    """A copy of `labels` with the objects `ids` set to background (0)."""
    return _applied(labels, relabel_edit(labels, {int(i): 0 for i in ids}))


def merge_ids(labels: np.ndarray, keep: int, merged: int) -> np.ndarray:
    """A copy of `labels` where object `merged` becomes part of object `keep`."""
    if int(keep) == int(merged) or int(keep) <= 0 or int(merged) <= 0:
        raise InputError(f"merging needs two different objects (ids above 0), got {keep} and {merged}")
    return _applied(labels, relabel_edit(labels, {int(merged): int(keep)}))


def _applied(labels: np.ndarray, edit: tuple[tuple[np.ndarray, ...], np.ndarray]) -> np.ndarray:
    out = np.array(labels, copy=True)
    out[edit[0]] = edit[1]
    return out


def split_object(
    labels: np.ndarray, object_id: int, parts: np.ndarray, first_id: int
) -> tuple[np.ndarray, dict[int, int]]:
    """Cut the parts of one object out as new objects.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label array.
    object_id : int
        The object to split.
    parts : numpy.ndarray
        Same shape as `labels`; each value above 0 marks one part (e.g. the masks of
        new box prompts). Only its pixels inside `object_id` count: a split never
        grows an object or touches another one.
    first_id : int
        Label value of the first new object; the next ones follow in part order.

    Returns
    -------
    labels : numpy.ndarray
        A copy (upcast to int32 or int64 when the new ids do not fit the dtype).
        Pixels of the object outside every part keep `object_id`.
    id_map : dict of int to int
        Part value -> new label value, for the parts that cover some of the object.

    Raises
    ------
    InputError
        If the shapes differ, the object is absent or no part overlaps it.
    """
    labels, parts = np.asarray(labels), np.asarray(parts)
    if labels.shape != parts.shape:
        raise InputError(f"the parts have shape {parts.shape} but the labels have shape {labels.shape}")
    inside = labels == object_id
    if not inside.any():
        raise InputError(f"object {object_id} is not in these labels (on this plane); move to a plane that shows it")
    cut = inside & (parts > 0)
    found = np.unique(parts[cut])
    if not found.size:
        raise InputError(
            f"no box covers object {object_id} here: draw the boxes over parts of the object on the plane shown"
        )
    id_map = {int(p): int(first_id) + k for k, p in enumerate(found)}
    top = int(first_id) + len(found) - 1
    dtype = labels.dtype if top <= np.iinfo(labels.dtype).max else np.dtype(np.int64 if top > 2**31 - 1 else np.int32)
    out = labels.astype(dtype, copy=True)
    lookup = np.zeros(int(found.max()) + 1, dtype=np.int64)
    lookup[found] = list(id_map.values())
    out[cut] = lookup[parts[cut]]
    return out, id_map


# -- tables -------------------------------------------------------------------------------------


def as_columns(table: Table) -> dict[str, np.ndarray]:
    """A dict of numpy arrays with the columns of `table` (e.g. a DataFrame)."""
    return {str(name): np.asarray(table[name]) for name in table}


def drop_rows(table: Table, ids: Iterable[int]) -> dict[str, np.ndarray]:
    """The rows of `table` except those of the objects `ids`."""
    keep = ~np.isin(table_ids(table), np.fromiter(ids, np.int64))
    return {name: values[keep] for name, values in as_columns(table).items()}


def merge_rows(table: Table, keep: int, merged: int) -> dict[str, np.ndarray]:
    """The table after object `merged` joined object `keep`: one row for both.

    The kept row combines both rows by :data:`MERGE_RULES`; the row of `merged`
    goes. NaN values are skipped (the other row's value is used).
    """
    columns = as_columns(table)
    labels = table_ids(table)
    rows = [np.flatnonzero(labels == int(i)) for i in (keep, merged)]
    missing = [int(i) for i, r in zip((keep, merged), rows) if not r.size]
    if missing:
        raise InputError(f"object(s) {missing} have no row in the object table")
    a, b = int(rows[0][0]), int(rows[1][0])
    weights = np.ones(2) if "area" not in columns else np.asarray(columns["area"], np.float64)[[a, b]]
    for name, values in columns.items():
        if name == "slice" and values[a] != values[b]:
            values = values.astype(object, copy=True)
            values[a] = f"{values[a]}; {values[b]}"
            columns[name] = values
        if values.dtype.kind not in "biuf":
            continue
        pair = values[[a, b]].astype(np.float64)
        if name == "area":
            combined = pair.sum()
        elif name == "score":
            combined = np.nan if np.isnan(pair).all() else np.nanmax(pair)
        elif name in ("predicted_iou", "stability"):
            known = ~np.isnan(pair)
            combined = np.average(pair[known], weights=weights[known] + 1e-12) if known.any() else np.nan
        else:
            continue
        values = values.astype(np.result_type(values.dtype, np.asarray(combined).dtype), copy=True)
        values[a] = combined
        columns[name] = values
    return {name: np.delete(values, b) for name, values in columns.items()}


def concat_rows(table: Table, rows: Mapping[str, Sequence]) -> dict[str, np.ndarray]:
    """`table` with `rows` appended; columns missing on one side are filled with NaN (or "")."""
    columns, extra = as_columns(table), {k: np.asarray(v) for k, v in rows.items()}
    n_old = len(next(iter(columns.values()), []))
    n_new = len(next(iter(extra.values()), []))
    out = {}
    for name in dict.fromkeys([*columns, *extra]):
        old = columns.get(name, _blank(extra.get(name), n_old))
        new = extra.get(name, _blank(columns.get(name), n_new))
        numeric = old.dtype.kind in "biuf" and new.dtype.kind in "biuf"
        out[name] = np.concatenate([old, new] if numeric or old.dtype == new.dtype else
                                   [old.astype(object), new.astype(object)])
    return out


def _blank(like: np.ndarray | None, n: int) -> np.ndarray:
    if like is not None and like.dtype.kind in "OSU":
        return np.full(n, "", dtype=object)
    return np.full(n, np.nan)
