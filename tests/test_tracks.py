"""Tracks of a time series: one row per object and time point."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_mobilesamv2 import InputError
from napari_mobilesamv2.tracks import TRACK_COLUMNS, tracks_data, tracks_table, write_tracks_csv


def moving_squares() -> np.ndarray:
    """(T=3, Y, X): object 1 moves right by 2 px per time point; object 2 appears at t = 1."""
    labels = np.zeros((3, 20, 30), np.int32)
    for t in range(3):
        labels[t, 2:6, 2 + 2 * t:6 + 2 * t] = 1  # 4 x 4, centre (3.5, 3.5 + 2t)
    labels[1:, 10:13, 20:22] = 2  # 3 x 2, centre (11, 20.5)
    return labels


def test_rows_per_object_and_time_point_with_centroids_and_areas():
    table = tracks_table(moving_squares(), scores=np.array([0.9, 0.4]))
    assert tuple(table) == TRACK_COLUMNS
    assert table["id"].tolist() == [1, 1, 1, 2, 2]
    assert table["t"].tolist() == [0, 1, 2, 1, 2]
    assert table["z"].tolist() == [0.0] * 5
    assert table["y"].tolist() == [3.5, 3.5, 3.5, 11.0, 11.0]
    assert table["x"].tolist() == [3.5, 5.5, 7.5, 20.5, 20.5]
    assert table["area"].tolist() == [16, 16, 16, 6, 6]
    assert table["score"].tolist() == [0.9, 0.9, 0.9, 0.4, 0.4]
    assert table["id"].dtype == np.int32 and table["area"].dtype == np.int64


def test_a_3d_time_series_has_z_centroids_and_voxel_areas():
    labels = np.zeros((2, 4, 10, 10), np.int32)
    labels[0, 1:3, 2:4, 2:4] = 5  # z 1..2
    labels[1, 2:4, 2:4, 2:4] = 5  # z 2..3
    table = tracks_table(labels)
    assert table["id"].tolist() == [5, 5] and table["z"].tolist() == [1.5, 2.5]
    assert table["area"].tolist() == [8, 8]
    assert np.isnan(table["score"]).all()
    data = tracks_data(table, with_z=True)
    assert data.tolist() == [[5, 0, 1.5, 2.5, 2.5], [5, 1, 2.5, 2.5, 2.5]]
    assert tracks_data(table, with_z=False).shape == (2, 4)


def test_the_csv_has_the_columns_and_empty_unknown_scores(tmp_path):
    table = tracks_table(moving_squares(), scores=np.array([0.9]))  # no score for object 2
    path = tmp_path / "tracks.csv"
    write_tracks_csv(path, table)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(TRACK_COLUMNS)
    assert rows[1] == ["1", "0", "0", "3.5", "3.5", "16", "0.9"]
    assert rows[4] == ["2", "1", "0", "11", "20.5", "6", ""]
    assert len(rows) == 6


def test_an_empty_series_gives_an_empty_table():
    table = tracks_table(np.zeros((2, 5, 5), np.int32))
    assert all(len(v) == 0 for v in table.values())


@pytest.mark.parametrize("labels", [np.zeros((5, 5), np.int32), np.zeros((2, 2, 2, 5, 5), np.int32),
                                    np.zeros((2, 5, 5), np.float32)])
def test_other_shapes_and_types_are_refused(labels):
    with pytest.raises(InputError, match=r"\(T, Y, X\) or \(T, Z, Y, X\) integer labels"):
        tracks_table(labels)
