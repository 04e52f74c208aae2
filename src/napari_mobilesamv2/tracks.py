"""Tracks of a time series: where each linked object is at each time point.

A (T, Y, X) or (T, Z, Y, X) label stack whose objects keep one id through time (linked
by segment everything, or followed from a prompt) becomes one row per object and time
point: its centroid, its area and a score. The rows give a CSV table and the data of a
napari Tracks layer.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from .errors import InputError
from .io import atomic_write

TRACK_COLUMNS = ("id", "t", "z", "y", "x", "area", "score")


def tracks_table(labels: np.ndarray, scores: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One row per object and time point of a linked label stack.

    Parameters
    ----------
    labels : numpy.ndarray
        (T, Y, X) or (T, Z, Y, X) integer labels; the first axis is time, an object keeps
        its id through time, 0 = background. Read one time point at a time.
    scores : numpy.ndarray, optional
        (N,) score of object ``id`` at index ``id - 1`` (e.g. the best detector score, or the
        decoder's mean predicted IoU); NaN where not given.

    Returns
    -------
    dict of numpy.ndarray
        Columns :data:`TRACK_COLUMNS`, rows sorted by id, then t: ``id`` (int32), ``t``
        (int64), centroid ``z``, ``y``, ``x`` (float64 pixel indices; z is 0 for a
        (T, Y, X) series), ``area`` (pixels, or voxels summed over z; int64) and ``score``
        (float64).
    """
    if labels.ndim not in (3, 4) or np.dtype(labels.dtype).kind not in "iu":
        raise InputError(f"tracks need (T, Y, X) or (T, Z, Y, X) integer labels, got {labels.dtype} of shape "
                         f"{labels.shape}")
    scores = None if scores is None else np.asarray(scores, np.float64).reshape(-1)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in TRACK_COLUMNS}
    for t in range(labels.shape[0]):
        volume = np.asarray(labels[t])
        volume = volume[None] if volume.ndim == 2 else volume
        ids, area, centroid = _centroids(volume)
        columns["id"].append(ids.astype(np.int32))
        columns["t"].append(np.full(len(ids), t, np.int64))
        for name, values in zip("zyx", centroid):
            columns[name].append(values)
        columns["area"].append(area)
        score = np.full(len(ids), np.nan)
        if scores is not None:
            known = ids <= len(scores)
            score[known] = scores[ids[known] - 1]
        columns["score"].append(score)
    table = {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in columns.items()}
    order = np.lexsort((table["t"], table["id"]))
    return {name: values[order] for name, values in table.items()}


def _centroids(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """Ids present in a (Z, Y, X) volume, their voxel counts and mean z, y, x."""
    flat = volume.ravel().astype(np.int64)
    if flat.size and flat.min() < 0:
        raise InputError("labels must not be negative")
    counts = np.bincount(flat)
    ids = np.flatnonzero(counts)
    ids = ids[ids > 0]
    area = counts[ids].astype(np.int64)
    centroid = []
    for axis, n in enumerate(volume.shape):
        shape = [1, 1, 1]
        shape[axis] = n
        position = np.broadcast_to(np.arange(n, dtype=np.float64).reshape(shape), volume.shape).ravel()
        centroid.append(np.bincount(flat, weights=position, minlength=len(counts))[ids] / np.maximum(area, 1))
    return ids, area, tuple(centroid)


def tracks_data(table: dict[str, np.ndarray], with_z: bool) -> np.ndarray:
    """The data of a napari Tracks layer: (N, 4) ``id, t, y, x`` or (N, 5) ``id, t, z, y, x``, float64."""
    names = ("id", "t", "z", "y", "x") if with_z else ("id", "t", "y", "x")
    return np.stack([np.asarray(table[name], np.float64) for name in names], axis=1).reshape(-1, len(names))


def write_tracks_csv(path: str | os.PathLike, table: dict[str, np.ndarray]) -> None:
    """Write the table as CSV (header :data:`TRACK_COLUMNS`; an unknown score is an empty cell), atomically."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TRACK_COLUMNS)
        for row in zip(*(table[name] for name in TRACK_COLUMNS)):
            writer.writerow([_cell(value) for value in row])


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{float(value):.6g}"
    return str(int(value))
