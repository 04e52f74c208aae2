"""What a segmentation returns: the label image and the table of its objects."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .decode.labels import assemble_labels
from .decode.masks import MaskCrop
from .decode.prompted import DecodedMasks


@dataclass
class Segmentation:
    """Objects found in one image plane.

    Attributes
    ----------
    labels : numpy.ndarray
        (H, W) int32 label image; object ``k`` (0-based) has id ``k + 1``.
    crops : list of MaskCrop
        Each object's full binary mask (overlaps not resolved).
    boxes_xyxy : numpy.ndarray
        (N, 4) float32 prompt box of each object (the detector's box for object-aware,
        the mask's box for grid and point prompts), image pixels.
    score : numpy.ndarray
        (N,) float32 detector confidence (NaN where no detector was involved).
    predicted_iou, stability : numpy.ndarray
        (N,) float32 decoder quality estimates.
    visible_area : numpy.ndarray
        (N,) int64 pixels of each object visible in `labels`.
    strategy : str
        How the objects were found: ``"object-aware"``, ``"grid"`` or ``"prompts"``.
    tile : numpy.ndarray, optional
        (N,) int64 index of the tile that decoded each object (tiled runs only).
    """

    labels: np.ndarray
    crops: list[MaskCrop]
    boxes_xyxy: np.ndarray
    score: np.ndarray
    predicted_iou: np.ndarray
    stability: np.ndarray
    visible_area: np.ndarray
    strategy: str = "object-aware"
    tile: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the plane."""
        return tuple(self.labels.shape)

    @property
    def ids(self) -> np.ndarray:
        return np.arange(1, len(self.crops) + 1, dtype=np.int32)

    @property
    def area(self) -> np.ndarray:
        return np.array([c.area for c in self.crops], dtype=np.int64)

    def table(self) -> dict[str, np.ndarray]:
        """Per-object columns: id, box, detector score, predicted IoU, stability, areas."""
        boxes = self.boxes_xyxy.reshape(-1, 4)
        return {
            "id": self.ids, "x0": boxes[:, 0], "y0": boxes[:, 1], "x1": boxes[:, 2], "y1": boxes[:, 3],
            "score": self.score, "predicted_iou": self.predicted_iou, "stability": self.stability,
            "area": self.area, "visible_area": self.visible_area,
            **({"tile": self.tile} if self.tile is not None else {}),
        }


def build_segmentation(
    decoded: DecodedMasks, boxes_xyxy: np.ndarray, scores: np.ndarray, shape: tuple[int, int], strategy: str
) -> Segmentation:
    """Assemble labels and the object table from decoded masks.

    Parameters
    ----------
    decoded : DecodedMasks
        One mask per object, in id order.
    boxes_xyxy : numpy.ndarray
        (N, 4) prompt box of each object, image pixels.
    scores : numpy.ndarray
        (N,) detector confidence (NaN where no detector was involved).
    shape : tuple of int
        (H, W) of the image.
    strategy : str
        Recorded in :attr:`Segmentation.strategy`.

    Returns
    -------
    Segmentation
        Object ``k`` gets id ``k + 1``; where objects overlap, labels are resolved by
        :func:`~napari_mobilesamv2.decode.labels.assemble_labels`.
    """
    labels, visible = assemble_labels(decoded.crops, shape)
    return Segmentation(
        labels, decoded.crops, np.asarray(boxes_xyxy, np.float32).reshape(-1, 4),
        np.asarray(scores, np.float32), decoded.predicted_iou, decoded.stability, visible, strategy,
    )


def filter_objects(decoded: DecodedMasks, keep: np.ndarray) -> DecodedMasks:
    """Keep the objects where the bool array `keep` is True, in order."""
    index = np.flatnonzero(keep)
    return DecodedMasks(
        [decoded.crops[i] for i in index], decoded.predicted_iou[index], decoded.stability[index],
        decoded.low_res_logits[torch.as_tensor(index, dtype=torch.long)],
    )


def empty_segmentation(shape: tuple[int, int], strategy: str) -> Segmentation:
    """A result with no objects: an all-zero (H, W) label image and empty columns."""
    empty = np.zeros(0, np.float32)
    return Segmentation(np.zeros(shape, np.int32), [], np.zeros((0, 4), np.float32), empty, empty, empty,
                        np.zeros(0, np.int64), strategy)


def quality_mask(
    decoded: DecodedMasks,
    min_predicted_iou: float | None = None,
    min_stability: float | None = None,
    min_area: int | None = None,
) -> np.ndarray:
    """(N,) bool: the objects whose quality reaches every given minimum (``None``: no minimum)."""
    keep = np.ones(len(decoded), dtype=bool)
    if min_predicted_iou is not None:
        keep &= decoded.predicted_iou >= min_predicted_iou
    if min_stability is not None:
        keep &= decoded.stability >= min_stability
    if min_area is not None:
        keep &= np.array([c.area for c in decoded.crops], dtype=np.int64) >= min_area
    return keep
