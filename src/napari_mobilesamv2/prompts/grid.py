"""Grid-search baseline: SAM's automatic mask generator on an existing embedding.

SAM's "segment everything" prompts the decoder with a regular grid of points,
three masks each, then filters by predicted IoU, stability and box NMS. It is the
baseline MobileSAMv2 replaces; running it on the same embedding makes the two
directly comparable.
"""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam

from ..decode.masks import MaskCrop, crop_to_content
from ..embedding import PIXEL_MEAN, PIXEL_STD, ImageEmbedding

GRID_SIZES = (16, 32, 64)
#: SAM's automatic mask generator settings used when no other value is given
GRID_DEFAULTS = {"points_per_batch": 64, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95}


class _EmbeddedPredictor(SamPredictor):
    """A SamPredictor that answers ``set_image`` with an embedding computed beforehand."""

    def __init__(self, sam: Sam, embedding: ImageEmbedding):
        super().__init__(sam)
        self._embedding = embedding

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if tuple(image.shape[:2]) != self._embedding.original_size:
            raise ValueError("the grid baseline reuses the whole-image embedding; crops are not supported")
        self.reset_image()
        self.features = self._embedding.features
        self.original_size = self._embedding.original_size
        self.input_size = self._embedding.input_size
        self.is_image_set = True


def grid_everything(
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    embedding: ImageEmbedding,
    image_rgb: np.ndarray,
    *,
    points_per_side: int = 32,
    points_per_batch: int = GRID_DEFAULTS["points_per_batch"],
    pred_iou_thresh: float = GRID_DEFAULTS["pred_iou_thresh"],
    stability_score_thresh: float = GRID_DEFAULTS["stability_score_thresh"],
    box_nms_thresh: float = 0.7,
) -> dict:
    """Run SAM's automatic mask generator with a points grid on `embedding`.

    Returns
    -------
    dict
        ``crops`` (list of MaskCrop), ``boxes_xyxy`` (N, 4) float32,
        ``predicted_iou`` and ``stability`` (N,) float32, ``points`` (N, 2), in
        the generator's output order.
    """
    sam = Sam(_NoEncoder(), prompt_encoder, mask_decoder, list(PIXEL_MEAN), list(PIXEL_STD)).to(embedding.device)
    generator = SamAutomaticMaskGenerator(
        sam, points_per_side=points_per_side, points_per_batch=points_per_batch,
        pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
        box_nms_thresh=box_nms_thresh, output_mode="coco_rle",
    )
    generator.predictor = _EmbeddedPredictor(sam, embedding)
    with torch.inference_mode():
        records = generator.generate(image_rgb)
    crops: list[MaskCrop] = [crop_to_content(mask_utils.decode(r["segmentation"]).astype(bool)) for r in records]
    boxes = np.array([r["bbox"] for r in records], dtype=np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return {
        "crops": crops,
        "boxes_xyxy": boxes,
        "predicted_iou": np.array([r["predicted_iou"] for r in records], dtype=np.float32),
        "stability": np.array([r["stability_score"] for r in records], dtype=np.float32),
        "points": np.array([r["point_coords"][0] for r in records], dtype=np.float32).reshape(-1, 2),
    }


class _NoEncoder(torch.nn.Module):
    """Placeholder encoder: the embedding is given, only ``img_size`` is read."""

    img_size = 1024

    def forward(self, x):  # pragma: no cover - never called
        raise RuntimeError("the grid baseline must not re-encode the image")
