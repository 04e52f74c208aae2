"""Fixtures for the napari plugin tests (run under ``xvfb-run -a``).

Two pipelines are used:

* ``tiny_pipeline`` (tests/conftest.py): the real MobileSAMv2 code with tiny
  random-weight models. It proves the widgets drive the real core, but its masks
  are mostly empty, so it cannot check ids.
* :class:`BlobPipeline`: MobileSAMv2's interface on classic image processing
  (objects are the bright connected regions). Deterministic, so tests can check
  ids, linking, policies and prompt handling exactly, in milliseconds.
"""

from __future__ import annotations

import threading

import cv2  # noqa: F401  (imported first on purpose, see below)
import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_mobilesamv2.decode.masks import crop_to_content
from napari_mobilesamv2.decode.prompted import DecodedMasks
from napari_mobilesamv2.embedding import ImageEmbedding
from napari_mobilesamv2.imaging import to_rgb_uint8
from napari_mobilesamv2.napari import set_pipeline_factory
from napari_mobilesamv2.napari._models import forget_opencv_qt_paths
from napari_mobilesamv2.prompts.user import objects_from_prompts
from napari_mobilesamv2.results import build_segmentation



@pytest.fixture(autouse=True)
def _napari_qt_paths():
    """cv2 (imported by the detector) points Qt at its own plugins, which aborts napari's window."""
    forget_opencv_qt_paths()


CONVERSION_KEYWORDS = ("normalization", "channel_axis", "channels", "contrast_limits")


class BlobPipeline:
    """Segment everything = connected regions brighter than the plane's mean + 1 std.

    `embed_calls` counts embeddings; setting `gate` (a threading.Event) makes
    `embed` wait for it, so a test can cancel a run in flight.
    """

    encoder_name = "blobs"

    def __init__(self):
        self.embed_calls = 0
        self.gate: threading.Event | None = None
        self.fail_with: Exception | None = None

    def prepare_image(self, image, **conversion):
        return to_rgb_uint8(image, **conversion)

    def embed(self, image_rgb):
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_with is not None:
            raise self.fail_with
        self.embed_calls += 1
        grey = torch.from_numpy(image_rgb.astype(np.float32).mean(-1))
        return ImageEmbedding(grey, tuple(grey.shape), tuple(grey.shape))

    def _regions(self, embedding):
        return _bright_regions(embedding.features.numpy())

    def detect(self, image_rgb, *, conf=0.4, iou=0.9, **_):
        regions, n = _bright_regions(image_rgb.astype(np.float32).mean(-1))
        boxes = []
        for sl in ndimage.find_objects(regions):
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
        return np.array(boxes, np.float32).reshape(-1, 4), np.linspace(0.9, 0.5, n).astype(np.float32)

    def segment_everything(self, image, *, max_prompts=320, boxes_xyxy=None, embedding=None, **kwargs):
        conversion = {k: v for k, v in kwargs.items() if k in CONVERSION_KEYWORDS}
        rgb = self.prepare_image(image, **conversion)
        embedding = embedding if embedding is not None else self.embed(rgb)
        scores = None
        if boxes_xyxy is None:
            boxes_xyxy, scores = self.detect(rgb)
            boxes_xyxy, scores = boxes_xyxy[:max_prompts], scores[:max_prompts]
        crops = [crop_to_content(self._in_box(embedding, box)) for box in boxes_xyxy]
        scores = np.full(len(crops), np.nan, np.float32) if scores is None else scores
        return self._segmentation(crops, boxes_xyxy, scores, rgb.shape[:2])

    def segment_anything(self, image, *, points=None, point_labels=None, point_groups=None, boxes=None,
                         embedding=None, **conversion):
        rgb = self.prepare_image(image, **conversion)
        embedding = embedding if embedding is not None else self.embed(rgb)
        regions, _ = self._regions(embedding)
        crops, shown_boxes = [], []
        for obj in objects_from_prompts(points, point_labels, point_groups, boxes):
            if obj.box is not None:
                mask = self._in_box(embedding, obj.box)
            else:
                mask = np.zeros(regions.shape, bool)
                for (x, y), label in zip(np.round(obj.points).astype(int), obj.labels):
                    region = regions[y, x]
                    if region:
                        mask = mask | (regions == region) if label else mask & (regions != region)
            crops.append(crop_to_content(mask))
            shown_boxes.append(crops[-1].bbox_xyxy)
        return self._segmentation(crops, shown_boxes, np.full(len(crops), np.nan, np.float32), rgb.shape[:2])

    def _in_box(self, embedding, box):
        regions, _ = self._regions(embedding)
        x0, y0, x1, y1 = np.round(box).astype(int)
        inside = np.zeros(regions.shape, bool)
        inside[max(y0, 0):y1, max(x0, 0):x1] = True
        ids, counts = np.unique(regions[inside & (regions > 0)], return_counts=True)
        return (regions == ids[counts.argmax()]) & inside if len(ids) else np.zeros(regions.shape, bool)

    @staticmethod
    def _segmentation(crops, boxes, scores, shape):
        n = len(crops)
        decoded = DecodedMasks(crops, np.full(n, 0.9, np.float32), np.full(n, 0.95, np.float32), torch.zeros(0))
        return build_segmentation(decoded, np.asarray(boxes, np.float32), scores, shape, "object-aware")


def _bright_regions(grey):
    return ndimage.label(grey > grey.mean() + grey.std())


def blobs(shape=(64, 96), centres=((20, 20), (40, 60)), radius=8, value=200, dtype=np.uint8) -> np.ndarray:
    """Bright disks on a dark background."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 10, np.float64)
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = value
    return image.astype(dtype)


@pytest.fixture
def blob_pipeline():
    """A fresh :class:`BlobPipeline`, installed as the widgets' pipeline factory."""
    pipeline = BlobPipeline()
    set_pipeline_factory(lambda encoder, device, trust_weights: pipeline)
    yield pipeline
    set_pipeline_factory(None)


@pytest.fixture
def tiny_factory(tiny_pipeline):
    """The tiny random-weight MobileSAMv2 installed as the widgets' pipeline factory."""
    set_pipeline_factory(lambda encoder, device, trust_weights: tiny_pipeline)
    yield tiny_pipeline
    set_pipeline_factory(None)


@pytest.fixture
def wait_done(qtbot):
    """``wait_done(widget)`` waits until the widget's worker finished and its result is applied."""

    def wait(widget, timeout=60_000):
        qtbot.waitUntil(lambda: not widget.is_running, timeout=timeout)

    return wait
