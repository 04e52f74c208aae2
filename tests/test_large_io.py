"""Out-of-core reading and writing: every format round-trips, windows read only their region, outputs are atomic."""

from __future__ import annotations

import errno
import json
import os
import tracemalloc

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_mobilesamv2 import large_io
from napari_mobilesamv2.errors import InputError, OutputError
from napari_mobilesamv2.large_io import (
    LabelsWriter,
    LazyImage,
    as_lazy,
    open_image,
    open_labels_for_napari,
    read_window,
)

H, W = 600, 700


def _pixels(shape, dtype=np.uint16, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, size=shape).astype(dtype)


def _labels(shape, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50_000, size=shape).astype(np.int32)


def _write_pyramid(path, levels):
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(levels[0], subifds=len(levels) - 1, tile=(128, 128), compression="zlib", metadata={"axes": "YX"})
        for level in levels[1:]:
            tiff.write(level, subfiletype=1, tile=(128, 128), compression="zlib")


def _ome_zarr(path, levels, version):
    fmt = 2 if version == "0.4" else 3
    group = zarr.open_group(path, mode="w", zarr_format=fmt)
    for i, level in enumerate(levels):
        group.create_array(str(i), data=level, chunks=(256, 256))
    multiscales = [{"version": version, "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                    "datasets": [{"path": str(i)} for i in range(len(levels))]}]
    if version == "0.4":
        group.attrs["multiscales"] = multiscales
    else:
        group.attrs["ome"] = {"version": version, "multiscales": multiscales}


# ------------------------------------------------------------------------- reading


def test_tiled_compressed_tiff_reads_windows_through_zarr(tmp_path):
    data = _pixels((H, W))
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, data, tile=(256, 256), compression="zlib")
    with open_image(path) as image:
        assert isinstance(image.array, zarr.Array)
        assert (image.shape, image.dtype, image.ndim, image.axes) == ((H, W), np.uint16, 2, "YX")
        assert (image.stack_shape, image.height, image.width, image.has_channels) == ((), H, W, False)
        window = read_window(image, 250, 530, 100, 613)
        assert window.shape == (280, 513) and type(window) is np.ndarray
        np.testing.assert_array_equal(window, data[250:530, 100:613])
        np.testing.assert_array_equal(image[5:9, -3:], data[5:9, -3:])


def test_uncompressed_contiguous_tiff_is_memory_mapped(tmp_path):
    data = _pixels((H, W))
    path = tmp_path / "plain.tiff"
    tifffile.imwrite(path, data)
    image = open_image(path)
    assert isinstance(image.array, np.memmap)
    window = read_window(image, 0, 10, 690, 700)
    assert not isinstance(window, np.memmap)
    np.testing.assert_array_equal(window, data[:10, 690:])


def test_pyramidal_tiff_level_picks_the_resolution(tmp_path):
    full = _pixels((512, 640))
    levels = [full, full[::2, ::2].copy(), full[::4, ::4].copy()]
    path = tmp_path / "pyramid.ome.tif"
    _write_pyramid(path, levels)
    for index, level in enumerate(levels):
        with open_image(path, level=index) as image:
            assert image.level == index and image.n_levels == 3
            assert image.level_shapes == ((512, 640), (256, 320), (128, 160))
            np.testing.assert_array_equal(read_window(image, 3, 100, 7, 120), level[3:100, 7:120])
    assert open_image(path).shape == (512, 640)  # default: full resolution
    with pytest.raises(InputError, match=r"level 3 does not exist .* 3 resolution levels \(levels 0 to 2\)"):
        open_image(path, level=3)


def test_ome_tiff_stack_axes_and_planes(tmp_path):
    data = _pixels((2, 3, 64, 80))
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, data, metadata={"axes": "ZCYX"}, tile=(32, 32), compression="zlib")
    image = open_image(path)
    assert image.axes == "ZCYX" and image.stack_shape == (2, 3) and not image.has_channels
    np.testing.assert_array_equal(read_window(image, 10, 40, 5, 80, plane=(1, 2)), data[1, 2, 10:40, 5:80])
    with pytest.raises(InputError, match=r"stack axis/axes of shape \(2, 3\), so give 2 index/indices, not 1"):
        read_window(image, 0, 1, 0, 1, plane=(1,))
    with pytest.raises(InputError, match="plane index 3 of stack axis 1 is out of range: that axis has 3 entries"):
        read_window(image, 0, 1, 0, 1, plane=(0, 3))


def test_rgb_tiff_windows_keep_the_channels(tmp_path):
    data = _pixels((H, W, 3), np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, data, photometric="rgb", tile=(256, 256), compression="zlib")
    image = open_image(path)
    assert image.axes == "YXS" and image.has_channels and image.stack_shape == ()
    np.testing.assert_array_equal(read_window(image, 1, 599, 300, 301), data[1:599, 300:301])
    assert read_window(image, 0, 5, 0, 6).shape == (5, 6, 3)


def test_zarr_array_and_its_errors(tmp_path):
    data = _pixels((H, W))
    path = tmp_path / "plain.zarr"
    zarr.create_array(path, data=data, chunks=(256, 256))
    image = open_image(path)
    assert image.shape == (H, W) and image.axes is None and image.n_levels == 1
    np.testing.assert_array_equal(read_window(image, 255, 257, 511, 700), data[255:257, 511:])
    with pytest.raises(InputError, match=r"level 1 does not exist .* 1 resolution level \(only level 0\)"):
        open_image(path, level=1)
    with pytest.raises(InputError, match="is a single zarr array; array_path is for groups"):
        open_image(path, array_path="0")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_levels(tmp_path, version):
    full = _pixels((H, W))
    levels = [full, full[::2, ::2].copy()]
    path = tmp_path / "image.ome.zarr"
    _ome_zarr(path, levels, version)
    for index, level in enumerate(levels):
        image = open_image(path, level=index)
        assert image.axes == "YX" and image.level_shapes == ((H, W), (300, 350))
        np.testing.assert_array_equal(read_window(image, 0, 300, 17, 350), level[:300, 17:350])
    with pytest.raises(InputError, match=r"level 2 does not exist .* 2 resolution levels \(levels 0 to 1\)"):
        open_image(path, level=2)


def test_zarr_group_needs_array_path_when_it_holds_several_arrays(tmp_path):
    group = zarr.open_group(tmp_path / "many.zarr", mode="w")
    raw, nuclei = _pixels((60, 70), seed=1), _pixels((60, 70), seed=2)
    group.create_array("raw", data=raw)
    group.create_group("channels").create_array("nuclei", data=nuclei)
    with pytest.raises(InputError, match="holds several arrays .* array_path .*: channels/nuclei, raw$"):
        open_image(tmp_path / "many.zarr")
    np.testing.assert_array_equal(open_image(tmp_path / "many.zarr", array_path="channels/nuclei")[...], nuclei)
    with pytest.raises(InputError, match="has no array or group 'cells'; arrays found: channels/nuclei, raw"):
        open_image(tmp_path / "many.zarr", array_path="cells")
    single = zarr.open_group(tmp_path / "one.zarr", mode="w")
    single.create_array("only", data=raw)
    np.testing.assert_array_equal(open_image(tmp_path / "one.zarr")[...], raw)


def test_png_is_read_whole_through_the_same_interface(tmp_path):
    import skimage.io

    data = _pixels((60, 70, 3), np.uint8)
    skimage.io.imsave(tmp_path / "small.png", data, check_contrast=False)
    image = open_image(tmp_path / "small.png")
    assert isinstance(image.array, np.ndarray) and image.has_channels
    np.testing.assert_array_equal(read_window(image, 10, 20, 30, 70), data[10:20, 30:70])
    with pytest.raises(InputError, match="only level 0"):
        open_image(tmp_path / "small.png", level=1)


def test_dask_arrays_and_multiscale_lists(tmp_path):
    full = _pixels((3, 200, 300))
    lazy = as_lazy(da.from_array(full, chunks=(1, 64, 64)))
    assert lazy.stack_shape == (3,) and not lazy.has_channels
    window = read_window(lazy, 10, 20, 30, 40, plane=(2,))
    assert type(window) is np.ndarray
    np.testing.assert_array_equal(window, full[2, 10:20, 30:40])
    pyramid = [full, full[:, ::2, ::2], full[:, ::4, ::4]]
    coarse = as_lazy(pyramid, level=2)
    assert coarse.shape == (3, 50, 75) and coarse.level_shapes[0] == (3, 200, 300)
    np.testing.assert_array_equal(read_window(coarse, 0, 50, 0, 75, plane=(1,)), full[1, ::4, ::4])
    np.testing.assert_array_equal(read_window(full[0], 1, 2, 3, 4), full[0, 1:2, 3:4])  # plain arrays wrapped
    assert as_lazy(coarse, level=2) is coarse
    with pytest.raises(InputError, match=r"level 3 does not exist in the multiscale list: it has 3 resolution levels"):
        as_lazy(pyramid, level=3)
    with pytest.raises(InputError, match="the multiscale list is empty"):
        as_lazy([])
    with pytest.raises(InputError, match="the image is a str, not an array"):
        as_lazy("image.tif")


def test_open_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="missing.tif does not exist; check the path"):
        open_image(tmp_path / "missing.tif")
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(InputError, match="cannot read .*junk.tif as a TIFF .* save it again as TIFF"):
        open_image(tmp_path / "junk.tif")
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="cannot read .*folder as a zarr array or group"):
        open_image(tmp_path / "folder")
    tifffile.imwrite(tmp_path / "ok.tif", _pixels((20, 30)))
    with pytest.raises(InputError, match="array_path is for zarr groups"):
        open_image(tmp_path / "ok.tif", array_path="0")


def test_window_must_lie_inside_the_plane(tmp_path):
    image = as_lazy(np.zeros((40, 50), np.uint8))
    for window in [(0, 41, 0, 10), (-1, 3, 0, 10), (5, 5, 0, 10), (0, 10, 20, 51)]:
        with pytest.raises(InputError, match="is empty or not inside the 40 x 50 plane"):
            read_window(image, *window)


def test_window_of_large_compressed_tiff_reads_only_its_tiles(tmp_path):
    side = 4096
    full = (np.arange(side, dtype=np.uint16)[:, None] * 7 + np.arange(side, dtype=np.uint16)[None, :]).astype(np.uint16)
    path = tmp_path / "large.tif"
    tifffile.imwrite(path, full, tile=(256, 256), compression="zlib")
    expected = full[1000:1300, 2000:2300].copy()
    del full
    tracemalloc.start()
    try:
        with open_image(path) as image:
            window = read_window(image, 1000, 1300, 2000, 2300)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(window, expected)
    full_bytes = side * side * 2
    assert peak < full_bytes / 16, f"reading a 300 x 300 window took {peak / 2**20:.1f} MiB"


# ------------------------------------------------------------------------- writing


def _write_in_blocks(writer, labels, block=256):
    """Write `labels` in blocks, bottom-right first (the writer must not need any order)."""
    height, width = labels.shape[-2:]
    for plane in np.ndindex(*labels.shape[:-2]):
        for y in reversed(range(0, height, block)):
            for x in reversed(range(0, width, block)):
                window = plane + (slice(y, min(y + block, height)), slice(x, min(x + block, width)))
                writer.write(window, labels[window])


@pytest.mark.parametrize("name", ["labels.zarr", "labels.ome.zarr", "labels.tif", "labels.ome.tiff"])
@pytest.mark.parametrize("shape", [(H, W), (3, 300, 350)])
def test_labels_round_trip(tmp_path, name, shape):
    labels = _labels(shape)
    path = tmp_path / name
    with LabelsWriter(path, shape, chunks=None) as writer:
        _write_in_blocks(writer, labels)
        np.testing.assert_array_equal(writer.read((slice(None),) * len(shape)), labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    image = open_image(path, has_channels=False)
    assert image.dtype == np.int32 and image.shape == shape
    np.testing.assert_array_equal(image[...], labels)
    axes = "YX" if len(shape) == 2 else "ZYX"
    assert image.axes == axes
    if name == "labels.ome.zarr":
        assert zarr.open_group(path, mode="r").attrs["multiscales"][0]["name"] == "labels"
    if name.endswith(".ome.tiff"):
        with tifffile.TiffFile(path) as tif:
            assert tif.is_ome and tif.series[0].axes == axes


def test_zarr_output_is_chunked_int32(tmp_path):
    with LabelsWriter(tmp_path / "labels.zarr", (H, W)) as writer:
        writer.write((slice(0, 10), slice(0, 10)), np.full((10, 10), 7, np.uint8))
    array = zarr.open_array(tmp_path / "labels.zarr", mode="r")
    assert array.dtype == np.int32 and array.chunks == (H, W)  # default 1024 x 1024 chunks, clipped to the shape
    assert array.metadata.dimension_names == ("y", "x")
    assert int(array[5, 5]) == 7 and int(array[10, 10]) == 0
    with LabelsWriter(tmp_path / "chunked.zarr", (2, H, W), chunks=(1, 256, 256)) as writer:
        pass
    assert zarr.open_array(tmp_path / "chunked.zarr", mode="r").chunks == (1, 256, 256)


def test_ome_zarr_output_has_v04_multiscales(tmp_path):
    path = tmp_path / "out.zarr"
    with LabelsWriter(path, (2, H, W), ome=True) as writer:
        writer.write((1, slice(0, 5), slice(0, 5)), np.ones((5, 5), np.int32))
    attrs = json.loads((path / ".zattrs").read_text())
    assert attrs["multiscales"] == [
        {
            "version": "0.4",
            "name": "out",
            "axes": [{"name": "z", "type": "space"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}],
        }
    ]
    assert json.loads((path / "0" / ".zarray").read_text())["dimension_separator"] == "/"
    assert int(open_image(path)[1, 0, 0]) == 1


def test_tiff_output_is_tiled_zlib_and_bigtiff_only_when_large(tmp_path, monkeypatch):
    labels = _labels((H, W))
    with LabelsWriter(tmp_path / "small.tif", (H, W), tile=(128, 256)) as writer:
        _write_in_blocks(writer, labels)
    with tifffile.TiffFile(tmp_path / "small.tif") as tif:
        page = tif.pages[0]
        assert (page.tilelength, page.tilewidth, page.compression) == (128, 256, tifffile.COMPRESSION.ADOBE_DEFLATE)
        assert not tif.is_bigtiff and tif.series[0].axes == "YX"
        np.testing.assert_array_equal(tif.asarray(), labels)
    monkeypatch.setattr(large_io, "BIGTIFF_THRESHOLD", H * W * 4 - 1)
    with LabelsWriter(tmp_path / "big.tif", (H, W)) as writer:
        _write_in_blocks(writer, labels)
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert tif.is_bigtiff
        np.testing.assert_array_equal(tif.asarray(), labels)


def test_writer_checks_blocks(tmp_path):
    writer = LabelsWriter(tmp_path / "labels.zarr", (H, W))
    with pytest.raises(ValueError, match=r"the block has the shape \(10, 10\), the window .* needs \(10, 20\)"):
        writer.write((slice(0, 10), slice(0, 20)), np.zeros((10, 10), np.int32))
    with pytest.raises(ValueError, match=r"labels 0..4294967295 do not fit int32"):
        writer.write((slice(0, 1), slice(0, 2)), np.array([[0, 2**32 - 1]], np.int64))
    with pytest.raises(ValueError, match="is not inside the shape"):
        writer.write((slice(590, 610), slice(0, 1)), np.zeros((20, 1), np.int32))
    with pytest.raises(ValueError, match="labels are integers, not float32"):
        writer.write((slice(0, 1), slice(0, 1)), np.zeros((1, 1), np.float32))
    writer.commit()
    with pytest.raises(RuntimeError, match="is committed; open a new LabelsWriter"):
        writer.write((slice(0, 1), slice(0, 1)), np.zeros((1, 1), np.int32))
    with pytest.raises(OutputError, match="end its name with .zarr, .ome.zarr, .tif or .tiff"):
        LabelsWriter(tmp_path / "labels.png", (H, W))


def _previous_output(path):
    with LabelsWriter(path, (H, W)) as writer:
        writer.write((slice(None), slice(None)), np.full((H, W), 5, np.int32))


def _assert_previous_output(path):
    image = open_image(path)
    assert image.shape == (H, W) and int(image[...].min()) == int(image[...].max()) == 5


@pytest.mark.parametrize("name", ["labels.zarr", "labels.ome.zarr", "labels.tif"])
def test_an_exception_between_writes_keeps_the_previous_output(tmp_path, name):
    path = tmp_path / name
    _previous_output(path)
    with pytest.raises(RuntimeError, match="engine failed"):
        with LabelsWriter(path, (H, W)) as writer:
            writer.write((slice(0, 256), slice(0, 256)), np.ones((256, 256), np.int32))
            raise RuntimeError("engine failed")
    _assert_previous_output(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("name", ["labels.zarr", "labels.tif"])
def test_a_crash_leaves_the_previous_output_and_partial_files_the_next_run_removes(tmp_path, name):
    path = tmp_path / name
    _previous_output(path)
    crashed = LabelsWriter(path, (H, W))
    crashed.write((slice(0, 256), slice(0, 256)), np.ones((256, 256), np.int32))
    del crashed  # no commit, no abort: what a killed process leaves
    assert any(p.name.startswith(name + ".partial") for p in tmp_path.iterdir())
    _assert_previous_output(path)
    labels = _labels((H, W))
    with LabelsWriter(path, (H, W)) as writer:
        _write_in_blocks(writer, labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    np.testing.assert_array_equal(open_image(path)[...], labels)


def test_a_crash_mid_commit_of_a_zarr_folder_is_repaired(tmp_path):
    path = tmp_path / "labels.zarr"
    _previous_output(path)
    os.replace(path, tmp_path / "labels.zarr.previous")  # killed between the two renames of a commit
    writer = LabelsWriter(path, (H, W))
    _assert_previous_output(path)  # restored when the next writer opens
    assert not (tmp_path / "labels.zarr.previous").exists()
    writer.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.zarr"]


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("name", ["labels.zarr", "labels.ome.zarr"])
def test_full_disk_while_writing_zarr(tmp_path, monkeypatch, name):
    path = tmp_path / name
    _previous_output(path)
    writer = LabelsWriter(path, (H, W))
    monkeypatch.setattr(zarr.storage._local, "_put", _no_space)
    with pytest.raises(OutputError) as caught:
        writer.write((slice(0, 256), slice(0, 256)), np.ones((256, 256), np.int32))
    message = str(caught.value)
    assert message == f"cannot write {path}: the disk is full; free some space or write to another disk; " \
                      "nothing was written (an existing output is kept)"
    monkeypatch.undo()
    _assert_previous_output(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    with pytest.raises(RuntimeError, match="is aborted"):
        writer.commit()


def test_full_disk_while_committing_tiff(tmp_path, monkeypatch):
    path = tmp_path / "labels.tif"
    _previous_output(path)
    writer = LabelsWriter(path, (H, W))
    _write_in_blocks(writer, _labels((H, W)))

    def write_half_then_fail(self, *args, **kwargs):
        self._fh.write(b"\0" * 1000)
        _no_space()

    monkeypatch.setattr(tifffile.TiffWriter, "write", write_half_then_fail)
    with pytest.raises(OutputError, match="labels.tif: the disk is full; .*an existing output is kept"):
        writer.commit()
    monkeypatch.undo()
    _assert_previous_output(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]


def test_unwritable_outputs(tmp_path, monkeypatch):
    for name in ("labels.zarr", "labels.tif"):
        with pytest.raises(OutputError, match="missing of the output .* does not exist; create the folder"):
            LabelsWriter(tmp_path / "missing" / name, (H, W))
    (tmp_path / "data.zarr").mkdir()
    (tmp_path / "data.zarr" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="exists and is not a zarr store, so it is not replaced"):
        LabelsWriter(tmp_path / "data.zarr", (H, W))
    assert (tmp_path / "data.zarr" / "keep.txt").read_text() == "mine"

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(zarr.storage._local, "_put", denied)
    with pytest.raises(OutputError, match=r"labels.zarr: permission denied; choose a folder you can write to"):
        LabelsWriter(tmp_path / "labels.zarr", (H, W))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr"]
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    for name in ("labels.zarr", "labels.tif"):
        with pytest.raises(OutputError, match="permission denied; choose a folder you can write to"):
            LabelsWriter(tmp_path / name, (H, W))


def test_tiff_output_memory_does_not_grow_with_the_image(tmp_path):
    side = 4096
    path = tmp_path / "large.tif"
    cells = np.arange(1, 16 * 16 + 1, dtype=np.int32).reshape(16, 16)
    block = np.repeat(np.repeat(cells, 64, axis=0), 64, axis=1)  # 1024 x 1024, one label per 64 x 64 square
    tracemalloc.start()
    try:
        with LabelsWriter(path, (side, side)) as writer:
            for y in range(0, side, 1024):
                for x in range(0, side, 1024):
                    writer.write((slice(y, y + 1024), slice(x, x + 1024)), block)
            tracemalloc.reset_peak()
            writer.commit()
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    full_bytes = side * side * 4
    assert peak < full_bytes / 8, f"committing took {peak / 2**20:.1f} MiB"
    np.testing.assert_array_equal(read_window(open_image(path), 3100, 3200, 1100, 1200), block[28:128, 76:176])


# ------------------------------------------------------------------------- napari


@pytest.mark.parametrize("name", ["labels.zarr", "labels.ome.zarr", "labels.tif"])
def test_labels_open_lazily_for_napari(tmp_path, name, monkeypatch):
    labels = _labels((H, W))
    with LabelsWriter(tmp_path / name, (H, W)) as writer:
        _write_in_blocks(writer, labels)
    single = open_labels_for_napari(tmp_path / name)
    assert isinstance(single, da.Array) and single.dtype == np.int32
    np.testing.assert_array_equal(single[100:200, 650:].compute(), labels[100:200, 650:])
    monkeypatch.setattr(large_io, "NAPARI_PLANE_LIMIT", 200)
    pyramid = open_labels_for_napari(tmp_path / name)
    assert [level.shape for level in pyramid] == [(H, W), (300, 350), (150, 175)]
    np.testing.assert_array_equal(pyramid[2].compute(), labels[::4, ::4])
    assert isinstance(open_labels_for_napari(tmp_path / name, multiscale=False), da.Array)


def test_pyramidal_labels_use_the_file_levels(tmp_path):
    full = _labels((512, 640))
    _write_pyramid(tmp_path / "pyramid.tif", [full, full[::2, ::2].copy()])
    pyramid = open_labels_for_napari(tmp_path / "pyramid.tif")
    assert [level.shape for level in pyramid] == [(512, 640), (256, 320)]
    np.testing.assert_array_equal(pyramid[1].compute(), full[::2, ::2])


def test_lazy_image_is_a_lazy_array_like(tmp_path):
    data = _pixels((H, W))
    image = as_lazy(data)
    assert isinstance(image, LazyImage) and len(image) == H
    np.testing.assert_array_equal(np.asarray(image), data)
    assert "shape=(600, 700)" in repr(image)
    dask_view = image.to_dask()
    assert dask_view.chunksize == (H, W)
    np.testing.assert_array_equal(dask_view.compute(), data)
