"""segment-anything's own decoder calls for box prompts: the reference the box decoders are checked against.

:func:`reference_box_logits` runs ``PromptEncoder`` and ``MaskDecoder`` batch by batch
exactly as ``SamPredictor.predict_torch(boxes=..., multimask_output=False)`` (and the
official MobileSAMv2 script) does. It is slow (image-side work is repeated for every
box) and serves tests and comparisons; the software decodes boxes with
:class:`~napari_mobilesamv2.decode.folded.FoldedBoxDecoder` (default) or
:class:`~napari_mobilesamv2.decode.exact.ExactBoxDecoder` (bitwise equal to this
function for the same batches).
"""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder

from ..embedding import ImageEmbedding
from .batching import GPU_CHUNK
from .prompted import transform_boxes


@torch.inference_mode()
def reference_box_logits(
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    embedding: ImageEmbedding,
    boxes_xyxy: np.ndarray,
    batch_size: int = GPU_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-res logits and predicted IoU for box prompts from segment-anything's decoder calls.

    Parameters
    ----------
    prompt_encoder, mask_decoder
        segment-anything modules.
    embedding : ImageEmbedding
        The image's embedding.
    boxes_xyxy : numpy.ndarray
        (N, 4) x0, y0, x1, y1 boxes in image pixels.
    batch_size : int, optional
        Boxes per decoder call (the official script's 320 by default).

    Returns
    -------
    low_res, iou : torch.Tensor
        As :func:`~napari_mobilesamv2.decode.prompted.decode_box_logits` returns them.
    """
    device = embedding.device
    boxes = torch.from_numpy(transform_boxes(boxes_xyxy, embedding.original_size)).to(device)
    image_pe = prompt_encoder.get_dense_pe()
    logits, ious = [torch.zeros((0, 1, 256, 256), device=device)], [torch.zeros(0, device=device)]
    for start in range(0, boxes.shape[0], max(1, int(batch_size))):
        sparse, dense = prompt_encoder(points=None, boxes=boxes[start:start + batch_size], masks=None)
        low_res, iou = mask_decoder(
            image_embeddings=embedding.features, image_pe=image_pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=False,
        )
        logits.append(low_res)
        ious.append(iou[:, 0])
    return torch.cat(logits), torch.cat(ious)
