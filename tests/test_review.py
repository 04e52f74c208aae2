"""Ranking, filtering, removing, merging and splitting objects (napari_mobilesamv2.review)."""

import numpy as np
import pandas as pd
import pytest

from napari_mobilesamv2 import InputError
from napari_mobilesamv2.review import (
    column_range,
    concat_rows,
    drop_rows,
    filter_ids,
    merge_ids,
    merge_rows,
    rank_objects,
    relabel_edit,
    remove_ids,
    split_object,
    table_ids,
)


def table():
    return {
        "index": np.array([1, 2, 3, 4], np.int64),
        "score": np.array([0.8, np.nan, 0.3, 0.8], np.float32),
        "predicted_iou": np.array([0.9, 0.7, 0.95, 0.5]),
        "stability": np.array([0.99, 0.9, 0.8, 0.97]),
        "area": np.array([10, 30, 20, 40], np.int64),
        "slice": np.array(["0", "1", "1", "2"], dtype=object),
    }


def labels():
    out = np.zeros((4, 6), np.uint8)
    out[0, :2] = 1
    out[1, :3] = 2
    out[2, 3:] = 3
    out[3, :] = 4
    out[0, 5] = 7  # an object without a row (painted by hand)
    return out


def test_ranking_puts_nan_last_and_breaks_ties_by_id():
    np.testing.assert_array_equal(rank_objects(table(), "score"), [3, 1, 4, 2])
    np.testing.assert_array_equal(rank_objects(table(), "score", order="highest first"), [1, 4, 3, 2])
    np.testing.assert_array_equal(rank_objects(table(), "area", order="highest first"), [4, 2, 3, 1])
    np.testing.assert_array_equal(rank_objects(table(), "predicted_iou", ids=[2, 3, 4]), [4, 2, 3])


def test_ranking_reads_a_dataframe_and_its_id_column():
    frame = pd.DataFrame(table()).rename(columns={"index": "id"})
    np.testing.assert_array_equal(rank_objects(frame, "stability"), [3, 2, 4, 1])
    np.testing.assert_array_equal(table_ids(frame), [1, 2, 3, 4])


def test_ranking_refuses_unknown_columns_and_orders():
    with pytest.raises(InputError, match="no column 'tile'.*score, predicted_iou, stability, area"):
        rank_objects(table(), "tile")
    with pytest.raises(InputError, match="order must be one of"):
        rank_objects(table(), "score", order="up")
    with pytest.raises(InputError, match="no 'index' or 'id' column"):
        rank_objects({"score": np.zeros(2)}, "score")


def test_column_range_skips_nan():
    assert column_range(table(), "score") == pytest.approx((0.3, 0.8))
    assert column_range(table(), "area") == (10.0, 40.0)
    assert column_range({"index": np.arange(2), "score": np.full(2, np.nan)}, "score") is None


def test_filters_keep_objects_inside_every_range_and_nan_passes():
    np.testing.assert_array_equal(filter_ids(table(), {}), [1, 2, 3, 4])
    np.testing.assert_array_equal(filter_ids(table(), {"score": (0.5, None)}), [1, 2, 4])
    np.testing.assert_array_equal(filter_ids(table(), {"score": (0.5, 1.0), "area": (15, 35)}), [2])
    np.testing.assert_array_equal(filter_ids(table(), {"predicted_iou": (None, 0.8)}), [2, 4])


def test_remove_and_merge_touch_only_the_named_objects():
    before = labels()
    removed = remove_ids(before, [2, 4])
    expected = before.copy()
    expected[(before == 2) | (before == 4)] = 0
    np.testing.assert_array_equal(removed, expected)
    assert removed.dtype == np.uint8
    merged = merge_ids(before, 1, 3)
    expected = before.copy()
    expected[before == 3] = 1
    np.testing.assert_array_equal(merged, expected)
    np.testing.assert_array_equal(before, labels())  # inputs untouched
    with pytest.raises(InputError, match="two different objects"):
        merge_ids(before, 2, 2)


def test_relabel_edit_lists_the_changed_pixels_only():
    index, values = relabel_edit(labels(), {3: 0, 7: 2})
    assert sorted(zip(*index)) == [(0, 5), (2, 3), (2, 4), (2, 5)]
    order = np.lexsort(index[::-1])
    np.testing.assert_array_equal(values[order], [2, 0, 0, 0])
    assert values.dtype == np.uint8
    with pytest.raises(InputError, match="do not fit uint8"):
        relabel_edit(labels(), {3: 300})


def test_split_cuts_parts_inside_the_object_only():
    base = labels()
    parts = np.zeros_like(base, np.int32)
    parts[:, 4:] = 5  # over objects 3, 4 and 7
    parts[3, :2] = 2
    out, id_map = split_object(base, 4, parts, first_id=8)
    assert id_map == {2: 8, 5: 9}
    expected = base.copy()
    expected[3, :2] = 8
    expected[3, 4:] = 9
    np.testing.assert_array_equal(out, expected)  # objects 3 and 7 untouched
    out, _ = split_object(base, 4, parts, first_id=300)
    assert out.dtype == np.int32 and out[3, 0] == 300


def test_split_explains_what_is_wrong():
    base = labels()
    with pytest.raises(InputError, match="no box covers object 1"):
        split_object(base, 1, np.zeros_like(base), 8)
    with pytest.raises(InputError, match="object 9 is not in these labels"):
        split_object(base, 9, np.ones_like(base), 10)
    with pytest.raises(InputError, match="shape"):
        split_object(base, 1, np.ones((2, 2)), 10)


def test_rows_are_dropped_and_merged():
    dropped = drop_rows(table(), [2, 3])
    np.testing.assert_array_equal(dropped["index"], [1, 4])
    np.testing.assert_array_equal(dropped["slice"], ["0", "2"])
    merged = merge_rows(table(), 4, 1)
    np.testing.assert_array_equal(merged["index"], [2, 3, 4])
    row = {name: values[2] for name, values in merged.items()}
    assert row["area"] == 50
    assert row["score"] == pytest.approx(0.8)
    assert row["predicted_iou"] == pytest.approx((0.5 * 40 + 0.9 * 10) / 50)
    assert row["stability"] == pytest.approx((0.97 * 40 + 0.99 * 10) / 50)
    assert row["slice"] == "2; 0"
    merged = merge_rows(table(), 2, 3)  # score NaN + 0.3 -> 0.3
    assert merged["score"][1] == pytest.approx(0.3)
    with pytest.raises(InputError, match=r"\[9\] have no row"):
        merge_rows(table(), 1, 9)


def test_concat_rows_fills_missing_columns():
    out = concat_rows(table(), {"index": [8], "score": [np.nan], "predicted_iou": [0.6], "area": [3]})
    np.testing.assert_array_equal(out["index"], [1, 2, 3, 4, 8])
    assert np.isnan(out["stability"][-1]) and out["slice"][-1] == ""
    assert out["area"].dtype.kind == "i" and out["area"][-1] == 3
