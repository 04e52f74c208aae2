"""The command line on stacks: segment-anything --stack [--propagate], --tracks of time series."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

sys.path.insert(0, str(Path(__file__).parent / "napari"))
from standin import BlobPipeline  # noqa: E402  the classical stand-in of the GUI tests

from napari_mobilesamv2 import cli  # noqa: E402
from napari_mobilesamv2.cli import main  # noqa: E402

from .conftest import write_weight_files  # noqa: E402
from .test_propagate import z_stack  # noqa: E402


@pytest.fixture
def standin(monkeypatch):
    """The CLI runs the stand-in pipeline (exact ids) instead of loading weights."""
    monkeypatch.setattr(cli, "_load_model", lambda args, with_detector: BlobPipeline())


@pytest.fixture
def stack_path(tmp_path) -> Path:
    path = tmp_path / "zstack.tif"
    tifffile.imwrite(path, z_stack())
    return path


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_segment_anything_follows_objects_through_the_stack(standin, stack_path, tmp_path, capsys):
    labels_path, tracks_path = tmp_path / "labels.tif", tmp_path / "tracks.csv"
    # --propagate implies a stack; a stack point is Z,Y,X (row before column)
    code = main(["segment-anything", str(stack_path), "--boxes", "4,15,20,36,41", "--points", "4,30,70",
                 "--propagate", "--labels", str(labels_path), "--tracks", str(tracks_path)])
    assert code == 0
    labels = tifffile.imread(labels_path)
    assert labels.shape == (9, 64, 96) and labels.dtype == np.int32
    # points come before boxes: the point object is 1 (every plane), the box object 2 (planes 2 to 6)
    assert [sorted(set(np.unique(p)) - {0}) for p in labels] == [[1], [1], [1, 2], [1, 2], [1, 2], [1, 2], [1, 2],
                                                                  [1], [1]]
    rows = read_csv(tracks_path)
    assert rows[0] == ["id", "t", "z", "y", "x", "area", "score"]
    assert [(r[0], r[1]) for r in rows[1:]] == [("1", str(t)) for t in range(9)] + [("2", str(t)) for t in range(2, 7)]
    assert rows[1][3:5] == ["30", "70"] and rows[1][6] == "0.9"  # centroid y, x; the stand-in's predicted IoU
    assert "2 objects on 9 planes" in capsys.readouterr().out


def test_without_propagate_each_object_stays_on_its_plane(standin, stack_path, tmp_path):
    labels_path = tmp_path / "labels.tif"
    assert main(["segment-anything", str(stack_path), "--stack", "--boxes", "4,15,20,36,41", "--points", "0,30,70",
                 "--labels", str(labels_path)]) == 0
    labels = tifffile.imread(labels_path)
    # ids follow the planes in the order they are first named, points before boxes
    assert [sorted(set(np.unique(p)) - {0}) for p in labels] == [[1], [], [], [], [2], [], [], [], []]


def test_the_time_axis_and_the_stop_settings_reach_the_core(standin, tmp_path):
    path = tmp_path / "tz.tif"
    tifffile.imwrite(path, np.stack([z_stack()[[3, 4, 5]]] * 2))  # (T=2, Z=3, Y, X)
    labels_path = tmp_path / "labels.tif"
    assert main(["segment-anything", str(path), "--stack", "--boxes", "1,1,15,20,36,41", "--propagate", "--axis", "0",
                 "--stop-overlap", "0.9", "--next-prompt", "box+point", "--labels", str(labels_path)]) == 0
    labels = tifffile.imread(labels_path)
    assert labels.shape == (2, 3, 64, 96)
    assert [[bool(labels[t, z].any()) for z in range(3)] for t in range(2)] == [[False, True, False]] * 2


@pytest.mark.parametrize("extra, message", [
    (["--stack", "--points", "70,30"], r"--points \(Z,Y,X\) expects 3 comma-separated numbers"),
    (["--stack", "--boxes", "9,15,20,36,41"], "plane index 9 is outside the stack axis of size 9"),
    (["--stack", "--boxes", "1.5,15,20,36,41"], "plane indices must be whole numbers"),
    (["--stack", "--points", "4,30,70", "--propagate", "--axis", "1"], "axis 1 does not exist"),
    (["--points", "70,30", "--propagate"], r"--points \(Z,Y,X\) expects 3 comma-separated numbers"),
    (["--tracks", "t.csv", "--points", "70,30"], "--tracks needs --stack"),
    (["--stack", "--points", "4,30,70", "--proposals", "out.json"], "not --proposals"),
])
def test_stack_prompt_mistakes_are_one_line_errors(standin, stack_path, tmp_path, extra, message, capsys):
    code = main(["segment-anything", str(stack_path), "--labels", str(tmp_path / "l.tif"), *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert pytest.importorskip("re").search(message, err), err


def test_segment_everything_writes_the_tracks_of_a_time_series(standin, tmp_path):
    path = tmp_path / "tyx.tif"
    series = z_stack()[2:7]  # (T=5, Y, X): objects on every time point
    tifffile.imwrite(path, series)
    tracks_path = tmp_path / "tracks.csv"
    assert main(["segment-everything", str(path), "--stack", "--labels", str(tmp_path / "l.tif"),
                 "--tracks", str(tracks_path)]) == 0
    rows = read_csv(tracks_path)[1:]
    assert [r[0] for r in rows] == ["1"] * 5 + ["2"] * 5
    assert [r[1] for r in rows] == [str(t) for t in range(5)] * 2
    # the best detector score of each object: the stand-in scores 0.9 the first object in raster order,
    # which each object is on some time point
    assert {r[6] for r in rows} == {"0.9"}


def test_tracks_need_a_stack(standin, stack_path, tmp_path, capsys):
    assert main(["segment-everything", str(stack_path), "--labels", str(tmp_path / "l.tif"),
                 "--tracks", str(tmp_path / "t.csv")]) == 2
    assert "--tracks needs --stack" in capsys.readouterr().err


def test_the_real_pipeline_propagates_from_weights_files(tmp_path, sam_decoder, monkeypatch):
    monkeypatch.setenv("NAPARI_MOBILESAMV2_CACHE", str(tmp_path / "cache"))
    encoder_path, decoder_path = write_weight_files(tmp_path, sam_decoder, seed=20)
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (2, 40, 48), np.uint8))
    labels_path, tracks_path = tmp_path / "labels.tif", tmp_path / "tracks.csv"
    code = main(["segment-anything", str(path), "--encoder", "tiny_vit", "--encoder-weights", str(encoder_path),
                 "--decoder-weights", str(decoder_path), "--device", "cpu", "--no-download", "--stack",
                 "--boxes", "0,5,5,30,30", "--propagate", "--stop-iou", "-1", "--stop-overlap", "0",
                 "--next-prompt", "box+mask", "--labels", str(labels_path), "--tracks", str(tracks_path),
                 "--embeddings", str(tmp_path / "embeddings")])
    assert code == 0
    labels = tifffile.imread(labels_path)
    assert labels.shape == (2, 40, 48) and labels.dtype == np.int32 and set(np.unique(labels)) <= {0, 1}
    assert read_csv(tracks_path)[0] == ["id", "t", "z", "y", "x", "area", "score"]
