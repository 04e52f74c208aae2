"""Shared fixtures: seeded random-weight models in the real architectures, plus tiny ones.

The SAM prompt encoder and mask decoder are the real architectures (random
weights). The image encoder used for pipeline-level tests is a tiny stand-in
(a 16x16 patch embedding giving the same (1, 256, 64, 64) output), because the
real encoders cost seconds per image on 2 CPU cores; each real encoder is covered
by the checkpoint-format tests.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import ultralytics  # noqa: F401  its logger binds to the streams present at first import: not a test's capsys


from napari_mobilesamv2.models import build_mask_decoder, build_prompt_encoder, download
from napari_mobilesamv2.models.registry import WEIGHT_FILES

FIXTURES = Path(__file__).parent / "fixtures"
DETECTOR_FIXTURE = FIXTURES / "object_aware_tiny.pt"


class TinyImageEncoder(torch.nn.Module):
    """(B, 3, 1024, 1024) -> (B, 256, 64, 64) with one strided convolution."""

    img_size = 1024

    def __init__(self):
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 256, kernel_size=16, stride=16)

    def forward(self, x):
        return self.patch(x) * 0.05


def seeded(builder, seed: int):
    torch.manual_seed(seed)
    return builder().eval()


@pytest.fixture(scope="session")
def sam_decoder():
    """(prompt_encoder, mask_decoder) of SAM's architecture with seeded random weights."""
    return seeded(build_prompt_encoder, 1), seeded(build_mask_decoder, 2)


@pytest.fixture(scope="session")
def tiny_encoder():
    return seeded(TinyImageEncoder, 3)


@pytest.fixture(scope="session")
def detector():
    """The 8.0.120-format ObjectAwareModel fixture, loaded with the current ultralytics."""
    from napari_mobilesamv2.models.detector import load_object_aware_model

    return load_object_aware_model(DETECTOR_FIXTURE)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_encoder, sam_decoder, detector):
    """A complete MobileSAMv2 pipeline on CPU made of small random-weight models."""
    from napari_mobilesamv2 import MobileSAMv2

    return MobileSAMv2(tiny_encoder, *sam_decoder, detector, device="cpu", encoder_name="tiny-test")


def write_weight_files(folder: Path, sam_decoder, seed: int = 0) -> tuple[Path, Path]:
    """Write a TinyViT encoder (mobile_sam.pt layout) and a decoder (Prompt_guided layout) with random weights."""
    from napari_mobilesamv2.models import build_image_encoder

    torch.manual_seed(seed)
    encoder = build_image_encoder("tiny_vit")
    encoder_path, decoder_path = folder / "mobile_sam.pt", folder / "Prompt_guided_Mask_Decoder.pt"
    torch.save({f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}, encoder_path)
    prompt_encoder, mask_decoder = sam_decoder
    torch.save({"PromtEncoder": prompt_encoder.state_dict(), "MaskDecoder": mask_decoder.state_dict()}, decoder_path)
    return encoder_path, decoder_path


def synthetic_cells(shape=(192, 256), n=12, seed=0, dtype=np.uint8, texture=0.5) -> np.ndarray:
    """A fluorescence-like image: bright blobs on a textured background.

    The texture (uniform noise, weight `texture`) gives the tiny random-weight
    detector something to fire on, so tests see tens of boxes.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = rng.normal(10, 3, shape)
    for _ in range(n):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        r = rng.uniform(6, 18)
        image += 180 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    image = (1 - texture) * np.clip(image / image.max(), 0, 1) + texture * rng.random(shape)
    top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
    return (image * top).astype(dtype)


def nuclei(seed: int, size: int = 128, per_side: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Training data for the detector: a uint16 image with one bright disc per grid cell, and its
    uint16 label image (``per_side ** 2`` objects)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.uint16)
    cell = size // per_side
    yy, xx = np.mgrid[0:size, 0:size]
    for index in range(per_side * per_side):
        radius = rng.uniform(6, cell / 2 - 6)
        centre_y = (index // per_side) * cell + rng.uniform(radius + 2, cell - radius - 2)
        centre_x = (index % per_side) * cell + rng.uniform(radius + 2, cell - radius - 2)
        labels[(yy - centre_y) ** 2 + (xx - centre_x) ** 2 <= radius**2] = index + 1
    image = 200 + rng.normal(0, 20, labels.shape) + 1500 * (labels > 0)
    return np.clip(image, 0, 65535).astype(np.uint16), labels


def write_pairs(folder: Path, seeds, size: int = 128, suffix: str = ".tif") -> tuple[Path, Path]:
    """Write :func:`nuclei` images and label images of `seeds` into ``folder/images`` and ``folder/labels``."""
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(exist_ok=True)
    for seed in seeds:
        image, label = nuclei(seed, size)
        tifffile.imwrite(images / f"n{seed:02d}{suffix}", image)
        tifffile.imwrite(labels / f"n{seed:02d}{suffix}", label)
    return images, labels


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks gain nothing from more threads, and on a busy 2-core machine two can stall each other.

    Use it for a whole test module with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def detector_training_data():
    """The tiny pickled detector fixture and :func:`nuclei`, for tests outside this package (napari's)."""
    return DETECTOR_FIXTURE, nuclei


@pytest.fixture
def weights_cache(tmp_path, monkeypatch) -> Path:
    """An empty weights cache folder (not created yet), used instead of the user's."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(download.CACHE_ENV, str(folder))
    return folder


def register_weight_urls(monkeypatch, name: str, *urls: str, sha256: str | None = None) -> None:
    """Make the registry fetch `name` from `urls`, expecting `sha256` (None: unknown, pinned on first use)."""
    monkeypatch.setitem(WEIGHT_FILES, name, replace(WEIGHT_FILES[name], urls=urls, sha256=sha256))


@contextmanager
def serving(handler) -> Iterator[str]:
    """An HTTP server on a free port of 127.0.0.1 answering with `handler`; yields its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        thread.join(timeout=5)
