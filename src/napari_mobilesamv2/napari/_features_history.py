"""Undo and redo of a run also restore the Labels layer's features table.

napari's undo restores the pixels of a Labels layer, not its ``features``. After a
run writes into a layer (one undo step), the table before and after the run are
remembered with that undo step; the layer's ``undo``/``redo`` then put the matching
table back, so undone objects leave the table (and a CSV export of it).
"""

from __future__ import annotations

import weakref

import numpy as np
import pandas as pd
from napari.layers import Labels

# layer -> {id(history item): (history item, table before, table after)}
_records: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def last_step(layer: Labels):
    """The layer's newest undo step (an opaque object), or None."""
    history = getattr(layer, "_undo_history", None)
    return history[-1] if history else None


def remember_run(layer: Labels, step_before, table_before: pd.DataFrame) -> None:
    """Tie the layer's newest undo step (written by a run) to the tables before and after it.

    `step_before` is :func:`last_step` taken before the run wrote; when no new step was
    made (nothing changed) there is nothing to undo and nothing is remembered.
    """
    step = last_step(layer)
    if step is None or step is step_before:
        return
    records = _records.setdefault(layer, {})
    records[id(step)] = (step, table_before, pd.DataFrame(layer.features).copy())
    _track(layer)


def _track(layer: Labels) -> None:
    if getattr(layer, "_mobilesamv2_tracked", False):
        return
    undo, redo = layer.undo, layer.redo

    def tracked_undo() -> None:
        step = last_step(layer)
        undo()
        _swap(layer, step, getattr(layer, "_redo_history", None), use_before=True)

    def tracked_redo() -> None:
        history = getattr(layer, "_redo_history", None)
        step = history[-1] if history else None
        redo()
        _swap(layer, step, getattr(layer, "_undo_history", None), use_before=False)

    layer.undo, layer.redo = tracked_undo, tracked_redo
    layer._mobilesamv2_tracked = True


def _swap(layer: Labels, step, moved_to, *, use_before: bool) -> None:
    """After an undo (redo) of `step`: put the table before (after) the run back, and
    re-key the record on the step's new entry in the other history."""
    records = _records.get(layer, {})
    record = records.pop(id(step), None) if step is not None else None
    if record is None or record[0] is not step:
        if record is not None:
            records[id(step)] = record
        if use_before:
            prune_missing(layer)  # someone else's step: at least drop rows of vanished objects
        return
    _, before, after = record
    layer.features = (before if use_before else after).copy()
    if moved_to:
        records[id(moved_to[-1])] = (moved_to[-1], before, after)


def prune_missing(layer: Labels) -> None:
    """Drop feature rows whose label no longer occurs in the layer."""
    features = pd.DataFrame(layer.features)
    if not len(features) or "index" not in features:
        return
    present = np.unique(np.asarray(layer.data))
    kept = features[features["index"].isin(present)]
    if len(kept) != len(features):
        layer.features = kept.reset_index(drop=True)
