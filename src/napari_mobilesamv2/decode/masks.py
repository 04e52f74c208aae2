"""Full-resolution masks stored as crops, and turning decoder logits into them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..models.build import IMAGE_SIZE

STABILITY_OFFSET = 1.0
MASK_THRESHOLD = 0.0


class MaskCrop:
    """A binary mask stored as its bounding rectangle, bit-packed: memory grows with object size.

    Parameters
    ----------
    top, left : int
        Position of ``mask[0, 0]`` in the image.
    mask : numpy.ndarray
        (h, w) bool; an empty mask is (0, 0). Kept packed 8 pixels per byte; the
        ``mask`` attribute unpacks it on access.
    """

    __slots__ = ("top", "left", "shape", "area", "_packed")

    def __init__(self, top: int, left: int, mask: np.ndarray):
        mask = np.asarray(mask, dtype=bool)
        self.top, self.left = int(top), int(left)
        self.shape = (int(mask.shape[0]), int(mask.shape[1]))
        self._packed = np.packbits(mask, axis=None)
        self.area = int(np.count_nonzero(mask))

    @classmethod
    def from_packed(cls, top: int, left: int, shape: tuple[int, int], packed: np.ndarray, area: int) -> MaskCrop:
        """A crop from the bits of :attr:`packed` (e.g. read back from a file), without unpacking."""
        crop = cls.__new__(cls)
        crop.top, crop.left = int(top), int(left)
        crop.shape = (int(shape[0]), int(shape[1]))
        crop._packed = np.asarray(packed, np.uint8)
        crop.area = int(area)
        return crop

    @property
    def packed(self) -> np.ndarray:
        """The mask's bits, 8 pixels per byte (C order)."""
        return self._packed

    @property
    def mask(self) -> np.ndarray:
        """(h, w) bool array of the crop."""
        count = self.shape[0] * self.shape[1]
        return np.unpackbits(self._packed, count=count).reshape(self.shape).view(bool)

    @property
    def nbytes(self) -> int:
        return int(self._packed.nbytes)

    @property
    def bbox_xyxy(self) -> tuple[int, int, int, int]:
        """Tight box (x0, y0, x1, y1), exclusive end, of the mask's pixels."""
        h, w = self.shape
        return self.left, self.top, self.left + w, self.top + h

    def to_full(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask pasted into an all-False array of `shape`."""
        full = np.zeros(shape, dtype=bool)
        h, w = self.shape
        full[self.top:self.top + h, self.left:self.left + w] = self.mask
        return full


def crop_to_content(mask: np.ndarray, top: int = 0, left: int = 0) -> MaskCrop:
    """Shrink a bool mask (placed at `top`, `left`) to the rectangle holding its True pixels."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return MaskCrop(0, 0, np.zeros((0, 0), dtype=bool))
    cols = np.flatnonzero(mask.any(axis=0))
    first_row, last_row, first_col, last_col = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return MaskCrop(top + int(first_row), left + int(first_col), mask[first_row:last_row, first_col:last_col])


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


def _axis_weights(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of bilinear resizing along one axis (align_corners=False).

    Computed as PyTorch's CPU kernel does (float32 scale, source position in double,
    negative positions clamped to 0), so each output pixel reads the same two inputs.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    position = (np.float64(scale) * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    position = np.maximum(position, np.float32(0))
    first = np.floor(position).astype(np.int64)
    weight_second = np.clip(position - first.astype(np.float32), 0, 1).astype(np.float32)
    second = np.minimum(first + 1, in_size - 1)
    return (torch.from_numpy(first), torch.from_numpy(second),
            torch.from_numpy(np.float32(1) - weight_second), torch.from_numpy(weight_second))


def _resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64 matrix of 1-D bilinear resizing as PyTorch's kernel indexes it."""
    first, second, w_first, w_second = (w.numpy() for w in _axis_weights(in_size, out_size))
    matrix = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, first), w_first)
    np.add.at(matrix, (rows, second), w_second)
    return matrix


class WindowedUpsampler:
    """SAM's mask post-processing restricted to the window where a mask can reach a threshold.

    SAM resizes 256² logits to 1024², crops the padding and resizes to the image size,
    both bilinearly. Per axis that is one linear map from the 256 low-resolution
    pixels to the output pixels; its (output x 256) matrix has few non-zeros per row.
    Bilinear resizing is a convex combination, so an output pixel can only exceed a
    value if a low-resolution pixel it reads does: the window of a mask follows from
    the low-resolution pixels above ``-1 - margin`` (the lower stability threshold),
    and everything outside it is below every threshold used. Inside the window the
    values are computed in float64 and agree with SAM's float32 result to ~1e-6, so
    only pixels whose logit is that close to 0 can differ.
    """

    margin = 1e-3

    def __init__(self, input_size: tuple[int, int], original_size: tuple[int, int], low_res_size: int = 256):
        self.original_size = original_size
        self.matrices = []
        for length_in, length_out in zip(input_size, original_size):
            stage1 = _resize_matrix(low_res_size, IMAGE_SIZE)[:length_in]
            self.matrices.append(_resize_matrix(length_in, length_out) @ stage1)
        self.reads = [matrix != 0 for matrix in self.matrices]
        self.first_read = [np.argmax(r, axis=1) for r in self.reads]
        self.last_read = [r.shape[1] - 1 - np.argmax(r[:, ::-1], axis=1) for r in self.reads]

    def window(self, support: np.ndarray) -> tuple[slice, slice] | None:
        """Output rows and columns that read any True pixel of a (256, 256) bool `support`."""
        spans = []
        for axis in (0, 1):
            hit = np.flatnonzero(support.any(axis=1 - axis))
            if hit.size == 0:
                return None
            start = int(np.searchsorted(self.last_read[axis], hit[0]))
            stop = int(np.searchsorted(self.first_read[axis], hit[-1], side="right"))
            if start >= stop:
                return None
            spans.append(slice(start, stop))
        return spans[0], spans[1]

    def values(self, low_res: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        """Full-resolution float64 logits of one (256, 256) map inside ``rows x cols``."""
        row_map, col_map = self.matrices[0][rows], self.matrices[1][cols]
        row_band = slice(int(self.first_read[0][rows][0]), int(self.last_read[0][rows][-1]) + 1)
        col_band = slice(int(self.first_read[1][cols][0]), int(self.last_read[1][cols][-1]) + 1)
        return row_map[:, row_band] @ low_res[row_band, col_band] @ col_map[:, col_band].T


def logits_to_crops(
    low_res: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    chunk_pixels: int = 64 * 1024 * 1024,
    window_fraction: float = 0.25,
) -> tuple[list[MaskCrop], np.ndarray]:
    """Upsample (N, 1, 256, 256) logits to image size, threshold at 0 and crop.

    Masks whose window (see :class:`WindowedUpsampler`) covers less than
    `window_fraction` of the image are upsampled inside it only; the others go
    through SAM's full ``postprocess_masks``, a few at a time, never more than about
    `chunk_pixels` float values at once.

    Logits on a GPU are upsampled there, with SAM's ``postprocess_masks`` for every
    mask; only the cropped masks come back to the host.

    Returns
    -------
    crops : list of MaskCrop
    stability : numpy.ndarray
        (N,) float32 stability scores.
    """
    if low_res.device.type == "cuda":
        return _crops_on_device(low_res.detach().float(), input_size, original_size, chunk_pixels)
    low_res = low_res.detach().float().cpu()
    low_np = low_res[:, 0].numpy().astype(np.float64)
    crops: list[MaskCrop | None] = [None] * low_res.shape[0]
    stability = np.zeros(low_res.shape[0], np.float32)
    upsampler = WindowedUpsampler(input_size, original_size, low_res.shape[-1])
    image_pixels = original_size[0] * original_size[1]
    full = []
    for k, low in enumerate(low_np):
        window = upsampler.window(low > MASK_THRESHOLD - STABILITY_OFFSET - upsampler.margin)
        if window is None:
            crops[k], stability[k] = MaskCrop(0, 0, np.zeros((0, 0), bool)), 1.0
        elif (window[0].stop - window[0].start) * (window[1].stop - window[1].start) > window_fraction * image_pixels:
            full.append(k)
        else:
            logits = upsampler.values(low, *window)
            crops[k], stability[k] = _crop_and_score(logits, window[0].start, window[1].start)
    per_chunk = max(1, chunk_pixels // max(1, image_pixels))
    for start in range(0, len(full), per_chunk):
        index = full[start:start + per_chunk]
        logits = upsample_logits(low_res[index], input_size, original_size)[:, 0]
        for k, mask_logits in zip(index, logits.numpy()):
            crops[k], stability[k] = _crop_and_score(mask_logits, 0, 0)
    return crops, stability


def _crops_on_device(
    low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int], chunk_pixels: int
) -> tuple[list[MaskCrop], np.ndarray]:
    """:func:`logits_to_crops` on the logits' own device, a chunk of masks at a time."""
    crops: list[MaskCrop] = []
    stability = []
    per_chunk = max(1, chunk_pixels // max(1, original_size[0] * original_size[1]))
    for start in range(0, low_res.shape[0], per_chunk):
        logits = upsample_logits(low_res[start:start + per_chunk], input_size, original_size)[:, 0]
        stability.append(stability_scores(logits).float().cpu().numpy())
        masks = logits > MASK_THRESHOLD
        rows, cols = masks.any(dim=2).cpu().numpy(), masks.any(dim=1).cpu().numpy()
        for mask, row_hits, col_hits in zip(masks, rows, cols):
            crops.append(_crop_on_device(mask, row_hits, col_hits))
    return crops, np.concatenate(stability) if stability else np.zeros(0, np.float32)


def _crop_on_device(mask: torch.Tensor, row_hits: np.ndarray, col_hits: np.ndarray) -> MaskCrop:
    """The crop of one device mask, given which of its rows and columns hold True pixels."""
    rows, cols = np.flatnonzero(row_hits), np.flatnonzero(col_hits)
    if rows.size == 0:
        return MaskCrop(0, 0, np.zeros((0, 0), dtype=bool))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return MaskCrop(top, left, mask[top:bottom, left:right].cpu().numpy())


def _crop_and_score(logits: np.ndarray, top: int, left: int) -> tuple[MaskCrop, float]:
    """Binary crop (threshold 0) and stability score of one full-resolution logit window."""
    high = np.count_nonzero(logits > MASK_THRESHOLD + STABILITY_OFFSET)
    low = np.count_nonzero(logits > MASK_THRESHOLD - STABILITY_OFFSET)
    return crop_to_content(logits > MASK_THRESHOLD, top, left), (high / low if low else 1.0)
