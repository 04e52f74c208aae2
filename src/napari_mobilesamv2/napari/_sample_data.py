"""Sample data (File > Open Sample): synthetic fluorescence nuclei, made deterministically.

The images look like a DAPI channel: bright, slightly elongated, textured nuclei
on a dim noisy background, as uint16 with a camera offset.
"""

from __future__ import annotations

import numpy as np


LayerData = list[tuple]


def _nuclei(shape: tuple[int, ...], centres: np.ndarray, radii: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sum of soft-edged ellipsoids (one per centre) with a little texture, float in ~[0, 1]."""
    grid = np.indices(shape, dtype=np.float32)
    image = np.zeros(shape, np.float32)
    for centre, radius in zip(centres, radii):
        distance = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius)))
        image = np.maximum(image, rng.uniform(0.6, 1.0) / (1 + np.exp((distance - 1) * 8)))
    texture = 1 + 0.15 * _smooth_noise(shape, rng)
    return image * texture


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.normal(size=shape), 2)
    return noise / (np.abs(noise).max() + 1e-9)


def _to_camera(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale to a 12-bit-like range with offset and shot/read noise, as uint16."""
    counts = 100 + 3000 * image
    counts = rng.poisson(counts).astype(np.float32) + rng.normal(0, 5, image.shape)
    return np.clip(counts, 0, 65535).astype(np.uint16)


def _random_nuclei(n: int, extent: tuple[int, ...], size: tuple[float, float], rng: np.random.Generator):
    margin = np.array([max(2.0, e * 0.06) for e in extent])
    centres = rng.uniform(margin, np.array(extent) - margin, size=(n, len(extent)))
    radii = rng.uniform(*size, size=(n, len(extent)))
    return centres, radii


def nuclei_2d() -> LayerData:
    """A 256x256 uint16 field of about 30 nuclei."""
    rng = np.random.default_rng(2024)
    centres, radii = _random_nuclei(30, (256, 256), (7, 14), rng)
    image = _to_camera(_nuclei((256, 256), centres, radii, rng), rng)
    return [(image, {"name": "nuclei", "colormap": "gray"}, "image")]


def nuclei_3d() -> LayerData:
    """A (20, 128, 128) uint16 z-stack of about 15 nuclei, 2 um z steps and 0.5 um pixels."""
    rng = np.random.default_rng(7)
    shape = (20, 128, 128)
    centres, radii = _random_nuclei(15, shape, (6, 12), rng)
    radii[:, 0] /= 2.5  # fewer planes per nucleus: z is sampled more coarsely
    image = _to_camera(_nuclei(shape, centres, radii, rng), rng)
    return [(image, {"name": "nuclei 3D", "colormap": "gray", "scale": (2.0, 0.5, 0.5)}, "image")]


def nuclei_timelapse() -> LayerData:
    """A (12, 128, 128) uint16 time series: 12 nuclei drifting a few pixels per frame."""
    rng = np.random.default_rng(11)
    frames, side = 12, 128
    centres, radii = _random_nuclei(12, (side, side), (7, 12), rng)
    velocity = rng.normal(0, 1.2, size=centres.shape)
    images = []
    for t in range(frames):
        frame_rng = np.random.default_rng(1000 + t)
        images.append(_nuclei((side, side), np.clip(centres + t * velocity, 0, side - 1), radii, frame_rng))
    image = _to_camera(np.stack(images), rng)
    return [(image, {"name": "nuclei timelapse", "colormap": "gray"}, "image")]


def coins() -> LayerData:
    """scikit-image's bundled 'coins' photograph (303x384 uint8 grey)."""
    from skimage import data

    return [(data.coins(), {"name": "coins", "colormap": "gray"}, "image")]
