"""Segment everything in an image larger than one view: tiles at native resolution, then merged.

The plane is cut into overlapping tiles (:func:`~napari_mobilesamv2.tiling.tile_grid`).
Two passes over the tiles:

1. **detect**: each tile is converted to RGB with ranges measured once on the whole
   plane (so every tile is mapped alike), embedded, and run through the detector at
   its own resolution; at most ``max_prompts`` boxes per tile;
2. **decode**: the boxes of all tiles are merged in image coordinates
   (:func:`~napari_mobilesamv2.tiling.merge_tile_boxes`), each kept box is decoded on
   the embedding of a tile that holds it whole
   (:func:`~napari_mobilesamv2.tiling.owner_tile`), and its mask is moved to image
   coordinates.

Object ``k`` of the merged list (best detector score first) gets id ``k + 1``; labels
are painted with the usual rule (larger masks first), window by window when the
label image does not fit in memory (:meth:`TiledSegmentation.paint`).

Every finished tile can be kept in a :class:`~napari_mobilesamv2.resume.RunRecord`,
so an interrupted run continues where it stopped with the same result. Embeddings
can be kept in an :class:`~napari_mobilesamv2.embedding_cache.EmbeddingCache`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .decode.labels import assemble_labels, paint_order
from .decode.masks import MaskCrop
from .decode.prompted import DecodedMasks
from .steps import PlaneKey, Progress, Steps, embed_cached
from .imaging import intensity_ranges
from .options import BORDER_SNAP, LARGE_IMAGE_TILE, EverythingOptions
from .results import Segmentation, quality_mask
from .tiling import Tile, merge_tile_boxes, owner_tile, paint_window, shift_crop, snap_to_image_border, tile_grid

# Most pixels read to measure a large plane's intensity ranges (a regular subsample).
RANGE_SAMPLE_PIXELS = 4_000_000

ReadWindow = Callable[[slice, slice], np.ndarray]


@dataclass
class TiledSegmentation:
    """Objects of a tiled run, masks in image coordinates; labels are painted on demand.

    Attributes
    ----------
    shape : tuple of int
        (H, W) of the plane.
    crops : list of MaskCrop
        Object ``k``'s mask (image coordinates); its id is ``k + 1``.
    boxes_xyxy : numpy.ndarray
        (N, 4) float32 merged detector boxes, image pixels.
    score, predicted_iou, stability : numpy.ndarray
        (N,) float32.
    tile : numpy.ndarray
        (N,) int64 index of the tile whose embedding decoded the object.
    """

    shape: tuple[int, int]
    crops: list[MaskCrop]
    boxes_xyxy: np.ndarray
    score: np.ndarray
    predicted_iou: np.ndarray
    stability: np.ndarray
    tile: np.ndarray
    strategy: str = "object-aware"
    _order: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def ids(self) -> np.ndarray:
        return np.arange(1, len(self.crops) + 1, dtype=np.int32)

    def paint(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """Labels of the window ``[rows, cols]`` (int32) and each object's visible pixels in it."""
        if self._order is None:
            self._order = paint_order(np.array([c.area for c in self.crops], np.int64))
        return paint_window(self.crops, (rows, cols), order=self._order)

    def segmentation(self) -> Segmentation:
        """The whole result in memory (labels included), as an untiled run returns it."""
        labels, visible = assemble_labels(self.crops, self.shape)
        return Segmentation(labels, self.crops, self.boxes_xyxy, self.score, self.predicted_iou, self.stability,
                            visible, self.strategy, tile=self.tile)


def tile_conversion(read_window: ReadWindow, shape: tuple[int, int], conversion: dict[str, Any]) -> dict[str, Any]:
    """Conversion keywords with intensity ranges measured once on (a subsample of) the whole plane.

    Nothing beyond one pixel is read when the conversion measures no range (e.g. uint8 with ``auto``).
    """
    probe = intensity_ranges(np.asarray(read_window(slice(0, 1), slice(0, 1))), **conversion)
    if probe["normalization"] == conversion.get("normalization", "auto"):
        return probe  # nothing measured: the pixels do not change the mapping
    step = max(1, math.ceil(math.sqrt(shape[0] * shape[1] / RANGE_SAMPLE_PIXELS)))
    sample = np.asarray(read_window(slice(0, shape[0], step), slice(0, shape[1], step)))
    return intensity_ranges(sample, **conversion)


def segment_tiled_steps(
    model,
    shape: tuple[int, int],
    read_window: ReadWindow,
    options: EverythingOptions,
    conversion: dict[str, Any] | None = None,
    *,
    plane: PlaneKey = (),
    embeddings=None,
    record=None,
) -> Steps[TiledSegmentation]:
    """Segment everything in a large plane tile by tile (object-aware strategy).

    Parameters
    ----------
    model : SegmentationPipeline
        The pipeline.
    shape : tuple of int
        (H, W) of the plane.
    read_window : callable
        ``read_window(rows, cols)`` returns the plane's pixels in that window (channels kept
        as in the file); only one tile is read at a time.
    options : EverythingOptions
        ``tile`` and ``overlap`` set the grid; ``max_prompts`` applies per tile.
    conversion : dict, optional
        Keywords of :func:`~napari_mobilesamv2.imaging.to_rgb_uint8`.
    plane : tuple of int
        Index of the plane in its stack (keys cached embeddings and the run record).
    embeddings : EmbeddingCache, optional
        Keeps tile embeddings on disk for later runs (a tile is embedded at most once per
        run anyway: only tiles that decode boxes are embedded).
    record : RunRecord, optional
        Keeps every finished tile; tiles already in it are not computed again.

    Yields
    ------
    Progress
        After every tile of each pass.
    """
    tiles = tile_grid(shape, options.tile, options.overlap)
    conversion = tile_conversion(read_window, shape, conversion or {})
    rgb_of = _tile_reader(model, read_window, conversion)
    embed = _tile_embedder(model, rgb_of, embeddings, plane)
    found: list[tuple[np.ndarray, np.ndarray]] = []
    for tile in tiles:
        boxes = record.boxes(plane, tile.index) if record is not None else None
        if boxes is None:
            boxes = _detect_tile(model, tile, shape, rgb_of, options)
            if record is not None:
                record.save_boxes(plane, tile.index, *boxes)
        found.append(boxes)
        yield Progress("detecting", tile.index + 1, len(tiles), f"tile {tile.index + 1} of {len(tiles)}: "
                                                                 f"{len(boxes[0])} boxes")
    merged, owner = merged_owners(tiles, found, shape, options)
    decoded: dict[int, DecodedMasks] = {}
    owning = [tile for tile in tiles if (owner == tile.index).any()]
    for done, tile in enumerate(owning):
        rows = np.flatnonzero(owner == tile.index)
        masks = record.masks(plane, tile.index) if record is not None else None
        if masks is None:
            masks = _decode_tile(model, tile, merged.boxes_xyxy[rows], embed, options)
            if record is not None:
                record.save_masks(plane, tile.index, masks)
        decoded[tile.index] = masks
        yield Progress("decoding", done + 1, len(owning), f"decoding tile {done + 1} of {len(owning)}: "
                                                          f"{len(rows)} boxes")
    return _assemble(shape, merged, owner, decoded, options)


def detect_tile(model, read_window: ReadWindow, shape: tuple[int, int], tile: Tile, options: EverythingOptions,
                conversion: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The first pass of :func:`segment_tiled_steps` for one tile: its boxes (image pixels) and scores.

    `conversion` holds the plane's intensity ranges (:func:`tile_conversion`). A tiled run
    spread over several processes calls this for each tile and keeps the result in the
    run record, where :func:`segment_tiled_steps` finds it.
    """
    return _detect_tile(model, tile, shape, _tile_reader(model, read_window, conversion), options)


def decode_tile(model, read_window: ReadWindow, tile: Tile, boxes_xyxy: np.ndarray, options: EverythingOptions,
                conversion: dict[str, Any], *, plane: PlaneKey = (), embeddings=None) -> DecodedMasks:
    """The second pass of :func:`segment_tiled_steps` for one tile: masks of the boxes it owns.

    `boxes_xyxy` are the merged boxes (image pixels) whose owner is `tile`
    (:func:`merged_owners`); the masks are in image coordinates.
    """
    embed = _tile_embedder(model, _tile_reader(model, read_window, conversion), embeddings, plane)
    return _decode_tile(model, tile, boxes_xyxy, embed, options)


def merged_owners(tiles: list[Tile], found: list[tuple[np.ndarray, np.ndarray]], shape: tuple[int, int],
                  options: EverythingOptions):
    """Merge the tiles' boxes and choose the tile that decodes each merged box.

    Returns the merged boxes (:func:`~napari_mobilesamv2.tiling.merge_tile_boxes`) and the
    owner tile index of each; warns when objects are larger than a tile.
    """
    merged = merge_tile_boxes(tiles, [b for b, _ in found], [s for _, s in found], shape, iou=options.iou)
    owner, whole = owner_tile(merged.boxes_xyxy, tiles, shape)
    if not whole.all():
        warnings.warn(
            f"{int((~whole).sum())} object(s) are larger than a tile: their masks end at the tile's edge "
            f"(choose a larger tile or overlap than {options.tile} and {options.overlap} px)", UserWarning,
            stacklevel=3,
        )
    return merged, owner


def _tile_reader(model, read_window: ReadWindow, conversion: dict) -> Callable[[Tile], np.ndarray]:
    def rgb_of(tile: Tile) -> np.ndarray:
        return model.prepare_image(np.asarray(read_window(*tile.slices)), **conversion)

    return rgb_of


def _tile_embedder(model, rgb_of, embeddings, plane: PlaneKey):
    """``embed(tile)``: the tile's embedding, from the cache when there is one."""

    def embed(tile: Tile):
        return embed_cached(model, embeddings, rgb_of(tile), plane, (tile.y0, tile.x0, tile.y1, tile.x1))

    return embed


def _detect_tile(model, tile: Tile, shape, rgb_of, options: EverythingOptions):
    """Detector boxes of one tile (tile pixels), snapped only to the image's own border."""
    rgb = rgb_of(tile)
    if rgb.min() == rgb.max():
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    boxes, scores = model.detect(rgb, conf=options.conf, iou=options.iou, imgsz=options.imgsz, border_threshold=0)
    threshold = model_border_threshold(tile, options.imgsz)
    boxes = snap_to_image_border(boxes, tile, shape, threshold)
    return boxes[:options.max_prompts].astype(np.float32), scores[:options.max_prompts].astype(np.float32)


def model_border_threshold(tile: Tile, imgsz: int) -> float:
    """The official border snap (network pixels) in tile pixels."""
    return BORDER_SNAP * max(tile.shape) / imgsz


def _decode_tile(model, tile: Tile, boxes_xyxy: np.ndarray, embed, options: EverythingOptions) -> DecodedMasks:
    """Masks of image-coordinate boxes decoded on `tile`'s embedding, moved to image coordinates."""
    local = boxes_xyxy - np.array([tile.x0, tile.y0, tile.x0, tile.y0], np.float32)
    h, w = tile.shape
    local = np.stack([local[:, 0].clip(0, w), local[:, 1].clip(0, h), local[:, 2].clip(0, w),
                      local[:, 3].clip(0, h)], axis=1).astype(np.float32)
    masks = model.decode_boxes(embed(tile), local, options)
    crops = [shift_crop(crop, tile.y0, tile.x0) for crop in masks.crops]
    return DecodedMasks(crops, masks.predicted_iou, masks.stability, masks.low_res_logits[:0])


def _assemble(shape, merged, owner: np.ndarray, decoded: dict[int, DecodedMasks], options) -> TiledSegmentation:
    n = len(merged)
    crops: list[MaskCrop | None] = [None] * n
    predicted_iou = np.zeros(n, np.float32)
    stability = np.zeros(n, np.float32)
    for index, masks in decoded.items():
        rows = np.flatnonzero(owner == index)
        for row, crop in zip(rows, masks.crops):
            crops[row] = crop
        predicted_iou[rows] = masks.predicted_iou
        stability[rows] = masks.stability
    found = DecodedMasks(crops, predicted_iou, stability, np.zeros(0))
    keep = quality_mask(found, options.min_predicted_iou, options.min_stability, options.min_area)
    return TiledSegmentation(
        tuple(shape), [c for c, k in zip(crops, keep) if k], merged.boxes_xyxy[keep], merged.score[keep],
        predicted_iou[keep], stability[keep], owner[keep],
    )
