"""Bad input, untrusted checkpoints and faults: every case ends in a clear, documented outcome.

Each bad image runs through the headless API (an exception type from
:mod:`napari_mobilesamv2.errors` whose message names the problem and what to do, or a
well-defined result) and, where it can be stored as a file, through the command line
(status 2 and one ``error:`` line, no traceback). The command-line cases run the tiny
random-weight pipeline of ``conftest.py`` in place of the real weights files, whose
loading ``test_cli.py`` covers. See ``docs/reliability.md`` for the table of cases.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import json
import os
import re
import tracemalloc

import numpy as np
import pytest
import tifffile
import torch

from napari_mobilesamv2 import cli, export, io
from napari_mobilesamv2.decode.labels import merge_labels
from napari_mobilesamv2.errors import (
    CheckpointError,
    InputError,
    IntegrityError,
    OutputError,
    UntrustedWeightsError,
    UntrustedWeightsWarning,
    WeightsUnavailableError,
)
from napari_mobilesamv2.imaging import to_rgb_uint8
from napari_mobilesamv2.models import download, load_detector, load_image_encoder
from napari_mobilesamv2.models import load_prompt_decoder
from napari_mobilesamv2.models.registry import WEIGHT_FILES
from napari_mobilesamv2.pipeline import MobileSAMv2

from .conftest import DETECTOR_FIXTURE, register_weight_urls, serving, synthetic_cells, write_weight_files

H, W = 48, 64
FAST = {"imgsz": 256, "max_prompts": 4}  # small detector input: each run takes a fraction of a second
CLI_FAST = ["--imgsz", "256", "--max-prompts", "4"]


def _cells(seed: int = 2) -> np.ndarray:
    return synthetic_cells((H, W), n=5, seed=seed)


BASE = _cells().astype(np.int64) * 4  # 0..1020: exact in every dtype below, float16 included


def _strided(shape: tuple[int, ...]) -> np.ndarray:
    """A huge array that takes one byte of memory."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=shape, strides=(0,) * len(shape))


def _with(values: np.ndarray, where: np.ndarray, value: float) -> np.ndarray:
    out = values.astype(np.float32)
    out[where] = value
    return out


BRIGHT = _cells() > 150

# id: (image factory, conversion keywords, expected error type and message); each is refused.
REFUSED = {
    "empty-0x0": (lambda: np.zeros((0, 0), np.uint8), {}, r"the image is empty \(0x0 pixels\)"),
    "empty-0x64": (lambda: np.zeros((0, 64), np.float32), {}, r"the image is empty"),
    "1x1": (lambda: np.ones((1, 1), np.uint16), {}, r"1x1 pixels; at least 16x16 is needed \(upsample it"),
    "7x7": (lambda: np.ones((7, 7), np.uint16), {}, r"7x7 pixels; at least 16x16 is needed"),
    "7x7-rgb-uint8": (lambda: np.ones((7, 7, 3), np.uint8), {}, r"7x7 pixels; at least 16x16"),
    "1d": (lambda: np.arange(100, dtype=np.uint8), {}, r"one 2D plane \(Y, X\) or \(Y, X, C\); got .* \(100,\)"),
    "4d": (lambda: np.zeros((2, 3, H, W), np.uint8), {}, r"one 2D plane .*\(2, 3, 48, 64\)\. Segment one plane"),
    "5d": (lambda: np.zeros((1, 1, 2, H, W), np.uint8), {}, r"one 2D plane .*\(1, 1, 2, 48, 64\)"),
    "20k-grey": (lambda: _strided((20000, 20000)), {}, r"20000x20000 pixels \(400 MP\).*segment it in tiles \(--tile 1024"),
    "20k-rgb": (lambda: _strided((20000, 20000, 3)), {}, r"20000x20000 pixels.*segment it in tiles \(--tile 1024"),
    "complex": (lambda: BASE.astype(np.complex64), {}, r"dtype complex64 are not supported; use integers or floats"),
    "text": (lambda: np.full((H, W), "a"), {}, r"dtype <U1 are not supported"),
    "7-channels-first": (lambda: np.stack([BASE] * 7), {},
                         r"cannot tell which axis .* pass channel_axis \(--channel-axis"),
    "7-channels-last": (lambda: np.dstack([BASE] * 7), {}, r"cannot tell which axis of the shape \(48, 64, 7\)"),
    "7-channels-no-choice": (lambda: np.stack([BASE] * 7), {"channel_axis": 0},
                             r"7 channels; choose at most three .*--channels 0,1,2"),
    "z-stack-5": (lambda: np.stack([BASE] * 5), {}, r"holds channels; .* or pick one plane if it is a stack"),
    "channel-axis-5": (lambda: np.dstack([BASE] * 3), {"channel_axis": 5},
                       r"channel_axis 5 does not exist .*use 0, 1 or 2"),
    "channel-9": (lambda: np.stack([BASE] * 7), {"channel_axis": 0, "channels": [9]},
                  r"channel\(s\) \[9\] do not exist"),
    "normalization": (lambda: BASE, {"normalization": "zscore"}, r"normalization must be one of auto, percentile"),
    "percentiles": (lambda: BASE, {"percentiles": (5, 200)}, r"percentiles must be \(low, high\) with 0 <= low < high"),
    "contrast-limits-nan": (lambda: BASE, {"normalization": "contrast_limits", "contrast_limits": (np.nan, 9)},
                            r"contrast_limits=\(low, high\), two finite numbers"),
}

# id: (image factory, conversion keywords, reference image whose conversion must be identical)
ACCEPTED = {
    "int64": (lambda: BASE, {}, BASE.astype(np.uint16)),
    "uint32": (lambda: BASE.astype(np.uint32), {}, BASE.astype(np.uint16)),
    "float16": (lambda: BASE.astype(np.float16), {}, BASE.astype(np.uint16)),
    "negative-int16": (lambda: (BASE - 600).astype(np.int16), {}, BASE.astype(np.uint16)),
    # +-1.7e308: the differences of these values overflow float64
    "huge-float64": (lambda: (BASE - 510) * 2.0**1015, {}, BASE.astype(np.uint16)),
    "uint64-top": (lambda: BASE.astype(np.uint64) * 2**53, {}, BASE.astype(np.uint16)),
    "bool": (lambda: BRIGHT, {}, BRIGHT.astype(np.uint8) * 255),
    "rgba": (lambda: np.dstack([_cells(1), _cells(2), _cells(3), np.full((H, W), 255, np.uint8)]), {},
             np.dstack([_cells(1), _cells(2), _cells(3)])),
    "2-channels-last": (lambda: np.dstack([BASE, BASE[::-1]]), {}, np.stack([BASE, BASE[::-1]])),
    "2-channels-first": (lambda: np.stack([BASE, BASE[::-1]]), {}, np.dstack([BASE, BASE[::-1]])),
    "3-channels-first": (lambda: np.stack([_cells(1), _cells(2), _cells(3)]), {},
                         np.dstack([_cells(1), _cells(2), _cells(3)])),
    "7-channels-chosen": (lambda: np.stack([BASE * (c + 1) for c in range(7)]),
                          {"channel_axis": 0, "channels": [6, 0, 3]},
                          np.dstack([BASE * 7, BASE, BASE * 4])),
}

# Images with nothing to segment: an empty result (not an error) and a warning.
NOTHING = {
    "constant-uint16": lambda: np.full((H, W), 7, np.uint16),
    "constant-rgb": lambda: np.full((H, W, 3), 200, np.uint8),
    "all-nan": lambda: np.full((H, W), np.nan, np.float32),
    "all-inf": lambda: np.full((H, W), np.inf, np.float64),
}


@pytest.fixture()
def cli_model(monkeypatch, tiny_pipeline):
    """The CLI with the tiny pipeline in place of the weights files; no progress bars."""
    import tqdm.auto

    class Quiet(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})

    monkeypatch.setattr(cli, "_load_model", lambda args, with_detector: tiny_pipeline)
    monkeypatch.setattr(tqdm.auto, "tqdm", Quiet)


def cli_error(capsys, code: int) -> str:
    """The one ``error:`` line of a failed command (checked: status 2, one line, no traceback)."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _cli_flags(conversion: dict) -> list[str]:
    flags = []
    if "channel_axis" in conversion:
        flags += ["--channel-axis", str(conversion["channel_axis"])]
    if "channels" in conversion:
        flags += ["--channels", ",".join(map(str, conversion["channels"]))]
    return flags


# -- images --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_image_is_refused_by_the_api(tiny_pipeline, case):
    make, conversion, message = REFUSED[case]
    with pytest.raises(InputError, match=message):
        tiny_pipeline.segment_everything(make(), **conversion, **FAST)


def test_huge_image_is_refused_without_allocating(tiny_pipeline):
    tracemalloc.start()
    try:
        for image in (_strided((20000, 20000)), _strided((20000, 20000, 3)), _strided((20000, 20000)).view(bool)):
            with pytest.raises(InputError, match=r"segment it in tiles \(--tile 1024"):
                tiny_pipeline.segment_everything(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # a copy of one plane would be 400 MB


# Cases the command line can meet in a file (numpy arrays tifffile can store, flags it has).
CLI_REFUSED = ["1x1", "7x7", "7x7-rgb-uint8", "4d", "5d", "7-channels-first", "7-channels-last",
               "7-channels-no-choice", "z-stack-5", "channel-9"]


@pytest.mark.parametrize("case", CLI_REFUSED)
def test_bad_image_file_exits_2_with_one_line(tmp_path, cli_model, capsys, case):
    make, conversion, message = REFUSED[case]
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, make())
    out = tmp_path / "labels.tif"
    code = cli.main(["segment-everything", str(path), "--labels", str(out), *CLI_FAST, *_cli_flags(conversion)])
    assert re.search(message, cli_error(capsys, code))
    assert not out.exists()


@pytest.fixture(scope="module")
def reference_labels(tiny_pipeline):
    """Labels of every reference image, computed once."""
    return {case: tiny_pipeline.segment_everything(reference, **FAST).labels
            for case, (_, _, reference) in ACCEPTED.items()}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_unusual_image_converts_like_its_plain_equivalent(tiny_pipeline, reference_labels, case):
    """dtype, sign, magnitude, channel order and alpha change nothing once values are the same."""
    make, conversion, reference = ACCEPTED[case]
    np.testing.assert_array_equal(tiny_pipeline.prepare_image(make(), **conversion),
                                  tiny_pipeline.prepare_image(reference))
    result = tiny_pipeline.segment_everything(make(), **conversion, **FAST)
    assert result.labels.shape == (H, W) and result.labels.dtype == np.int32
    np.testing.assert_array_equal(result.labels, reference_labels[case])


@pytest.mark.parametrize("case", ["int64", "uint32", "float16", "negative-int16", "bool", "rgba", "7-channels-chosen"])
def test_unusual_image_file_is_segmented_by_the_cli(tmp_path, cli_model, reference_labels, case):
    make, conversion, _ = ACCEPTED[case]
    path, out = tmp_path / "image.tif", tmp_path / "labels.tif"
    tifffile.imwrite(path, make())
    assert cli.main(["segment-everything", str(path), "--labels", str(out), *CLI_FAST, *_cli_flags(conversion)]) == 0
    np.testing.assert_array_equal(tifffile.imread(out), reference_labels[case])


def test_nan_and_infinity_map_to_black_and_white(tiny_pipeline):
    image = _cells().astype(np.float32)
    image[:, :4], image[:, 4:8], image[:, 8:12] = np.nan, np.inf, -np.inf
    rgb = tiny_pipeline.prepare_image(image)
    assert (rgb[:, :4] == 0).all() and (rgb[:, 4:8] == 255).all() and (rgb[:, 8:12] == 0).all()
    finite = image[:, 12:]
    low, high = np.percentile(finite, (1, 99.8))
    np.testing.assert_array_equal(rgb[:, 12:], to_rgb_uint8(finite, normalization="contrast_limits",
                                                            contrast_limits=(low, high)))
    assert tiny_pipeline.segment_everything(image, **FAST).labels.shape == (H, W)


@pytest.mark.parametrize("case", list(NOTHING))
def test_image_without_contrast_gives_an_empty_result_and_a_warning(tiny_pipeline, caplog, case):
    for strategy in ("object-aware", "grid"):
        caplog.clear()
        result = tiny_pipeline.segment_everything(NOTHING[case](), strategy=strategy, points_per_side=4)
        assert len(result) == 0 and result.labels.shape == (H, W) and not result.labels.any()
        assert result.strategy == strategy and all(len(column) == 0 for column in result.table().values())
        assert "the same value everywhere" in caplog.text
    assert ("no finite values" in caplog.text) == case.startswith("all-")


def test_image_without_detections_is_an_empty_result(tiny_pipeline, tmp_path, cli_model, capsys):
    result = tiny_pipeline.segment_everything(_cells(), conf=1.0, **FAST)
    assert len(result) == 0 and not result.labels.any()
    path, out, proposals = tmp_path / "cells.tif", tmp_path / "labels.tif", tmp_path / "p.json"
    tifffile.imwrite(path, _cells())
    code = cli.main(["segment-everything", str(path), "--labels", str(out), "--proposals", str(proposals),
                     "--conf", "1", *CLI_FAST])
    assert code == 0 and "0 objects" in capsys.readouterr().out
    assert not tifffile.imread(out).any() and json.loads(proposals.read_text()) == []


def test_more_detections_than_max_prompts_keeps_the_best(tiny_pipeline):
    image = _cells()
    boxes, scores = tiny_pipeline.detect(tiny_pipeline.prepare_image(image))
    assert len(boxes) > 2
    result = tiny_pipeline.segment_everything(image, max_prompts=2)
    assert len(result) == 2
    np.testing.assert_array_equal(result.boxes_xyxy, boxes[:2])
    np.testing.assert_array_equal(result.score, scores[:2])


@pytest.mark.parametrize(
    "kwargs, message",
    [({"batch_size": 0}, "batch_size must be at least 1, not 0"),
     ({"imgsz": 8192}, "imgsz must be a multiple of 32 from 32 to 4096"),
     ({"conf": float("nan")}, "conf must be between 0 and 1, not nan")],
)
def test_bad_parameters_are_refused(tiny_pipeline, kwargs, message):
    with pytest.raises(InputError, match=message):
        tiny_pipeline.segment_everything(_cells(), **kwargs)


# -- prompts ------------------------------------------------------------------------------------------

def test_user_boxes_zero_area_inverted_and_outside(tiny_pipeline, caplog):
    image = _cells()
    boxes = [[10, 10, 10, 30],    # zero width: dropped
             [40, 30, 10, 5],     # inverted: corners ordered
             [50, -10, 90, 20],   # partly outside: clipped
             [100, 100, 120, 120]]  # entirely outside: dropped
    result = tiny_pipeline.segment_everything(image, boxes_xyxy=boxes)
    np.testing.assert_array_equal(result.boxes_xyxy, [[10, 5, 40, 30], [50, 0, 64, 20]])
    assert "ignoring 2 box(es) with no area inside the 64x48 (width x height) image" in caplog.text
    ordered = tiny_pipeline.segment_everything(image, boxes_xyxy=[[10, 5, 40, 30]])
    np.testing.assert_array_equal(ordered.crops[0].to_full((H, W)), result.crops[0].to_full((H, W)))
    nothing = tiny_pipeline.segment_everything(image, boxes_xyxy=[[100, 100, 120, 120]])
    assert len(nothing) == 0 and not nothing.labels.any()


PROMPT_ERRORS = {
    "point-outside": ({"points": [[64, 10]]}, InputError, r"1 point\(s\) lie outside the 64x48 \(width x height\)"),
    "point-negative": ({"points": [[-1, 10]]}, InputError, r"lie outside"),
    "point-nan": ({"points": [[np.nan, 10]]}, InputError, r"points must be finite numbers \(x, y\)"),
    "point-3-numbers": ({"points": [[1, 2, 3]]}, InputError, r"points need 2 numbers each \(x, y\)"),
    "point-text": ({"points": [["a", "b"]]}, InputError, r"points must be numbers \(x, y\)"),
    "box-zero-area": ({"boxes": [[10, 10, 10, 40]]}, InputError, r"the box \(10, 10, 10, 40\) has no area inside"),
    "box-outside": ({"boxes": [[100, 100, 200, 200]]}, InputError, r"has no area inside the 64x48"),
    "box-3-numbers": ({"boxes": [[1, 2, 3]]}, InputError, r"boxes need 4 numbers each \(x0, y0, x1, y1\)"),
    "box-inf": ({"boxes": [[0, 0, np.inf, 5]]}, InputError, r"boxes must be finite numbers"),
    "no-prompts": ({}, InputError, r"no prompts: give at least one positive point or one box"),
    "empty-points": ({"points": np.zeros((0, 2))}, InputError, r"no prompts"),
    "negative-points-only": ({"points": [[5, 5]], "point_labels": [0]}, InputError, r"no prompts"),
}


@pytest.mark.parametrize("case", list(PROMPT_ERRORS))
def test_bad_prompts_are_refused(tiny_pipeline, case):
    kwargs, error, message = PROMPT_ERRORS[case]
    with pytest.raises(error, match=message):
        tiny_pipeline.segment_anything(_cells(), **kwargs)


def test_inverted_and_partly_outside_boxes_are_repaired_for_segment_anything(tiny_pipeline):
    result = tiny_pipeline.segment_anything(_cells(), boxes=[[40, 30, 10, 5], [50, -10, 90, 20]])
    np.testing.assert_array_equal(result.boxes_xyxy, [[10, 5, 40, 30], [50, 0, 64, 20]])


@pytest.mark.parametrize(
    "args, message",
    [(["--points", "64,10"], r"lie outside the 64x48"), (["--boxes", "10,10,10,40"], r"has no area inside"),
     (["--points", "1,2,3"], r"--points expects 2 comma-separated numbers"), ([], r"at least one of --points")],
)
def test_bad_prompts_on_the_command_line(tmp_path, cli_model, capsys, args, message):
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, _cells())
    code = cli.main(["segment-anything", str(path), "--labels", str(tmp_path / "o.tif"), *args])
    assert re.search(message, cli_error(capsys, code))
    assert not (tmp_path / "o.tif").exists()


# -- labels: never wrap, never lose the user's data ----------------------------------------------------

@pytest.mark.parametrize(
    "dtype, top, wanted",
    [(np.uint8, 250, np.int32), (np.int8, 120, np.int32), (np.uint16, 65530, np.int32),
     (np.int32, 2**31 - 5, np.int64), (bool, 1, np.int32), (np.uint32, 100, np.uint32)],
)
def test_new_ids_upcast_the_labels_instead_of_wrapping(dtype, top, wanted):
    existing = np.zeros((H, W), dtype)
    existing[:5, :5] = top
    new = np.zeros((H, W), np.int32)
    for k in range(1, 11):
        new[10 + k, 10:20] = k
    before = existing.copy()
    merged, id_map = merge_labels(existing, new)
    assert merged.dtype == wanted
    np.testing.assert_array_equal(existing, before)  # the input is not modified
    assert merged[:5, :5].tolist() == before[:5, :5].astype(wanted).tolist()
    assert id_map == {k: int(top) + k for k in range(1, 11)}
    for k in range(1, 11):
        assert (merged[10 + k, 10:20] == int(top) + k).all()


@pytest.mark.parametrize(
    "existing, message",
    [(np.zeros((H, W), np.float32), "labels must hold integers, not float32"),
     (np.zeros((H + 1, W), np.int32), r"the labels have shape \(49, 64\) but the result has shape \(48, 64\)")],
)
def test_labels_that_cannot_take_the_result_are_refused(existing, message):
    with pytest.raises(InputError, match=message):
        merge_labels(existing, np.ones((H, W), np.int32))


# -- files --------------------------------------------------------------------------------------------

def _tiff_bytes(tmp_path) -> bytes:
    tifffile.imwrite(tmp_path / "whole.tif", _cells(), compression="zlib")
    return (tmp_path / "whole.tif").read_bytes()


UNREADABLE = {
    "missing": (lambda t: t / "missing.tif", r"missing.tif does not exist; check the path"),
    "directory": (lambda t: t, r"is a directory; give an image file"),
    "corrupt-tiff": (lambda t: _write(t / "bad.tif", b"II*\x00garbage"), r"cannot read .*bad.tif as an image"),
    "truncated-tiff": (lambda t: _write(t / "cut.tif", _tiff_bytes(t)[:300]), r"cannot read .*cut.tif .* truncated"),
    "text-as-tiff": (lambda t: _write(t / "notes.tif", b"my notes\n"), r"cannot read .*notes.tif"),
    "empty-png": (lambda t: _write(t / "empty.png", b""), r"cannot read .*empty.png as an image"),
    "tiff-without-pixels": (lambda t: _write_empty_tiff(t / "none.tif"),
                            r"cannot read .*none.tif as an image: it holds no pixels \(shape \(0, 0\)\)"),
}


def _write_empty_tiff(path):
    with pytest.warns(UserWarning, match="zero-size array"):  # tifffile's, while the test makes the bad file
        tifffile.imwrite(path, np.zeros((0, 0), np.uint8))
    return path


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_unreadable_image_file(tmp_path, case):
    make, message = UNREADABLE[case]
    with pytest.raises(InputError, match=message):
        io.read_image(make(tmp_path))


@pytest.mark.parametrize("case", ["missing", "corrupt-tiff", "truncated-tiff", "text-as-tiff", "empty-png",
                                  "tiff-without-pixels"])
def test_unreadable_image_file_on_the_command_line(tmp_path, cli_model, capsys, case):
    make, message = UNREADABLE[case]
    (tmp_path / "out").mkdir()
    path = make(tmp_path)
    code = cli.main(["segment-everything", str(path), "--labels", str(tmp_path / "out" / "l.tif"), *CLI_FAST])
    line = cli_error(capsys, code)
    assert re.search(message.replace("; check the path", ""), line)
    assert not list((tmp_path / "out").iterdir())


def test_folder_without_images_on_the_command_line(tmp_path, cli_model, capsys):
    (tmp_path / "notes.txt").write_text("not an image")
    code = cli.main(["segment-everything", str(tmp_path), "--labels", str(tmp_path / "o.tif")])
    assert "holds no images (.tif, .tiff, .png" in cli_error(capsys, code)


def _outputs(t):
    """Paths for the output cases: the input image, a regular file and a folder."""
    image = t / "cells.tif"
    tifffile.imwrite(image, _cells())
    (t / "a-file").write_text("")
    return image


OUTPUT_ERRORS = {
    "under-a-file": (lambda t: ["--labels", str(t / "a-file" / "l.tif")],
                     r"the folder .*a-file of the output .* is a file, not a folder; create the folder or choose"),
    "missing-folder": (lambda t: ["--labels", str(t / "nope" / "l.tif")], r"nope of the output .* does not exist"),
    "is-a-folder": (lambda t: ["--labels", str(t)], r"is a directory; give a file name"),
    "labels-is-input": (lambda t: ["--labels", str(t / "cells.tif")], r"is the input image; choose another file name"),
    "proposals-is-input": (lambda t: ["--proposals", str(t / "." / "cells.tif")], r"is the input image"),
    "labels-is-proposals": (lambda t: ["--labels", str(t / "o.tif"), "--proposals", str(t / "o.tif")],
                            r"--labels and --proposals both name .*o.tif; give two different files"),
    "nothing-to-write": (lambda t: [], r"nothing to write: give --labels OUT.tif and/or --proposals OUT.json"),
}


@pytest.mark.parametrize("case", list(OUTPUT_ERRORS))
def test_unwritable_output_is_refused_before_any_work(tmp_path, capsys, monkeypatch, case):
    image = _outputs(tmp_path)
    monkeypatch.setattr(cli, "_load_model", lambda *a: pytest.fail("the model was loaded before the check"))
    before = image.read_bytes()
    code = cli.main(["segment-everything", str(image), *OUTPUT_ERRORS[case][0](tmp_path)])
    assert re.search(OUTPUT_ERRORS[case][1], cli_error(capsys, code))
    assert image.read_bytes() == before


def test_output_checks_raise_output_error(tmp_path):
    image = _outputs(tmp_path)
    with pytest.raises(OutputError, match="is the input image"):
        io.check_output_path(image, (image,))
    with pytest.raises(OSError, match="is a file, not a folder"):  # OutputError is an OSError too
        io.check_output_path(tmp_path / "a-file" / "x.tif")


def test_two_images_writing_the_same_output_are_refused(tmp_path, cli_model, capsys):
    for folder in ("a", "b", "out"):
        (tmp_path / folder).mkdir()
    tifffile.imwrite(tmp_path / "a" / "cells.tif", _cells())
    tifffile.imwrite(tmp_path / "b" / "cells.tif", _cells(3))
    code = cli.main(["segment-everything", str(tmp_path / "a"), str(tmp_path / "b"), "--labels", str(tmp_path / "out")])
    line = cli_error(capsys, code)
    assert re.search(r"a.cells.tif and .*b.cells.tif would both be written to .*cells_labels.tif; rename one", line)
    assert not list((tmp_path / "out").iterdir())


def test_usage_mistakes_are_one_line(capsys):
    for argv, message in [(["segment-everything", "x.tif", "--channels", "a,b"], "expected comma-separated channel"),
                          (["segment-everythin"], "invalid choice: 'segment-everythin'"),
                          (["segment-everything", "x.tif", "--normalization", "zscore"], "invalid choice: 'zscore'")]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        line = cli_error(capsys, exit_info.value.code)
        assert message in line and "--help" in line


# -- disk full: no partial file, the previous file kept -------------------------------------------------

def _full_disk(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _imwrite_fills_disk(path, *args, **kwargs):
    """tifffile.imwrite that gets 10 bytes out, then meets a full disk."""
    with open(path, "wb") as f:
        f.write(b"II*\x00" + b"x" * 6)
    _full_disk()


def _dump_fills_disk(data, handle, *args, **kwargs):
    """json.dump that gets 10 bytes out, then meets a full disk."""
    handle.write('[{"id": 2')
    handle.flush()
    _full_disk()


def test_disk_full_while_writing_labels(tmp_path, monkeypatch):
    target = tmp_path / "labels.tif"
    io.write_labels(target, np.arange(H * W, dtype=np.int32).reshape(H, W))
    before = target.read_bytes()
    monkeypatch.setattr(io.tifffile, "imwrite", _imwrite_fills_disk)
    with pytest.raises(OutputError, match=r"cannot write .*labels.tif: No space left on device; nothing was written"):
        io.write_labels(target, np.zeros((H, W), np.int32))
    assert target.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["labels.tif"]


def test_disk_full_while_writing_proposals(tmp_path, monkeypatch):
    target = tmp_path / "proposals.json"
    export.write_json(target, [{"id": 1}])
    monkeypatch.setattr(export.json, "dump", _dump_fills_disk)
    with pytest.raises(OutputError, match=r"cannot write .*proposals.json: No space left on device"):
        export.write_json(target, [{"id": 2}])
    assert json.loads(target.read_text()) == [{"id": 1}] and sorted(os.listdir(tmp_path)) == ["proposals.json"]


def test_disk_full_on_the_command_line(tmp_path, cli_model, capsys, monkeypatch):
    image = _outputs(tmp_path)
    monkeypatch.setattr(io.tifffile, "imwrite", _imwrite_fills_disk)
    code = cli.main(["segment-everything", str(image), "--labels", str(tmp_path / "l.tif"), *CLI_FAST])
    assert "No space left on device" in cli_error(capsys, code)
    assert sorted(os.listdir(tmp_path)) == ["a-file", "cells.tif"]


# -- checkpoints are code -------------------------------------------------------------------------------

class _Evil:
    """Unpickling this creates a marker folder: stands in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture()
def weights(tmp_path, sam_decoder, monkeypatch):
    """Real-format encoder (TinyViT) and decoder files, and an empty cache."""
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    encoder_path, decoder_path = write_weight_files(tmp_path, sam_decoder)
    return {"encoder_weights": encoder_path, "decoder_weights": decoder_path,
            "device": "cpu", "download": False}


@pytest.fixture()
def evil(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"ema": _Evil(marker)}, path)
    return path, marker


@pytest.fixture()
def no_unpickling(monkeypatch):
    """Fail the test if anything is loaded with weights_only=False (a full unpickle)."""
    real_load = torch.load

    def guarded(*args, weights_only=None, **kwargs):
        if weights_only is not True:
            pytest.fail("torch.load was asked to unpickle a file")
        return real_load(*args, weights_only=True, **kwargs)

    monkeypatch.setattr(torch, "load", guarded)


def test_unknown_detector_is_refused_before_a_byte_is_unpickled(weights, evil, no_unpickling, monkeypatch):
    path, marker = evil
    monkeypatch.setattr("napari_mobilesamv2.models.build.load_image_encoder",
                        lambda *a: pytest.fail("the encoder was loaded before the detector was refused"))
    refused = r"evil.pt is a pickled detector .* can run arbitrary code.*--trust-weights"
    with pytest.raises(UntrustedWeightsError, match=refused):
        MobileSAMv2.from_pretrained("tiny_vit", detector_weights=path, **weights)
    with pytest.raises(UntrustedWeightsError):
        load_detector(path, trusted=False)
    assert not marker.exists()


def test_unknown_detector_is_refused_on_the_command_line(tmp_path, weights, evil, no_unpickling, capsys):
    path, marker = evil
    image = _outputs(tmp_path)
    code = cli.main(["segment-everything", str(image), "--labels", str(tmp_path / "l.tif"), "--device", "cpu",
                     "--no-download", "--encoder", "tiny_vit", "--encoder-weights", str(weights["encoder_weights"]),
                     "--decoder-weights", str(weights["decoder_weights"]), "--detector-weights", str(path)])
    assert "--trust-weights" in cli_error(capsys, code)
    assert not marker.exists() and not (tmp_path / "l.tif").exists()


def test_unknown_device_is_refused_before_any_weights_load(weights, monkeypatch):
    monkeypatch.setattr("napari_mobilesamv2.models.build.load_image_encoder",
                        lambda *a: pytest.fail("weights were loaded before the device was checked"))
    with pytest.raises(InputError, match="unknown device 'tpu7'; use auto, cpu, cuda, cuda:N or mps"):
        MobileSAMv2.from_pretrained("tiny_vit", load_detector=False, **{**weights, "device": "tpu7"})


def test_trusting_a_file_warns_and_really_unpickles_it(weights, evil):
    """The control for the tests above: the evil file does run code once it is trusted."""
    path, marker = evil
    with pytest.warns(UntrustedWeightsWarning, match=r"evil.pt .*not the known ObjectAwareModel.pt's.*arbitrary code"):
        with pytest.raises(CheckpointError, match=r"holds a dict with keys \['ema'\], not a YOLOv8 model"):
            MobileSAMv2.from_pretrained("tiny_vit", detector_weights=path, trust_weights=True, **weights)
    assert marker.is_dir()


def test_trusting_on_the_command_line_prints_one_warning(tmp_path, weights, capsys):
    image = _outputs(tmp_path)
    code = cli.main(["segment-everything", str(image), "--labels", str(tmp_path / "l.tif"), "--device", "cpu",
                     "--no-download", "--encoder", "tiny_vit", "--encoder-weights", str(weights["encoder_weights"]),
                     "--decoder-weights", str(weights["decoder_weights"]), "--detector-weights", str(DETECTOR_FIXTURE),
                     "--trust-weights", *CLI_FAST])
    err = capsys.readouterr().err
    assert code == 0 and (tmp_path / "l.tif").exists()
    warning_lines = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warning_lines) == 1 and "a pickle can run arbitrary code" in warning_lines[0]


def _pin_detector(cache, source):
    """Put `source` in the cache as ObjectAwareModel.pt, pinned as if downloaded."""
    cache.mkdir(exist_ok=True)
    target = cache / "ObjectAwareModel.pt"
    target.write_bytes(source.read_bytes())
    download._pin(WEIGHT_FILES["ObjectAwareModel.pt"], target)
    return target


def test_pinned_detector_loads_without_trust_or_warning(tmp_path, weights, monkeypatch, recwarn):
    target = _pin_detector(tmp_path / "cache", DETECTOR_FIXTURE)
    model = MobileSAMv2.from_pretrained("tiny_vit", detector_weights=target, **weights)
    assert model.detector is not None
    assert not [w for w in recwarn if issubclass(w.category, UntrustedWeightsWarning)]


@pytest.mark.parametrize("given", [True, False], ids=["given-path", "from-cache"])
def test_the_detector_bytes_hashed_are_the_bytes_unpickled(tmp_path, weights, evil, detector, monkeypatch, given):
    """Once its sha256 is taken, the file on disk is swapped for a pickle that runs code: it must not matter."""
    path, marker = evil
    target = _pin_detector(tmp_path / "cache", DETECTOR_FIXTURE)
    real_sha256, digests = hashlib.sha256, []

    class SwapAfterDigest:
        def __init__(self, data=b""):
            self._hash = real_sha256(data)

        def update(self, data):
            self._hash.update(data)

        def hexdigest(self):
            digests.append(self._hash.hexdigest())
            target.write_bytes(path.read_bytes())
            return digests[-1]

    monkeypatch.setattr(hashlib, "sha256", SwapAfterDigest)
    model = MobileSAMv2.from_pretrained("tiny_vit", detector_weights=target if given else None, **weights)
    assert digests == [download.pinned_sha256("ObjectAwareModel.pt")]  # hashed once, the pinned bytes
    assert not marker.exists() and target.read_bytes() == path.read_bytes()
    loaded, expected = model.detector.state_dict(), detector.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in loaded)


def test_tampered_cached_detector_is_deleted_before_unpickling(tmp_path, weights, evil, no_unpickling):
    path, marker = evil
    target = _pin_detector(tmp_path / "cache", DETECTOR_FIXTURE)
    target.write_bytes(path.read_bytes())
    with pytest.raises(IntegrityError, match=r"ObjectAwareModel.pt should have .* the corrupt file was deleted"):
        MobileSAMv2.from_pretrained("tiny_vit", **weights)  # the detector comes from the cache
    assert not target.exists() and not marker.exists()


def test_pickle_hash_is_never_taken_from_the_memo(tmp_path, weights):
    """Same size, same modification time, other bytes: still caught."""
    target = _pin_detector(tmp_path / "cache", DETECTOR_FIXTURE)
    assert "ok" in download.verify("ObjectAwareModel.pt")  # memo now holds the good hash
    stat = target.stat()
    data = bytearray(target.read_bytes())
    data[-100] ^= 0xFF
    target.write_bytes(bytes(data))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert not download.is_known_file("ObjectAwareModel.pt", target)
    with pytest.raises(IntegrityError, match="was deleted"):
        download.fetch("ObjectAwareModel.pt", progressbar=False)


def test_user_copy_of_a_detector_is_never_deleted(tmp_path, weights):
    copy = tmp_path / "my-detector.pt"
    copy.write_bytes(DETECTOR_FIXTURE.read_bytes())
    _pin_detector(tmp_path / "cache", DETECTOR_FIXTURE)
    copy.write_bytes(copy.read_bytes() + b"changed")
    with pytest.raises(IntegrityError) as info:
        download.verify("ObjectAwareModel.pt", copy)
    assert "deleted" not in str(info.value) and copy.exists()


WRONG_FILES = {
    # slot: loader; file factory; message
    "detector-as-encoder": (lambda p: load_image_encoder("tiny_vit", p), lambda t: DETECTOR_FIXTURE,
                            r"is not a plain state dict \(it holds pickled Python objects\); expected a MobileSAM"),
    "decoder-as-encoder": (lambda p: load_image_encoder("vit_b", p), "decoder",
                           r"does not fit: expected a SAM ViT-B checkpoint.* missing keys"),
    "encoder-as-decoder": (load_prompt_decoder, "encoder", r"has neither layout .* expected MobileSAMv2's Prompt"),
    "decoder-as-detector": (lambda p: load_detector(p, trusted=True), "decoder",
                            r"holds a dict with keys \['MaskDecoder', 'PromtEncoder'\], not a YOLOv8 model"),
    "text-as-detector": (lambda p: load_detector(p, trusted=True), lambda t: _write(t / "x.pt", b"weights\n"),
                         r"cannot be read as a detector checkpoint .* expected a MobileSAMv2 ObjectAwareModel.pt"),
    "truncated-detector": (lambda p: load_detector(p, trusted=True),
                           lambda t: _write(t / "cut.pt", DETECTOR_FIXTURE.read_bytes()[:5000]),
                           r"cannot be read as a detector checkpoint"),
    "missing-detector": (lambda p: load_detector(p, trusted=False), lambda t: t / "nope.pt",
                         r"nope.pt does not exist; expected the detector file ObjectAwareModel.pt"),
    "folder-as-detector": (lambda p: load_detector(p, trusted=True), lambda t: t,
                           r"is a directory; expected the detector"),
    "empty-encoder": (lambda p: load_image_encoder("tiny_vit", p), lambda t: _write(t / "e.pt", b""),
                      r"not a readable PyTorch checkpoint .* truncated or another kind of file"),
    "non-tensor-value": (load_prompt_decoder, "non-tensor", r"1 non-tensor keys: iou_token.weight \(str\)"),
    "not-a-dict-module": (load_prompt_decoder, "int-module", r"found a int where tensors should be"),
}


@pytest.mark.parametrize("case", list(WRONG_FILES))
def test_wrong_file_for_the_slot(tmp_path, weights, sam_decoder, case):
    loader, make, message = WRONG_FILES[case]
    prompt_encoder, mask_decoder = sam_decoder
    if make == "decoder":
        path = weights["decoder_weights"]
    elif make == "encoder":
        path = weights["encoder_weights"]
    elif make in ("non-tensor", "int-module"):
        mask_state = dict(mask_decoder.state_dict(), **{"iou_token.weight": "text"}) if make == "non-tensor" else 5
        path = tmp_path / "decoder.pt"
        torch.save({"PromtEncoder": prompt_encoder.state_dict(), "MaskDecoder": mask_state}, path)
    else:
        path = make(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        loader(path)


# -- download faults: clear errors, nothing corrupt left in the cache ------------------------------------

PAYLOAD = b"weights " * 4096


class _FaultyHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/cut":  # promises the whole file, sends a third, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
            self.wfile.flush()
            self.close_connection = True
        elif self.path == "/error":
            self.send_error(500, "server broke")
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)


@pytest.fixture()
def server():
    with serving(_FaultyHandler) as url:
        yield url


def _weights_in(cache) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name not in (download._HASH_CACHE_FILE, ".write-test"))


@pytest.mark.parametrize("name, sha256", [("mobile_sam.pt", hashlib.sha256(PAYLOAD).hexdigest()),
                                          ("ObjectAwareModel.pt", None)])
def test_interrupted_download_leaves_nothing(server, weights_cache, monkeypatch, name, sha256):
    register_weight_urls(monkeypatch, name, f"{server}/cut", f"{server}/error", sha256=sha256)
    with pytest.raises(WeightsUnavailableError) as info:
        download.fetch(name, progressbar=False)
    message = str(info.value)
    assert f"{name}: download {server}/cut or {server}/error and save it as {weights_cache / name}" in message
    assert "Download errors:" in message and "500" in message
    assert _weights_in(weights_cache) == []  # no partial file, no pin


def test_disk_full_during_download_leaves_nothing(server, weights_cache, monkeypatch):
    register_weight_urls(monkeypatch, "l2.pt", f"{server}/file")

    def fill_disk(url, output_file, pooch_obj=None):
        with open(output_file, "wb") as f:
            f.write(PAYLOAD[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(download.pooch, "HTTPDownloader", lambda **kwargs: fill_disk)
    with pytest.raises(WeightsUnavailableError, match="No space left on device"):
        download.fetch("l2.pt", progressbar=False)
    assert _weights_in(weights_cache) == []


def test_download_whose_pin_cannot_be_recorded_is_removed(server, weights_cache, monkeypatch):
    register_weight_urls(monkeypatch, "Prompt_guided_Mask_Decoder.pt", f"{server}/file")
    real_write = download._write_json

    def pins_fail(path, data, *, required):
        if path.name == download.PINS_FILE:
            raise WeightsUnavailableError(f"cannot write {path}: [Errno 28] No space left on device")
        return real_write(path, data, required=required)

    monkeypatch.setattr(download, "_write_json", pins_fail)
    with pytest.raises(WeightsUnavailableError, match="pins.json: .*No space left"):
        download.fetch("Prompt_guided_Mask_Decoder.pt", progressbar=False)
    assert _weights_in(weights_cache) == []
    monkeypatch.setattr(download, "_write_json", real_write)
    assert download.fetch("Prompt_guided_Mask_Decoder.pt", progressbar=False).read_bytes() == PAYLOAD
    assert download.is_known_file("Prompt_guided_Mask_Decoder.pt", weights_cache / "Prompt_guided_Mask_Decoder.pt")


def test_cache_folder_that_is_a_file(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("")
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(WeightsUnavailableError, match=r"cannot write to the weights cache .* set NAPARI_MOBILESAMV2_"):
        download.fetch("mobile_sam.pt")
    assert (tmp_path / "cache").read_text() == ""
