"""Full-resolution masks stored as crops, and turning decoder logits into them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..models.build import IMAGE_SIZE

STABILITY_OFFSET = 1.0
MASK_THRESHOLD = 0.0


@dataclass(frozen=True)
class MaskCrop:
    """A binary mask stored as its bounding rectangle, so memory grows with object size.

    Attributes
    ----------
    top, left : int
        Position of ``mask[0, 0]`` in the image.
    mask : numpy.ndarray
        (h, w) bool; an empty mask is (0, 0).
    """

    top: int
    left: int
    mask: np.ndarray

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def bbox_xyxy(self) -> tuple[int, int, int, int]:
        """Tight box (x0, y0, x1, y1), exclusive end, of the mask's pixels."""
        h, w = self.mask.shape
        return self.left, self.top, self.left + w, self.top + h

    def to_full(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask pasted into an all-False array of `shape`."""
        full = np.zeros(shape, dtype=bool)
        h, w = self.mask.shape
        full[self.top:self.top + h, self.left:self.left + w] = self.mask
        return full


def crop_to_content(mask: np.ndarray) -> MaskCrop:
    """Shrink a full-size bool mask to the rectangle holding its True pixels."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return MaskCrop(0, 0, np.zeros((0, 0), dtype=bool))
    cols = np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return MaskCrop(int(top), int(left), np.ascontiguousarray(mask[top:bottom, left:right]))


def upsample_logits(
    low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """SAM's ``postprocess_masks``: 256² logits -> 1024² -> crop padding -> original size."""
    masks = F.interpolate(low_res, (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)


def stability_scores(logits: torch.Tensor) -> torch.Tensor:
    """SAM's stability score: IoU of the masks thresholded at +-1 around the threshold."""
    flat = logits.flatten(1)
    high = (flat > MASK_THRESHOLD + STABILITY_OFFSET).sum(1, dtype=torch.int64)
    low = (flat > MASK_THRESHOLD - STABILITY_OFFSET).sum(1, dtype=torch.int64)
    return torch.where(low > 0, high.double() / low.clamp(min=1).double(), torch.ones_like(high, dtype=torch.float64))


def logits_to_crops(
    low_res: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    chunk_pixels: int = 64 * 1024 * 1024,
) -> tuple[list[MaskCrop], np.ndarray]:
    """Upsample (N, 1, 256, 256) logits to image size a few at a time, threshold, crop.

    Never holds more than about `chunk_pixels` full-resolution float values at once.

    Returns
    -------
    crops : list of MaskCrop
    stability : numpy.ndarray
        (N,) float32 stability scores.
    """
    per_chunk = max(1, chunk_pixels // max(1, original_size[0] * original_size[1]))
    crops: list[MaskCrop] = []
    stability = []
    for start in range(0, low_res.shape[0], per_chunk):
        logits = upsample_logits(low_res[start:start + per_chunk], input_size, original_size)[:, 0]
        stability.append(stability_scores(logits).float().cpu())
        binary = (logits > MASK_THRESHOLD).cpu().numpy()
        crops.extend(crop_to_content(m) for m in binary)
    values = torch.cat(stability).numpy() if stability else np.zeros(0, np.float32)
    return crops, values
