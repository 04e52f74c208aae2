"""A classical stand-in for MobileSAMv2, for the GUI tests and the documentation's screenshots.

:class:`BlobPipeline` implements :class:`~napari_mobilesamv2.SegmentationPipeline`
(the same methods, parameters and defaults as MobileSAMv2) with classic image
processing: the objects are the connected regions of ``find_regions`` (by default
the pixels brighter than the plane's mean + 1 std). It is deterministic and takes
milliseconds, so tests can check ids, linking, policies and prompts exactly.

The "embedding" is the grey image itself: decoding with a given embedding works on
that embedding's pixels, as MobileSAMv2 works on the given embedding.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator

import numpy as np
import torch
from scipy import ndimage

from napari_mobilesamv2 import EverythingOptions, ImageEmbedding, InputError, objects_from_prompts, to_rgb_uint8
from napari_mobilesamv2.decode.masks import crop_to_content
from napari_mobilesamv2.decode.prompted import DecodedMasks, ObjectPrompt
from napari_mobilesamv2.engine import run
from napari_mobilesamv2.options import BORDER_SNAP, MAX_DETECTIONS, options_of
from napari_mobilesamv2.prompts.user import check_boxes, check_object, prompt_box
from napari_mobilesamv2.results import Segmentation, build_segmentation, filter_objects, quality_mask

PREDICTED_IOU, STABILITY = 0.9, 0.95  # every stand-in mask's quality estimates


def bright_regions(grey: np.ndarray) -> np.ndarray:
    """Connected regions brighter than the mean + 1 std, labelled 1, 2, ... in raster order."""
    return ndimage.label(grey > grey.mean() + grey.std())[0]


def blobs(shape=(64, 96), centres=((20, 20), (40, 60)), radius=8, value=200, dtype=np.uint8) -> np.ndarray:
    """Bright disks on a dark background."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 10, np.float64)
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = value
    return image.astype(dtype)


class BlobPipeline:
    """MobileSAMv2's interface on connected regions.

    * ``detect``: one box per region, scores falling from 0.9 to 0.5 in region order
      (boxes scoring below `conf` are dropped);
    * ``segment_everything``: each box's mask is the region covering most of the box
      (``strategy="grid"``: every region);
    * ``segment_anything``: a box gives its region, a positive point the region under
      it, a negative point removes the region under it; a mask prompt alone (no box, no
      point) gives the region covering most of it. A box decides alone: points and a
      mask given with a box are not used, which is not how SAM's decoder combines them.

    Parameters
    ----------
    find_regions : callable
        (H, W) float grey image -> (H, W) int label image of the objects.

    Attributes
    ----------
    embed_calls : int
        Embeddings computed.
    gate : threading.Event or None
        When set to an event, ``embed`` waits for it (up to 10 s), so a test can act
        while a run is in flight.
    fail_with : Exception or None
        ``embed`` raises it.
    """

    encoder_name = "blobs"

    def __init__(self, find_regions: Callable[[np.ndarray], np.ndarray] = bright_regions):
        self.find_regions = find_regions
        self.embed_calls = 0
        self.gate: threading.Event | None = None
        self.fail_with: Exception | None = None

    def prepare_image(self, image: np.ndarray, **conversion) -> np.ndarray:
        return to_rgb_uint8(np.asarray(image), **conversion)

    def embed(self, image_rgb: np.ndarray) -> ImageEmbedding:
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_with is not None:
            raise self.fail_with
        self.embed_calls += 1
        grey = torch.from_numpy(_grey(image_rgb))
        # (1, C, h, w) like SAM's features, so the on-disk embedding cache can keep it
        return ImageEmbedding(grey[None, None].contiguous(), tuple(grey.shape), tuple(grey.shape))

    @property
    def encoder_id(self) -> str:
        return "blobs"

    def detect(
        self, image_rgb: np.ndarray, *, conf: float = 0.4, iou: float = 0.9, imgsz: int = 1024,
        max_det: int = MAX_DETECTIONS, border_threshold: float = BORDER_SNAP,
    ) -> tuple[np.ndarray, np.ndarray]:
        EverythingOptions(conf=conf, iou=iou, imgsz=imgsz)  # checks the values as MobileSAMv2 does
        found = [s for s in ndimage.find_objects(self.find_regions(_grey(image_rgb))) if s is not None]
        boxes = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in found], np.float32).reshape(-1, 4)
        scores = np.linspace(0.9, 0.5, len(boxes)).astype(np.float32)
        keep = scores >= conf
        return boxes[keep][:max_det], scores[keep][:max_det]

    def segment_everything(
        self,
        image: np.ndarray,
        options: EverythingOptions | None = None,
        *,
        embedding: ImageEmbedding | None = None,
        boxes_xyxy: np.ndarray | None = None,
        embeddings=None,
        **settings,
    ) -> Segmentation:
        names = {info.name for info in options_of(EverythingOptions)}
        options = (options or EverythingOptions()).replace(**{k: v for k, v in settings.items() if k in names})
        conversion = {k: v for k, v in settings.items() if k not in names}
        options.check_strategy()
        return run(self.segment_everything_steps(
            image, options, embedding=embedding, boxes_xyxy=boxes_xyxy, **conversion
        ))

    def decode_boxes(
        self, embedding: ImageEmbedding, boxes_xyxy: np.ndarray, options: EverythingOptions | None = None
    ) -> DecodedMasks:
        regions = self._regions(embedding)
        return _decoded([_in_box(regions, box) for box in np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)])

    def segment_everything_steps(
        self,
        image: np.ndarray,
        options: EverythingOptions,
        *,
        embedding: ImageEmbedding | None = None,
        boxes_xyxy: np.ndarray | None = None,
        **conversion,
    ) -> Generator[tuple[str, str], None, Segmentation]:
        if boxes_xyxy is not None and options.strategy != "object-aware":
            raise InputError("box prompts are decoded with the object-aware strategy; choose strategy='object-aware'")
        rgb = self.prepare_image(image, **conversion)
        shape = rgb.shape[:2]
        if embedding is None:
            embedding = self.embed(rgb)
            yield "embedding", "image embedded"
        regions = self._regions(embedding)
        if options.strategy == "grid":
            masks = [regions == i for i in np.unique(regions[regions > 0])]
            boxes = None
            scores = np.full(len(masks), np.nan, np.float32)
        else:
            if boxes_xyxy is None:
                boxes, scores = self.detect(rgb, conf=options.conf, iou=options.iou, imgsz=options.imgsz)
                boxes, scores = boxes[: options.max_prompts], scores[: options.max_prompts]
                yield "detecting", f"{len(boxes)} boxes"
            else:
                boxes = check_boxes(boxes_xyxy, shape)
                scores = np.full(len(boxes), np.nan, np.float32)
            masks = [_in_box(regions, box) for box in boxes]
        decoded = _decoded(masks)
        yield "decoding", f"decoding boxes {len(masks)} of {len(masks)}"
        if boxes is None:
            boxes = np.array([crop.bbox_xyxy for crop in decoded.crops], np.float32).reshape(-1, 4)
        keep = quality_mask(decoded, options.min_predicted_iou, options.min_stability, options.min_area)
        result = build_segmentation(filter_objects(decoded, keep), boxes[keep], scores[keep], shape, options.strategy)
        yield "assembling", f"{len(result)} objects"
        return result

    def segment_prompts(
        self,
        image: np.ndarray,
        objects: list[ObjectPrompt],
        *,
        embedding: ImageEmbedding | None = None,
        **conversion,
    ) -> Segmentation:
        rgb = self.prepare_image(image, **conversion)
        shape = rgb.shape[:2]
        objects = [check_object(o, shape) for o in objects]
        embedding = embedding if embedding is not None else self.embed(rgb)
        regions = self._regions(embedding)
        decoded = _decoded([_object_mask(regions, obj) for obj in objects])
        boxes = np.array([prompt_box(o, c) for o, c in zip(objects, decoded.crops)], np.float32).reshape(-1, 4)
        return build_segmentation(decoded, boxes, np.full(len(objects), np.nan, np.float32), shape, "prompts")

    def segment_anything(
        self,
        image: np.ndarray,
        *,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        point_groups: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        embedding: ImageEmbedding | None = None,
        **conversion,
    ) -> Segmentation:
        objects = objects_from_prompts(points, point_labels, point_groups, boxes)
        if not objects:
            raise InputError("no prompts: give at least one positive point or one box")
        return self.segment_prompts(image, objects, embedding=embedding, **conversion)

    def _regions(self, embedding: ImageEmbedding) -> np.ndarray:
        return self.find_regions(embedding.features.numpy()[0, 0])


def _grey(image_rgb: np.ndarray) -> np.ndarray:
    return image_rgb.astype(np.float32).mean(-1)


def _in_box(regions: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The part inside `box` of the region that covers most of the box."""
    x0, y0, x1, y1 = np.round(box).astype(int)
    inside = np.zeros(regions.shape, bool)
    inside[max(y0, 0):y1, max(x0, 0):x1] = True
    ids, counts = np.unique(regions[inside & (regions > 0)], return_counts=True)
    return (regions == ids[counts.argmax()]) & inside if len(ids) else np.zeros(regions.shape, bool)


def _object_mask(regions: np.ndarray, obj: ObjectPrompt) -> np.ndarray:
    if obj.box is not None:
        return _in_box(regions, obj.box)
    if obj.mask is not None and not len(obj.points):
        return _under_mask(regions, obj.mask)
    mask = np.zeros(regions.shape, bool)
    pixels = np.clip(np.round(obj.points).astype(int), 0, np.array(regions.shape[::-1]) - 1)
    for (x, y), label in zip(pixels, obj.labels):
        region = regions[y, x]
        if region:
            mask = mask | (regions == region) if label else mask & (regions != region)
    return mask


def _under_mask(regions: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The region covering most of a mask prompt (nothing when the mask covers no region)."""
    ids, counts = np.unique(regions[mask & (regions > 0)], return_counts=True)
    return regions == ids[counts.argmax()] if len(ids) else np.zeros(regions.shape, bool)


def _decoded(masks: list[np.ndarray]) -> DecodedMasks:
    n = len(masks)
    return DecodedMasks(
        [crop_to_content(m) for m in masks], np.full(n, PREDICTED_IOU, np.float32), np.full(n, STABILITY, np.float32),
        torch.zeros((n, 1, 4, 4)),
    )
