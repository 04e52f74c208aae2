"""Tiled segment everything of large images: results, zarr output, embedding cache and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import zarr

from napari_mobilesamv2 import engine
from napari_mobilesamv2.cli import main
from napari_mobilesamv2.decode.labels import assemble_labels
from napari_mobilesamv2.embedding_cache import EmbeddingCache
from napari_mobilesamv2.errors import InputError
from napari_mobilesamv2.export import decode_rle
from napari_mobilesamv2.options import EverythingOptions
from napari_mobilesamv2.resume import RunRecord
from napari_mobilesamv2.tiled import segment_tiled_steps
from napari_mobilesamv2.tiling import owner_tile, tile_grid

from .conftest import DETECTOR_FIXTURE, synthetic_cells, write_weight_files

TILED = EverythingOptions(tile=256, overlap=64, imgsz=256, max_prompts=12)


@pytest.fixture(scope="module")
def mosaic():
    """A 600 x 700 uint16 'mosaic' with many small cells."""
    return synthetic_cells((600, 700), n=60, seed=4, dtype=np.uint16)


def _tiled(model, image, options=TILED, **kwargs):
    steps = segment_tiled_steps(model, image.shape[:2], lambda rows, cols: image[rows, cols], options, {}, **kwargs)
    return engine.run(steps)


@pytest.fixture(scope="module")
def tiled_run(tiny_pipeline, mosaic):
    progress = []
    steps = segment_tiled_steps(tiny_pipeline, mosaic.shape, lambda r, c: mosaic[r, c], TILED, {})
    return engine.run(steps, progress.append), progress


def test_tiled_result_has_one_id_per_merged_box_and_paints_like_the_whole(tiled_run, mosaic):
    result, progress = tiled_run
    assert len(result) > 0 and len(result.crops) == len(result.score) == len(result.tile)
    # 3 x 4 tiles of 256 px with 64 px overlap (rows from 0, 192, 344; columns from 0, 192, 384, 444)
    assert [p.stage for p in progress][:12] == ["detecting"] * 12
    assert progress[11].detail.startswith("tile 12 of 12")
    assert {p.stage for p in progress[12:]} == {"decoding"}
    assert np.all(np.diff(result.score) <= 0)  # ids follow the merged detector order
    whole = result.segmentation()
    labels, _ = assemble_labels(result.crops, mosaic.shape)
    np.testing.assert_array_equal(whole.labels, labels)
    stitched = np.zeros(mosaic.shape, np.int32)
    for y0 in range(0, 600, 250):
        for x0 in range(0, 700, 300):
            rows, cols = slice(y0, min(600, y0 + 250)), slice(x0, min(700, x0 + 300))
            stitched[rows, cols] = result.paint(rows, cols)[0]
    np.testing.assert_array_equal(stitched, labels)
    assert set(np.unique(whole.table()["tile"])) <= set(range(12))


def test_every_box_is_decoded_on_a_tile_that_contains_it(tiled_run, mosaic):
    result = tiled_run[0]
    tiles = tile_grid(mosaic.shape, 256, 64)
    owner, whole = owner_tile(result.boxes_xyxy, tiles, mosaic.shape)
    np.testing.assert_array_equal(result.tile, owner)
    for box, index in zip(result.boxes_xyxy[whole], result.tile[whole]):
        tile = tiles[index]
        assert tile.x0 <= box[0] and box[2] <= tile.x1 and tile.y0 <= box[1] and box[3] <= tile.y1
    # objects larger than a tile (random weights find some) are decoded where most of them lies


def test_a_tile_as_large_as_the_image_gives_the_untiled_labels(tmp_path, weights, mosaic):
    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, mosaic[:300, :400])
    untiled, tiled = tmp_path / "untiled.tif", tmp_path / "tiled.tif"
    common = [str(image), *weights, "--imgsz", "256", "--max-prompts", "12"]
    assert main(["segment-everything", *common, "--labels", str(untiled)]) == 0
    assert main(["segment-everything", *common, "--tile", "512", "--labels", str(tiled)]) == 0
    np.testing.assert_array_equal(tifffile.imread(untiled), tifffile.imread(tiled))


@pytest.fixture(scope="module")
def weights(tmp_path_factory, sam_decoder):
    encoder_path, decoder_path = write_weight_files(tmp_path_factory.mktemp("weights"), sam_decoder, seed=20)
    return ["--encoder", "tiny_vit", "--encoder-weights", str(encoder_path), "--decoder-weights", str(decoder_path),
            "--detector-weights", str(DETECTOR_FIXTURE), "--trust-weights", "--device", "cpu", "--no-download"]


def test_cli_writes_zarr_labels_of_the_image_shape_and_matching_proposals(tmp_path, weights, mosaic):
    image = tmp_path / "mosaic.tif"
    tifffile.imwrite(image, mosaic, tile=(256, 256))
    labels_path, proposals_path = tmp_path / "labels.zarr", tmp_path / "proposals.json"
    code = main(["segment-everything", str(image), *weights, "--tile", "256", "--overlap", "64", "--imgsz", "256",
                 "--max-prompts", "12", "--labels", str(labels_path), "--proposals", str(proposals_path)])
    assert code == 0
    labels = zarr.open_array(str(labels_path), mode="r")
    assert labels.shape == (600, 700) and labels.dtype == np.int32
    proposals = json.loads(proposals_path.read_text())
    assert len(proposals) > 0 and int(np.asarray(labels).max()) <= len(proposals)
    repainted = np.zeros((600, 700), np.int32)
    masks = [decode_rle(p["segmentation"]) for p in proposals]
    for k in np.argsort([-m.sum() for m in masks], kind="stable"):
        repainted[masks[k]] = proposals[k]["id"]
    np.testing.assert_array_equal(repainted, np.asarray(labels))
    assert not (tmp_path / "labels.zarr.run").exists()  # the record goes once the outputs are complete


def test_embedding_cache_gives_the_same_labels_without_encoding_again(tiny_pipeline, mosaic, tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path / "embeddings")
    first = _tiled(tiny_pipeline, mosaic, embeddings=cache)
    calls = []
    original = tiny_pipeline.embed
    monkeypatch.setattr(tiny_pipeline, "embed", lambda rgb: calls.append(1) or original(rgb))
    second = _tiled(tiny_pipeline, mosaic, embeddings=cache)
    assert calls == []
    np.testing.assert_array_equal(first.segmentation().labels, second.segmentation().labels)


def _identity():
    return {"image": "mosaic", "options": TILED.to_dict()}


def test_an_interrupted_run_resumes_to_the_same_result(tiny_pipeline, tiled_run, mosaic, tmp_path):
    uninterrupted = tiled_run[0]
    record = RunRecord(tmp_path / "out.run", _identity())
    steps = segment_tiled_steps(tiny_pipeline, mosaic.shape, lambda r, c: mosaic[r, c], TILED, {}, record=record)
    for progress in steps:
        if progress.stage == "decoding":
            break  # stopped after the first decoded tile
    del steps
    resumed_record = RunRecord(tmp_path / "out.run", _identity(), resume=True)
    assert resumed_record.resumed_tiles == 13  # 12 tiles' boxes and one tile's masks
    resumed = _tiled(tiny_pipeline, mosaic, record=resumed_record)
    np.testing.assert_array_equal(resumed.segmentation().labels, uninterrupted.segmentation().labels)
    np.testing.assert_array_equal(resumed.predicted_iou, uninterrupted.predicted_iou)
    np.testing.assert_array_equal(resumed.boxes_xyxy, uninterrupted.boxes_xyxy)


def test_a_record_of_other_settings_is_refused(tmp_path):
    RunRecord(tmp_path / "out.run", _identity())
    other = {**_identity(), "options": TILED.replace(conf=0.3).to_dict()}
    with pytest.raises(InputError, match=r"belongs to another run \(its options differ\); run without --resume"):
        RunRecord(tmp_path / "out.run", other, resume=True)
    fresh = RunRecord(tmp_path / "out.run", other)  # without resume: starts over
    assert fresh.resumed_tiles == 0


@pytest.mark.parametrize("tile, overlap, message", [
    (128, 16, "tile must be between 256 and 65536, not 128"),
    (512, 256, "overlap must be from 0 to 255 px, less than half the tile of 512 px (got 256)"),
])
def test_bad_tiling_is_one_clear_line(tmp_path, tile, overlap, message, capsys):
    image = tmp_path / "i.tif"
    tifffile.imwrite(image, np.zeros((64, 64), np.uint8))
    code = main(["segment-everything", str(image), "--tile", str(tile), "--overlap", str(overlap),
                 "--labels", str(tmp_path / "o.zarr")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("o.zarr*"))


def test_killed_run_resumes_to_identical_outputs(tmp_path, weights, mosaic):
    """A real process killed with SIGKILL half-way, then the same command with --resume."""
    image = tmp_path / "mosaic.tif"
    tifffile.imwrite(image, mosaic)
    command = [sys.executable, "-m", "napari_mobilesamv2.cli", "segment-everything", str(image), *weights,
               "--tile", "256", "--overlap", "64", "--imgsz", "256", "--max-prompts", "12"]
    reference = tmp_path / "reference"
    reference.mkdir()
    subprocess.run([*command, "--labels", str(reference / "l.zarr"), "--proposals", str(reference / "p.json")],
                   check=True, capture_output=True, timeout=600)
    out = tmp_path / "out"
    out.mkdir()
    outputs = ["--labels", str(out / "l.zarr"), "--proposals", str(out / "p.json")]
    process = subprocess.Popen([*command, *outputs], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = out / "l.zarr.run"
    deadline = time.monotonic() + 600
    while len(list(record.glob("masks-*.npz"))) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "l.zarr").exists() and record.is_dir()
    subprocess.run([*command, *outputs, "--resume"], check=True, capture_output=True, timeout=600)
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(out / "l.zarr"), mode="r")),
                                  np.asarray(zarr.open_array(str(reference / "l.zarr"), mode="r")))
    assert json.loads((out / "p.json").read_text()) == json.loads((reference / "p.json").read_text())
    assert not record.exists()


def test_the_python_api_tiles_large_planes_and_not_small_ones(tiny_pipeline, tiled_run, mosaic):
    tiled = tiny_pipeline.segment_everything(mosaic, TILED)
    np.testing.assert_array_equal(tiled.labels, tiled_run[0].segmentation().labels)
    assert "tile" in tiled.table()
    small = mosaic[:200, :250]
    options = TILED.replace(tile=256)
    np.testing.assert_array_equal(tiny_pipeline.segment_everything(small, options).labels,
                                  tiny_pipeline.segment_everything(small, options.replace(tile=None)).labels)


def test_zarr_stores_are_images_on_the_command_line(tmp_path):
    from pathlib import Path

    from napari_mobilesamv2.batch import open_plane, read_whole
    from napari_mobilesamv2.cli import collect_images

    pixels = np.random.default_rng(0).integers(0, 4000, (300, 400)).astype(np.uint16)
    store = zarr.create_array(str(tmp_path / "img.zarr"), shape=pixels.shape, dtype=pixels.dtype, chunks=(128, 128))
    store[:] = pixels
    assert collect_images([tmp_path]) == [tmp_path / "img.zarr"]
    np.testing.assert_array_equal(read_whole(Path(tmp_path / "img.zarr")), pixels)
    lazy = open_plane(tmp_path / "img.zarr")
    assert (lazy.height, lazy.width) == (300, 400)
