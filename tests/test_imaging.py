"""Conversion of scientific images to the 8-bit RGB the models take."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mobilesamv2.errors import InputError
from napari_mobilesamv2.imaging import to_rgb_uint8


def test_uint8_rgb_passes_unchanged():
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(image), image)


def test_grey_uint16_is_percentile_scaled_and_repeated():
    image = np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 20
    rgb = to_rgb_uint8(image)
    assert rgb.shape == (40, 50, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 2]).all()
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
    assert 120 <= rgb[20, 25, 0] <= 135


def test_nan_and_inf_are_mapped_not_propagated():
    image = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    image[0, 0], image[0, 1], image[0, 2] = np.nan, np.inf, -np.inf
    rgb = to_rgb_uint8(image, normalization="minmax")
    assert rgb[0, 0, 0] == 0 and rgb[0, 1, 0] == 255 and rgb[0, 2, 0] == 0
    assert rgb[-1, -1, 0] == 255


def test_all_nan_and_constant_images_give_black():
    assert not to_rgb_uint8(np.full((20, 20), np.nan)).any()
    assert not to_rgb_uint8(np.full((20, 20), 7, np.uint16)).any()


def test_bool_and_negative_ints():
    mask = np.zeros((20, 20), bool)
    mask[5, 5] = True
    assert to_rgb_uint8(mask)[5, 5, 1] == 255 and to_rgb_uint8(mask)[0, 0, 1] == 0
    signed = np.linspace(-1000, 1000, 400).astype(np.int32).reshape(20, 20)
    rgb = to_rgb_uint8(signed, normalization="minmax")
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255


def test_contrast_limits_and_none():
    image = np.full((20, 20), 150.0)
    assert to_rgb_uint8(image, normalization="contrast_limits", contrast_limits=(100, 200))[0, 0, 0] == 128
    assert to_rgb_uint8(image * 3, normalization="none")[0, 0, 0] == 255
    with pytest.raises(InputError, match="needs contrast_limits"):
        to_rgb_uint8(image, normalization="contrast_limits")


def test_rgba_drops_alpha_and_two_channels_fill_red_green():
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 3] = 255
    assert to_rgb_uint8(rgba).shape == (20, 20, 3) and not to_rgb_uint8(rgba).any()
    two = np.stack([np.full((20, 20), 10.0), np.full((20, 20), 20.0)], axis=0)
    two[0, 0, 0] = 0
    two[1, 0, 0] = 0
    rgb = to_rgb_uint8(two, normalization="minmax")
    assert rgb.shape == (20, 20, 3) and rgb[5, 5].tolist() == [255, 255, 0]


def test_many_channels_need_an_explicit_choice():
    image = np.random.default_rng(1).random((7, 24, 24))
    with pytest.raises(InputError, match="cannot tell which axis"):
        to_rgb_uint8(image)
    with pytest.raises(InputError, match="7 channels; choose at most three"):
        to_rgb_uint8(image, channel_axis=0)
    rgb = to_rgb_uint8(image, channel_axis=0, channels=[6, 0, 3], normalization="minmax")
    expected = to_rgb_uint8(image[6], normalization="minmax")[..., 0]
    np.testing.assert_array_equal(rgb[..., 0], expected)
    with pytest.raises(InputError, match=r"channel\(s\) \[9\] do not exist"):
        to_rgb_uint8(image, channel_axis=0, channels=[9])


@pytest.mark.parametrize("shape, message", [((0, 10), "empty"), ((1, 1), "at least 16x16"), ((7, 7), "at least 16x16"),
                                            ((2, 3, 20, 20), "one 2D plane")])
def test_bad_shapes(shape, message):
    with pytest.raises(InputError, match=message):
        to_rgb_uint8(np.zeros(shape, np.uint8))


def test_huge_image_is_refused_before_allocation():
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=(20000, 20000), strides=(0, 0))
    with pytest.raises(InputError, match="segment it in tiles"):
        to_rgb_uint8(huge)
