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
