"""Large layers in napari: tiled segment everything read by window, zarr-backed results, windowed prompts.

The limits are lowered so that a 1024 x 1024 image counts as large (longer than
512 px on a side) and tiles and windows are 256 px.
"""

from __future__ import annotations

import threading

import dask.array as da
import numpy as np
import pytest
from napari.layers import Image, Labels, Points, Shapes
from standin import BlobPipeline, blobs

from napari_mobilesamv2 import EverythingOptions, ImageOptions, InputError, large_io, tiled
from napari_mobilesamv2.engine import run
from napari_mobilesamv2.napari._layers import image_view
from napari_mobilesamv2.napari.api import prepare_everything, prompt_windows, segment_anything, segment_everything

SIDE = 1024
CENTRES = ((100, 100), (120, 700), (400, 300), (700, 800), (900, 150), (512, 512))
TILING = {"tile": 256, "overlap": 64}


@pytest.fixture(autouse=True)
def small_limits(monkeypatch):
    monkeypatch.setattr(large_io, "NAPARI_PLANE_LIMIT", 512)
    monkeypatch.setattr(tiled, "RANGE_SAMPLE_PIXELS", 256 * 256)


class CountingReads:
    """An array that records the shape of every read."""

    def __init__(self, array):
        self._array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.reads: list[tuple[int, ...]] = []

    def __getitem__(self, key):
        region = np.asarray(self._array[key])
        self.reads.append(region.shape)
        return region

    def largest_read(self) -> int:
        return max((int(np.prod(s)) for s in self.reads), default=0)


class RecordingBlobs(BlobPipeline):
    """The stand-in pipeline, recording the shape of every image it embeds."""

    def __init__(self):
        super().__init__()
        self.embedded: list[tuple[int, ...]] = []

    def embed(self, image_rgb):
        self.embedded.append(image_rgb.shape)
        return super().embed(image_rgb)


def big_image() -> np.ndarray:
    return blobs((SIDE, SIDE), CENTRES, radius=10)


def counted_layer(image: np.ndarray, **kwargs) -> tuple[Image, CountingReads]:
    source = CountingReads(image)
    layer = Image(da.from_array(source, chunks=image.shape), name="big", **kwargs)
    source.reads.clear()  # napari looked at the data when making the layer
    return layer, source


def expected_tiled_labels(image: np.ndarray) -> np.ndarray:
    steps = tiled.segment_tiled_steps(BlobPipeline(), image.shape, lambda rows, cols: image[rows, cols],
                                      EverythingOptions(**TILING), {})
    return run(steps).segmentation().labels


def run_steps(job):
    """Run a job's steps, returning its progress and its result (not applied)."""
    steps, progress = job.steps(), []
    while True:
        try:
            progress.append(next(steps))
        except StopIteration as finished:
            return progress, finished.value


# -- segment everything -------------------------------------------------------------------------


def test_large_dask_layer_is_segmented_tile_by_tile_into_a_zarr_backed_layer(tmp_path):
    image = big_image()
    layer, source = counted_layer(image)
    job = prepare_everything(layer, pipeline=BlobPipeline(), labels_folder=tmp_path, **TILING)
    progress, result = run_steps(job)
    assert source.largest_read() <= 256 * 256  # tiles and a strided sample, never the plane
    details = [p.detail for p in progress]
    assert "tile 1 of 25: 1 boxes" in details[1] and details[25].startswith("tile 25 of 25")
    assert details[-1] == "writing labels 1 of 1"
    labels = job.apply(result)
    assert labels.multiscale and [level.shape for level in labels.data] == [(SIDE, SIDE), (512, 512)]
    path = tmp_path / "big_objects.zarr"
    assert labels.metadata["mobilesamv2_labels"] == str(path) and path.is_dir()
    written = np.asarray(labels.data[0])
    np.testing.assert_array_equal(written, expected_tiled_labels(image))
    assert sorted(np.unique(written)) == list(range(len(CENTRES) + 1))
    features = labels.features
    assert features["index"].tolist() == list(range(1, len(CENTRES) + 1))
    assert features["area"].tolist() == [int((written == i).sum()) for i in features["index"]]
    assert features["predicted_iou"].tolist() == pytest.approx([0.9] * len(CENTRES))


def test_a_second_run_writes_a_new_zarr_folder_and_keeps_the_first(tmp_path):
    layer, _ = counted_layer(big_image())
    first = segment_everything(layer, pipeline=BlobPipeline(), labels_folder=tmp_path, **TILING)
    second = segment_everything(layer, pipeline=BlobPipeline(), labels_folder=tmp_path, **TILING)
    assert first.metadata["mobilesamv2_labels"] == str(tmp_path / "big_objects.zarr")
    assert second.metadata["mobilesamv2_labels"] == str(tmp_path / "big_objects_2.zarr")
    np.testing.assert_array_equal(np.asarray(first.data[0]), np.asarray(second.data[0]))


def test_multiscale_layer_is_read_by_window_at_full_resolution(tmp_path):
    image = big_image()
    fine, coarse = CountingReads(image), CountingReads(image[::2, ::2])
    layer = Image([da.from_array(fine, chunks=image.shape), da.from_array(coarse, chunks=(512, 512))],
                  multiscale=True, name="big")
    fine.reads.clear()
    coarse.reads.clear()
    labels = segment_everything(layer, pipeline=BlobPipeline(), labels_folder=tmp_path, **TILING)
    assert coarse.reads == [] and 0 < fine.largest_read() <= 256 * 256
    np.testing.assert_array_equal(np.asarray(labels.data[0]), expected_tiled_labels(image))


def test_a_large_plane_without_a_tile_size_is_tiled_at_the_default_tile(tmp_path, monkeypatch):
    monkeypatch.setattr(tiled, "LARGE_IMAGE_TILE", 256)
    layer, source = counted_layer(big_image())
    job = prepare_everything(layer, pipeline=BlobPipeline(), labels_folder=tmp_path, overlap=64)
    progress, _ = run_steps(job)
    assert source.largest_read() <= 256 * 256
    assert any(p.detail.startswith("tile 1 of 25") for p in progress)


def test_a_tiled_plane_below_the_limit_gives_an_in_memory_layer(tmp_path, monkeypatch):
    monkeypatch.setattr(large_io, "NAPARI_PLANE_LIMIT", 2048)
    image = big_image()
    layer, source = counted_layer(image)
    labels = segment_everything(layer, pipeline=BlobPipeline(), labels_folder=tmp_path, **TILING)
    assert not labels.multiscale and isinstance(labels.data, np.ndarray)
    assert source.largest_read() <= 256 * 256  # still read tile by tile
    assert list(tmp_path.iterdir()) == []
    np.testing.assert_array_equal(labels.data, expected_tiled_labels(image))


def test_a_zarr_backed_layer_is_refused_as_output(tmp_path):
    layer, _ = counted_layer(big_image())
    stored = segment_everything(layer, pipeline=BlobPipeline(), labels_folder=tmp_path, **TILING)
    with pytest.raises(InputError, match="is read from a file .* choose 'new labels layer'"):
        segment_everything(layer, output=stored, pipeline=BlobPipeline(), **TILING)


# -- the dock ------------------------------------------------------------------------------------


def test_dock_shows_progress_per_tile_and_cancel_changes_no_layer(docked, blob_pipeline, wait_done, tmp_path, qtbot):
    viewer, widget = docked(image=big_image(), name="big")
    widget.advanced.controls["tile"].value = 256
    widget.advanced.controls["overlap"].value = 64
    widget.labels_folder.value = tmp_path
    shown = []
    show = widget._show_progress
    widget._show_progress = lambda bar, clock, step: (shown.append(step.detail), show(bar, clock, step))
    widget.run()
    wait_done(widget)
    assert [s for s in shown if s.startswith("tile ")][:2] == ["tile 1 of 25: 1 boxes", "tile 2 of 25: 0 boxes"]
    assert any(s.startswith("decoding tile 1 of") for s in shown) and shown[-1] == "writing labels 1 of 1"
    labels = viewer.layers["big objects"]
    assert isinstance(labels, Labels) and labels.multiscale and len(labels.features) == len(CENTRES)

    before = [layer.name for layer in viewer.layers]
    shown.clear()
    blob_pipeline.gate = threading.Event()  # the decode pass waits in embed
    widget.run()
    qtbot.waitUntil(lambda: any(s.startswith("tile 25 of 25") for s in shown), timeout=30_000)
    widget.cancel()
    blob_pipeline.gate.set()
    wait_done(widget)
    assert widget.status.value.startswith("cancelled")
    assert [layer.name for layer in viewer.layers] == before
    assert not (tmp_path / "big_objects_2.zarr").exists()


# -- segment anything ----------------------------------------------------------------------------


def disk(centre, radius=10, shape=(SIDE, SIDE)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_segment_anything_on_a_large_layer_embeds_only_a_window_and_pastes_the_mask_in_place():
    layer, source = counted_layer(big_image())
    pipeline = RecordingBlobs()
    points = Points([[700, 800]], features={"positive": [True]})
    labels = segment_anything(layer, points=points, pipeline=pipeline, **TILING)
    assert pipeline.embedded == [(256, 256, 3)]
    assert source.largest_read() <= 256 * 256
    assert labels.data.shape == (SIDE, SIDE)
    np.testing.assert_array_equal(labels.data == 1, disk((700, 800)))
    assert labels.data.max() == 1
    assert labels.features["area"].tolist() == [int(disk((700, 800)).sum())]

    # a point in the same window reuses its embedding
    again = segment_anything(layer, points=Points([[695, 805]]), pipeline=pipeline, output=labels, **TILING)
    assert pipeline.embedded == [(256, 256, 3)] and again is labels


def test_prompts_far_apart_get_one_window_each_ids_in_prompt_order_and_one_undo_step():
    layer, _ = counted_layer(big_image())
    pipeline = RecordingBlobs()
    existing = np.zeros((SIDE, SIDE), np.int32)
    existing[0:5, 0:5] = 5
    output = Labels(existing.copy())
    points = Points([[100, 100], [900, 150]], features={"positive": [True, True]})
    box = Shapes([np.array([[385, 285], [385, 315], [415, 315], [415, 285]], float)], shape_type="rectangle")
    segment_anything(layer, points=points, shapes=box, output=output, pipeline=pipeline, **TILING)
    assert pipeline.embedded == [(256, 256, 3)] * 3
    for new_id, centre in zip((6, 7, 8), ((100, 100), (900, 150), (400, 300))):
        np.testing.assert_array_equal(output.data == new_id, disk(centre))
    assert (output.data[0:5, 0:5] == 5).all() and set(np.unique(output.data)) == {0, 5, 6, 7, 8}
    assert output.features["index"].tolist() == [6, 7, 8]
    output.undo()
    np.testing.assert_array_equal(output.data, existing)


def test_prompt_windows_are_aligned_grouped_and_clamped():
    shape, side = (1000, 2000), 256
    # one object in the middle: the grid window (half-window steps) that holds it most centrally
    assert prompt_windows([(500, 700, 501, 701)], shape, side) == [((384, 512, 640, 768), [0])]
    # near the far edge: clamped inside the plane
    assert prompt_windows([(990, 1990, 1000, 2000)], shape, side) == [((744, 1744, 1000, 2000), [0])]
    # two objects within one window share it; a far one gets its own
    windows = prompt_windows([(500, 700, 520, 720), (600, 800, 610, 810), (100, 1500, 110, 1510)], shape, side)
    assert [members for _, members in windows] == [[0, 1], [2]]
    (y0, x0, y1, x1), _ = windows[0]
    assert (y1 - y0, x1 - x0) == (256, 256) and y0 <= 500 and 610 <= y1 and x0 <= 700 and 810 <= x1
    # an object taller than a window: its rows with a margin of side / 8; its columns fit no grid window: centred
    assert prompt_windows([(100, 100, 500, 300)], shape, side) == [((68, 72, 532, 328), [0])]
    # a plane narrower than a window along an axis: the whole axis
    assert prompt_windows([(10, 500, 20, 510)], (100, 2000), side)[0][0][::2] == (0, 100)


def test_read_window_gives_channels_last_pixels_of_one_window():
    data = np.arange(3 * 64 * 96, dtype=np.uint16).reshape(3, 64, 96)
    view = image_view(Image(data), settings=ImageOptions(channel_axis=0))
    window = view.read_window((), slice(10, 20), slice(30, 50))
    np.testing.assert_array_equal(window, np.moveaxis(data, 0, -1)[10:20, 30:50])
    assert view.plane_shape == (64, 96)
    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[5, 7] = (1, 2, 3)
    assert image_view(Image(rgb, rgb=True)).read_window((), slice(5, 6), slice(7, 8)).tolist() == [[[1, 2, 3]]]


@pytest.mark.parametrize("folder", [None, ""])
def test_large_labels_go_to_the_cache_folder_by_default(tmp_path, monkeypatch, folder):
    monkeypatch.setenv("NAPARI_MOBILESAMV2_CACHE", str(tmp_path))
    layer, _ = counted_layer(big_image())
    labels = segment_everything(layer, pipeline=BlobPipeline(), labels_folder=folder, name="cells: run 1", **TILING)
    assert labels.name == "cells: run 1"
    assert labels.metadata["mobilesamv2_labels"] == str(tmp_path / "labels" / "cells_run_1.zarr")


def test_the_real_pipeline_segments_prompts_in_a_window_of_a_large_layer(tiny_pipeline, monkeypatch):
    seen = []
    embed = tiny_pipeline.embed
    monkeypatch.setattr(tiny_pipeline, "embed", lambda rgb: (seen.append(rgb.shape), embed(rgb))[1])
    layer, source = counted_layer(blobs((600, 700), ((300, 650),), radius=10, dtype=np.uint16))
    box = Shapes([np.array([[285, 635], [285, 665], [315, 665], [315, 635]], float)], shape_type="rectangle")
    labels = segment_anything(layer, shapes=box, pipeline=tiny_pipeline, **TILING)
    assert seen == [(256, 256, 3)] and source.largest_read() <= 256 * 256
    assert labels.data.shape == (600, 700) and set(np.unique(labels.data)) <= {0, 1}
    mask = labels.data == 1
    assert not mask[:, :444].any() and not mask[:128].any() and not mask[384:].any()  # window 128:384, 444:700
    assert labels.features["id"].tolist() == ([1] if mask.any() else [])


def test_the_real_pipeline_segments_a_large_layer_tile_by_tile(tiny_pipeline, tmp_path):
    layer, source = counted_layer(blobs((600, 700), ((300, 650), (100, 100)), radius=10, dtype=np.uint16))
    labels = segment_everything(layer, pipeline=tiny_pipeline, labels_folder=tmp_path, imgsz=256, max_prompts=2,
                                **TILING)
    assert source.largest_read() <= 256 * 256
    assert labels.multiscale and labels.data[0].shape == (600, 700)
    written = np.asarray(labels.data[0])
    ids = sorted(int(i) for i in np.unique(written) if i)
    assert labels.features["index"].tolist() == ids
    assert labels.features["area"].tolist() == [int((written == i).sum()) for i in ids]
