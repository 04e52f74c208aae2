"""napari shows out-of-core label images as Labels layers without reading them whole."""

from __future__ import annotations

import numpy as np
import napari.layers

from napari_mobilesamv2 import large_io
from napari_mobilesamv2.large_io import LabelsWriter, open_labels_for_napari


class _CountingReads:
    """An array that counts the pixels read from it."""

    def __init__(self, array):
        self._array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.pixels_read = 0

    def __getitem__(self, key):
        region = np.asarray(self._array[key])
        self.pixels_read += region.size
        return region


def test_large_labels_become_a_multiscale_layer_that_reads_only_the_coarse_level(tmp_path, monkeypatch):
    side = 2048
    with LabelsWriter(tmp_path / "labels.zarr", (side, side)) as writer:
        writer.write((slice(100, 300), slice(1500, 1700)), np.full((200, 200), 9, np.int32))
    monkeypatch.setattr(large_io, "NAPARI_PLANE_LIMIT", 512)
    opened = large_io.open_image

    counted = []

    def counting_open(path, **kwargs):
        image = opened(path, **kwargs)
        image._array = _CountingReads(image.array)
        counted.append(image._array)
        return image

    monkeypatch.setattr(large_io, "open_image", counting_open)
    pyramid = open_labels_for_napari(tmp_path / "labels.zarr")
    layer = napari.layers.Labels(pyramid, multiscale=True)
    assert layer.multiscale and [level.shape for level in layer.data] == [(2048, 2048), (1024, 1024), (512, 512)]
    assert counted[0].pixels_read <= 512 * 512  # napari showed the coarsest level, read every 4th pixel
    np.testing.assert_array_equal(np.unique(np.asarray(layer.data[2][20:80, 370:430])), [0, 9])
