"""Turn scientific images (any dtype, grey or multi-channel) into the 8-bit RGB the models take.

The detector and SAM were trained on 8-bit RGB photos. Microscopy data is often
uint16/float, has NaNs, or has 1, 2 or many channels, so it is mapped explicitly:

* ``normalization="auto"`` (default): uint8 passes unchanged, bool becomes 0/255,
  anything else is scaled by percentiles.
* ``"percentile"``: the `percentiles` (default 1 and 99.8) of the finite values map
  to 0 and 255, per channel.
* ``"minmax"``: the finite minimum and maximum map to 0 and 255, per channel.
* ``"contrast_limits"``: the given (low, high) map to 0 and 255 (napari's layer
  contrast limits).
* ``"none"``: values are clipped to 0..255.

NaN and -Inf become 0 and +Inf becomes 255. One channel is repeated into R, G and B;
two channels become R and G (B = 0); more than three channels need an explicit
choice of at most three, so none is silently dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)

NORMALIZATIONS = ("auto", "percentile", "minmax", "contrast_limits", "none")
MIN_SIDE = 16
MAX_PIXELS = 8192 * 8192


def check_plane_shape(height: int, width: int) -> None:
    """Refuse images that are too small to segment or too large to hold safely."""
    if height * width == 0:
        raise InputError(f"the image is empty ({height}x{width} pixels)")
    if min(height, width) < MIN_SIDE:
        raise InputError(
            f"the image is {height}x{width} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed "
            "(upsample it first if the objects are really that small)"
        )
    if height * width > MAX_PIXELS:
        raise InputError(
            f"the image is {height}x{width} pixels ({height * width / 1e6:.0f} MP), more than the "
            f"{MAX_PIXELS / 1e6:.0f} MP one untiled run can hold; segment it in tiles (--tile 1024 on the "
            "command line, tile=1024 in Python, 'tile' in napari's advanced settings)"
        )


def channels_last(image: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """Return a 2D image or an (H, W, C) view with the channels last.

    Without `channel_axis`, a 3D array whose last axis has 2 to 4 entries is read as
    channels-last (2 channels, RGB or RGBA; no image side is that short); one whose
    first axis has 2-4 entries and last axis more is read as channel-first. Anything
    else needs `channel_axis`.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        return image
    if image.ndim != 3:
        raise InputError(
            f"expected one 2D plane (Y, X) or (Y, X, C); got an array of shape {image.shape}. "
            "Segment one plane at a time (e.g. image[z]; in napari the 'whole stack' scope does every plane) "
            "and give channel_axis for channels"
        )
    if channel_axis is None:
        if image.shape[-1] in (2, 3, 4):
            return image
        if 2 <= image.shape[0] <= 4 < image.shape[-1]:
            return np.moveaxis(image, 0, -1)
        raise InputError(
            f"cannot tell which axis of the shape {image.shape} holds channels; pass channel_axis "
            "(--channel-axis on the command line), or pick one plane if it is a stack"
        )
    if not -3 <= channel_axis < 3:
        raise InputError(
            f"channel_axis {channel_axis} does not exist in an array of shape {image.shape}; use 0, 1 or 2"
        )
    return np.moveaxis(image, channel_axis, -1)


def select_channels(image: np.ndarray, channels: Sequence[int] | None) -> np.ndarray:
    """Pick at most three channels of an (H, W, C) image (RGBA drops alpha by default)."""
    if image.ndim == 2:
        return image[..., None]
    n = image.shape[-1]
    if channels is None:
        if n == 4:
            return image[..., :3]
        if n > 3:
            raise InputError(
                f"the image has {n} channels; choose at most three to feed R, G, B "
                "(channels=[...], --channels 0,1,2 on the command line) so that none is dropped silently"
            )
        return image
    channels = list(channels)
    if not 1 <= len(channels) <= 3:
        raise InputError(f"choose one to three channels, not {len(channels)}")
    bad = [c for c in channels if not -n <= c < n]
    if bad:
        raise InputError(f"channel(s) {bad} do not exist; the image has {n} channels")
    return image[..., channels]


def scale_to_uint8(
    image: np.ndarray,
    normalization: str = "auto",
    percentiles: tuple[float, float] = (1.0, 99.8),
    contrast_limits: tuple[float, float] | None = None,
) -> np.ndarray:
    """Map an (H, W, C) array of any numeric dtype to uint8 (see module docstring)."""
    if normalization not in NORMALIZATIONS:
        raise InputError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, not {normalization!r}")
    low, high = (float(v) for v in percentiles)
    if not 0.0 <= low < high <= 100.0:
        raise InputError(f"percentiles must be (low, high) with 0 <= low < high <= 100, not {tuple(percentiles)}")
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise InputError(f"images of dtype {image.dtype} are not supported; use integers or floats")
    if normalization == "auto":
        if image.dtype == np.uint8:
            return image
        normalization = "percentile"
    values = image.astype(np.float64)
    out = np.empty(image.shape, dtype=np.uint8)
    per_channel = contrast_limits is not None and np.ndim(contrast_limits) == 2
    for c in range(values.shape[-1]):
        channel = values[..., c]
        limits = contrast_limits[c] if per_channel else contrast_limits
        low, high = _channel_range(channel, normalization, percentiles, limits)
        out[..., c] = _rescale(channel, low, high)
    return out


def intensity_ranges(
    sample: np.ndarray,
    *,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    normalization: str = "auto",
    percentiles: tuple[float, float] = (1.0, 99.8),
    contrast_limits: tuple[float, float] | None = None,
) -> dict:
    """Conversion keywords that map every part of an image the way `sample` of it is mapped.

    Percentile and min-max normalization depend on the pixels converted, so the tiles
    of a large image would each get their own mapping. This measures the ranges once
    on `sample` (the whole plane, or a regular subsample of it) and returns keywords of
    :func:`to_rgb_uint8` with those ranges as per-channel ``contrast_limits``.

    Returns
    -------
    dict
        Keywords for :func:`to_rgb_uint8`; unchanged ones where no range is measured
        (uint8 with ``auto``, ``none``, ``contrast_limits``, bool images).
    """
    given = {"normalization": normalization, "percentiles": percentiles, "contrast_limits": contrast_limits}
    if channel_axis is not None:
        given["channel_axis"] = channel_axis
    if channels is not None:
        given["channels"] = channels
    picked = select_channels(channels_last(sample, channel_axis), channels)
    if picked.ndim == 2:
        picked = picked[..., None]
    if normalization in ("none", "contrast_limits") or picked.dtype == bool or (
            normalization == "auto" and picked.dtype == np.uint8):
        return given
    mode = "percentile" if normalization == "auto" else normalization
    values = picked.astype(np.float64)
    limits = [_channel_range(values[..., c], mode, percentiles, None) for c in range(values.shape[-1])]
    return {**given, "normalization": "contrast_limits", "contrast_limits": limits}


def _channel_range(channel, normalization, percentiles, contrast_limits) -> tuple[float, float]:
    if normalization == "none":
        return 0.0, 255.0
    if normalization == "contrast_limits":
        if contrast_limits is None or np.shape(contrast_limits) != (2,) or not np.isfinite(contrast_limits).all():
            raise InputError("normalization='contrast_limits' needs contrast_limits=(low, high), two finite numbers")
        return float(contrast_limits[0]), float(contrast_limits[1])
    finite = channel[np.isfinite(channel)]
    if finite.size == 0:
        log.warning("the image has no finite values (all NaN or infinite); it is treated as black")
        return 0.0, 0.0
    if normalization == "minmax":
        return float(finite.min()), float(finite.max())
    low, high = np.percentile(finite, percentiles)
    return float(low), float(high)


def _rescale(channel: np.ndarray, low: float, high: float) -> np.ndarray:
    if high > low:  # halved first so that differences of huge values cannot overflow to inf
        scaled = (channel / 2 - low / 2) / (high / 2 - low / 2) * 255.0
    else:  # constant image: nothing to stretch
        scaled = np.where(channel > low, 255.0, 0.0)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb_uint8(
    image: np.ndarray,
    *,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    normalization: str = "auto",
    percentiles: tuple[float, float] = (1.0, 99.8),
    contrast_limits: tuple[float, float] | None = None,
) -> np.ndarray:
    """Convert one image plane to the (H, W, 3) uint8 RGB array the models take.

    Parameters
    ----------
    image : array-like
        (Y, X) grey, or (Y, X, C) / (C, Y, X) with channels.
    channel_axis : int, optional
        Axis that holds channels, when it cannot be guessed.
    channels : sequence of int, optional
        Which (at most three) channels feed R, G, B; required for more than 4 channels.
    normalization, percentiles, contrast_limits
        How intensities map to 0..255 (see the module docstring).

    Returns
    -------
    numpy.ndarray
        (H, W, 3) uint8, C-contiguous.
    """
    plane = channels_last(image, channel_axis)
    check_plane_shape(int(plane.shape[0]), int(plane.shape[1]))
    picked = select_channels(plane, channels)
    scaled = scale_to_uint8(picked, normalization, percentiles, contrast_limits)
    n = scaled.shape[-1]
    if n == 1:
        scaled = np.repeat(scaled, 3, axis=-1)
    elif n == 2:
        scaled = np.concatenate([scaled, np.zeros_like(scaled[..., :1])], axis=-1)
    return np.ascontiguousarray(scaled)
