"""Prompt-guided decoding: boxes and points through SAM's prompt encoder and mask decoder.

Box prompts go through one of two decoders that compute segment-anything's mask
decoder for many boxes on one image:

* :class:`~napari_mobilesamv2.decode.folded.FoldedBoxDecoder`, the default: about
  half the arithmetic, logits within ~4e-7 of segment-anything's;
* :class:`~napari_mobilesamv2.decode.exact.ExactBoxDecoder` (``exact=True``): slower,
  logits bitwise equal to ``SamPredictor.predict_torch`` for the same batches.

segment-anything's own calls, for checks, are in :mod:`~napari_mobilesamv2.decode.reference`.
Point prompts (:func:`decode_object_prompts`) call segment-anything's modules directly.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder
from segment_anything.utils.transforms import ResizeLongestSide

from ..embedding import ImageEmbedding
from ..errors import InputError
from ..models.build import IMAGE_SIZE
from .batching import default_chunk
from .exact import ExactBoxDecoder
from .folded import FoldedBoxDecoder
from .masks import MaskCrop, logits_to_crops

log = logging.getLogger(__name__)

_TRANSFORM = ResizeLongestSide(IMAGE_SIZE)


@dataclass
class DecodedMasks:
    """Masks for a list of prompts, in prompt order.

    Attributes
    ----------
    crops : list of MaskCrop
        Binary full-resolution masks (thresholded logits > 0), stored as crops.
    predicted_iou : numpy.ndarray
        (N,) float32, the decoder's own quality estimate.
    stability : numpy.ndarray
        (N,) float32 stability scores (SAM's definition, offset 1.0).
    low_res_logits : torch.Tensor
        (N, 1, 256, 256) logits, usable as mask input for refinement.
    """

    crops: list[MaskCrop]
    predicted_iou: np.ndarray
    stability: np.ndarray
    low_res_logits: torch.Tensor = field(repr=False)

    def __len__(self) -> int:
        return len(self.crops)


def join_decoded(parts: list[DecodedMasks]) -> DecodedMasks:
    """The masks of several :class:`DecodedMasks`, in order."""
    if len(parts) == 1:
        return parts[0]
    return DecodedMasks(
        [crop for part in parts for crop in part.crops],
        np.concatenate([part.predicted_iou for part in parts]).astype(np.float32),
        np.concatenate([part.stability for part in parts]).astype(np.float32),
        torch.cat([part.low_res_logits for part in parts]),
    )


def transform_boxes(boxes_xyxy: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """Image-pixel boxes to the 1024 model frame (``ResizeLongestSide.apply_boxes``, float64)."""
    return _TRANSFORM.apply_boxes(np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4), original_size)


def transform_points(points_xy: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """Image-pixel (x, y) points to the 1024 model frame (``apply_coords``, float64)."""
    return _TRANSFORM.apply_coords(np.asarray(points_xy, dtype=np.float32).reshape(-1, 2), original_size)


@torch.inference_mode()
def decode_box_logits(
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    embedding: ImageEmbedding,
    boxes_xyxy: np.ndarray,
    batch_size: int | None = None,
    exact: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-res logits and predicted IoU for box prompts, one mask per box.

    Computes what ``SamPredictor.predict_torch(boxes=..., multimask_output=False)``
    (and the official MobileSAMv2 script) computes, in batches of `batch_size`
    boxes (default: 4 on a CPU, 320 on a GPU). On a CUDA out-of-memory error the
    batch is halved and retried.

    By default :class:`~napari_mobilesamv2.decode.folded.FoldedBoxDecoder` does it
    with about half the arithmetic, in another floating-point order: logits differ
    from the reference by ~1e-7, so a mask pixel can only differ where its logit is
    within that of 0. ``exact=True`` uses
    :class:`~napari_mobilesamv2.decode.exact.ExactBoxDecoder`, whose logits are bitwise
    equal to ``predict_torch`` run with the same batches.

    Returns
    -------
    low_res : torch.Tensor
        (N, 1, 256, 256) float32 logits.
    iou : torch.Tensor
        (N,) float32 predicted IoU.
    """
    device = embedding.device
    boxes = torch.from_numpy(transform_boxes(boxes_xyxy, embedding.original_size)).to(device)
    decoder_class = ExactBoxDecoder if exact else FoldedBoxDecoder
    batch_size = default_chunk(device) if batch_size is None else max(1, int(batch_size))
    while True:
        try:
            return decoder_class(prompt_encoder, mask_decoder, embedding).decode(boxes, chunk=batch_size)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise InputError(
                    "the GPU ran out of memory even with one box per batch; close other GPU programs or "
                    "use device='cpu'"
                ) from None
            batch_size //= 2
            torch.cuda.empty_cache()
            log.warning("GPU out of memory while decoding boxes; retrying with batches of %d", batch_size)


def decode_boxes(
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    embedding: ImageEmbedding,
    boxes_xyxy: np.ndarray,
    batch_size: int | None = None,
    exact: bool = False,
) -> DecodedMasks:
    """Full-resolution binary masks for box prompts (see :func:`decode_box_logits`)."""
    low_res, iou = decode_box_logits(prompt_encoder, mask_decoder, embedding, boxes_xyxy, batch_size, exact)
    crops, stability = logits_to_crops(low_res, embedding.input_size, embedding.original_size)
    return DecodedMasks(crops, iou.float().cpu().numpy(), stability, low_res)


@torch.inference_mode()
def decode_boxes_in_groups(
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    embedding: ImageEmbedding,
    boxes_xyxy: np.ndarray,
    group: int,
    batch_size: int | None = None,
    exact: bool = False,
) -> Generator[int, None, DecodedMasks]:
    """:func:`decode_boxes` a group of boxes at a time, yielding the number of boxes done after each.

    One decoder serves every group (the per-image work is done once). With `group` a
    multiple of `batch_size` the batches are those of one :func:`decode_boxes` call, so
    the logits are the same bit for bit.
    """
    device = embedding.device
    batch_size = default_chunk(device) if batch_size is None else max(1, int(batch_size))
    decoder = (ExactBoxDecoder if exact else FoldedBoxDecoder)(prompt_encoder, mask_decoder, embedding)
    boxes = torch.from_numpy(transform_boxes(boxes_xyxy, embedding.original_size)).to(device)
    parts = []
    for start in range(0, max(len(boxes), 1), max(1, int(group))):
        low_res, iou = decoder.decode(boxes[start:start + group], chunk=batch_size)
        crops, stability = logits_to_crops(low_res, embedding.input_size, embedding.original_size)
        parts.append(DecodedMasks(crops, iou.float().cpu().numpy(), stability, low_res))
        yield min(start + group, len(boxes))
    return join_decoded(parts)


@dataclass(frozen=True)
class ObjectPrompt:
    """Prompts that together describe one object.

    Attributes
    ----------
    points : numpy.ndarray
        (K, 2) float (x, y) image pixels; may be empty.
    labels : numpy.ndarray
        (K,) int, 1 = foreground, 0 = background.
    box : numpy.ndarray or None
        (4,) float x0, y0, x1, y1 in image pixels.
    mask : numpy.ndarray or None
        (H, W) bool mask of the object in image pixels (e.g. its mask on the
        neighbouring plane of a stack), given to the decoder as its low-resolution
        mask input (see :func:`mask_input`).
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    box: np.ndarray | None = None
    mask: np.ndarray | None = None


#: Logit given to mask-input cells wholly inside (+) or outside (-) the object.
MASK_INPUT_LOGIT = 8.0
_LOW_RES = IMAGE_SIZE // 4  # SAM's mask input and low-resolution output side (256)


def mask_input(mask: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """A binary image-pixel mask as SAM's (1, 256, 256) float32 mask input (logits).

    The mask is resized as the image is (longer side to 1024, padded at the bottom and
    right), averaged over 4 x 4 cells, and the fraction ``f`` of object pixels in each
    cell becomes the logit ``MASK_INPUT_LOGIT * (2 f - 1)``: positive inside, negative
    outside, near 0 on the edge.

    Parameters
    ----------
    mask : numpy.ndarray
        (H, W) bool, the image's size.
    original_size : tuple of int
        (H, W) of the image.
    """
    mask = np.asarray(mask, bool)
    if mask.shape != tuple(original_size):
        raise InputError(f"the mask prompt has shape {mask.shape}, but the image is {tuple(original_size)}")
    h, w = ResizeLongestSide.get_preprocess_shape(mask.shape[0], mask.shape[1], IMAGE_SIZE)
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(mask).float()[None, None], size=(h, w), mode="bilinear", align_corners=False,
    )
    padded = torch.nn.functional.pad(resized, (0, IMAGE_SIZE - w, 0, IMAGE_SIZE - h))
    fraction = torch.nn.functional.avg_pool2d(padded, IMAGE_SIZE // _LOW_RES)
    return (MASK_INPUT_LOGIT * (2.0 * fraction[0] - 1.0)).numpy().astype(np.float32)


@torch.inference_mode()
def decode_object_prompts(
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    embedding: ImageEmbedding,
    objects: list[ObjectPrompt],
) -> DecodedMasks:
    """One mask per object from points and/or a box, as ``SamPredictor.predict`` does.

    A lone foreground point is ambiguous, so SAM's three multimask outputs are
    computed and the one with the highest predicted IoU is kept; with more
    prompts (a box, several points, a mask input) the single-mask output is used.
    """
    device = embedding.device
    logits, ious = [], []
    image_pe = prompt_encoder.get_dense_pe()
    for obj in objects:
        points = None
        if len(obj.points):
            coords = torch.from_numpy(transform_points(obj.points, embedding.original_size)).to(device)
            labels = torch.as_tensor(np.asarray(obj.labels), dtype=torch.int64, device=device)
            points = (coords[None].float(), labels[None])
        box = None
        if obj.box is not None:
            box = torch.from_numpy(transform_boxes(obj.box, embedding.original_size)).to(device)
        masks = None
        if obj.mask is not None:
            masks = torch.from_numpy(mask_input(obj.mask, embedding.original_size))[None].to(device)
        sparse, dense = prompt_encoder(points=points, boxes=box, masks=masks)
        multimask = obj.box is None and obj.mask is None and len(obj.points) == 1
        low_res, iou = mask_decoder(
            image_embeddings=embedding.features, image_pe=image_pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=multimask,
        )
        best = int(iou[0].argmax())
        logits.append(low_res[:, best:best + 1])
        ious.append(iou[:, best])
    if not logits:
        return DecodedMasks([], np.zeros(0, np.float32), np.zeros(0, np.float32), torch.zeros((0, 1, 256, 256)))
    low_res, iou = torch.cat(logits), torch.cat(ious)
    crops, stability = logits_to_crops(low_res, embedding.input_size, embedding.original_size)
    return DecodedMasks(crops, iou.float().cpu().numpy(), stability, low_res)
