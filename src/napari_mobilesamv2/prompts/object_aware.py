"""Object-aware box prompts: MobileSAMv2's detector pass, step for step as the official code.

The official script runs the detector through Ultralytics 8.0.120. Its pre- and post-processing
is reproduced here so the boxes do not depend on the installed Ultralytics version:

* letterbox to ``imgsz`` (aspect kept, padding only up to a multiple of the stride, value 114);
* channel reversal: the official script hands an RGB array to a predictor that assumes BGR, so the
  network sees the channels reversed;
* non-maximum suppression (confidence filter, torchvision NMS, at most ``max_det`` boxes);
* snapping of box edges within ``border_threshold`` px of the letterboxed canvas edge onto it;
* scaling back to image pixels with 8.0.120's rounding of the padding.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torchvision

from ..errors import InputError

PAD_VALUE = 114
MAX_NMS_CANDIDATES = 30000  # 8.0.120 keeps at most this many boxes, by score, before NMS


def letterbox(image: np.ndarray, new_size: int = 1024, stride: int = 32) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize keeping the aspect ratio and pad to a multiple of `stride` (8.0.120 ``LetterBox(auto=True)``).

    Parameters
    ----------
    image : numpy.ndarray
        (H, W, C) uint8 image.
    new_size : int
        The longer side is scaled to this length (up or down).
    stride : int
        Each side of the result is padded to a multiple of this.

    Returns
    -------
    padded : numpy.ndarray
        The resized image with constant 114 borders, e.g. 672x1024 for a 280x440 image.
    ratio : float
        Scale factor from the image to the resized content.
    pad : tuple of int
        (left, top) padding in pixels.
    """
    height, width = image.shape[:2]
    ratio = min(new_size / height, new_size / width)
    resized_width, resized_height = int(round(width * ratio)), int(round(height * ratio))
    pad_x = (new_size - resized_width) % stride / 2
    pad_y = (new_size - resized_height) % stride / 2
    if (width, height) != (resized_width, resized_height):
        image = cv2.resize(image, (resized_width, resized_height), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(pad_y - 0.1)), int(round(pad_y + 0.1))
    left, right = int(round(pad_x - 0.1)), int(round(pad_x + 0.1))
    padded = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return padded, ratio, (left, top)


def non_max_suppression(
    predictions: torch.Tensor, conf: float = 0.4, iou: float = 0.9, max_det: int = 300
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-agnostic NMS of one image's raw detector output, as 8.0.120 does it for one class.

    Parameters
    ----------
    predictions : torch.Tensor
        (4 + nc, A) xywh boxes and class scores per anchor.
    conf : float
        Boxes need a score strictly above this.
    iou : float
        A box is dropped when it overlaps a better-scored kept box by more than this IoU.
    max_det : int
        At most this many boxes are kept.

    Returns
    -------
    boxes : torch.Tensor
        (N, 4) xyxy boxes, best score first.
    scores : torch.Tensor
        (N,) their scores.
    """
    candidates = predictions.T[predictions[4:].amax(0) > conf]
    boxes = _xywh_to_xyxy(candidates[:, :4])
    scores = candidates[:, 4:].amax(1)
    order = scores.argsort(descending=True)[:MAX_NMS_CANDIDATES]
    boxes, scores = boxes[order], scores[order]
    kept = torchvision.ops.nms(boxes, scores, iou)[:max_det]
    return boxes[kept], scores[kept]


def _xywh_to_xyxy(xywh: torch.Tensor) -> torch.Tensor:
    centre, half_size = xywh[:, :2], xywh[:, 2:] / 2
    return torch.cat((centre - half_size, centre + half_size), 1)


def snap_boxes_to_border(boxes: torch.Tensor, network_shape: tuple[int, int], threshold: float = 20) -> torch.Tensor:
    """Move box edges closer than `threshold` px to the canvas edge onto it (MobileSAMv2's border snap).

    Parameters
    ----------
    boxes : torch.Tensor
        (N, 4) xyxy boxes in letterboxed network-input pixels.
    network_shape : tuple of int
        (height, width) of the letterboxed network input (padding included).
    threshold : float
        x1 < threshold becomes 0, y1 < threshold becomes 0, x2 > width - threshold becomes width and
        y2 > height - threshold becomes height.

    Returns
    -------
    torch.Tensor
        New (N, 4) tensor with the snapped boxes.
    """
    height, width = network_shape
    low = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack(
        (
            torch.where(x1 < threshold, low, x1),
            torch.where(y1 < threshold, low, y1),
            torch.where(x2 > width - threshold, low + width, x2),
            torch.where(y2 > height - threshold, low + height, y2),
        ),
        1,
    )


def scale_boxes_v8_0_120(
    network_shape: tuple[int, int], boxes: torch.Tensor, image_shape: tuple[int, ...]
) -> torch.Tensor:
    """Map xyxy boxes from the letterboxed input back to image pixels with Ultralytics 8.0.120's rule.

    ``gain = min(H / h0, W / w0)``, ``pad = (round((W - w0 * gain) / 2 - 0.1), round((H - h0 * gain) / 2
    - 0.1))``, ``box = (box - pad) / gain``, then clipped to the image. Current Ultralytics rounds
    the padding differently, so its ``scale_boxes`` gives slightly different boxes.

    Parameters
    ----------
    network_shape : tuple of int
        (H, W) of the letterboxed network input.
    boxes : torch.Tensor
        (N, 4) xyxy boxes in network-input pixels.
    image_shape : tuple of int
        (h0, w0, ...) of the original image.

    Returns
    -------
    torch.Tensor
        New (N, 4) tensor of xyxy boxes in image pixels.
    """
    network_height, network_width = network_shape[:2]
    image_height, image_width = image_shape[:2]
    gain = min(network_height / image_height, network_width / image_width)
    pad_x = round((network_width - image_width * gain) / 2 - 0.1)
    pad_y = round((network_height - image_height * gain) / 2 - 0.1)
    pad = torch.tensor([pad_x, pad_y, pad_x, pad_y], dtype=boxes.dtype, device=boxes.device)
    scaled = (boxes - pad) / gain
    x1, y1, x2, y2 = scaled.unbind(1)
    return torch.stack(
        (x1.clamp(0, image_width), y1.clamp(0, image_height), x2.clamp(0, image_width), y2.clamp(0, image_height)),
        1,
    )


def detect_objects(
    model: torch.nn.Module,
    image_rgb: np.ndarray,
    *,
    imgsz: int = 1024,
    conf: float = 0.4,
    iou: float = 0.9,
    max_det: int = 300,
    border_threshold: float = 20,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Object-aware box prompts of one image, as MobileSAMv2's official inference computes them.

    Parameters
    ----------
    model : torch.nn.Module
        Detector from :func:`napari_mobilesamv2.models.detector.load_object_aware_model`, already on
        `device`: maps a (1, 3, H, W) float batch in [0, 1] to (1, 4 + nc, A) xywh boxes and scores.
    image_rgb : numpy.ndarray
        (H, W, 3) uint8 RGB image.
    imgsz : int
        Size of the letterboxed network input's longer side.
    conf, iou, max_det : float, float, int
        Confidence threshold, NMS IoU threshold and maximum number of boxes.
    border_threshold : float
        Box edges this close to the letterboxed canvas edge are snapped onto it.
    device : str or torch.device
        Where the network input is placed.

    Returns
    -------
    boxes_xyxy : numpy.ndarray
        (N, 4) float32 boxes in image pixels, best score first; (0, 4) when nothing is found.
    scores : numpy.ndarray
        (N,) float32 detector scores.
    """
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise InputError(f"the detector needs an (H, W, 3) uint8 RGB image, not {image_rgb.dtype} {image_rgb.shape}")
    stride = max(int(model.stride.max()), 32) if hasattr(model, "stride") else 32
    network_image, _, _ = letterbox(image_rgb, imgsz, stride)
    # the official script passes RGB to a predictor that assumes BGR and reverses the channels
    network_input = np.ascontiguousarray(network_image[..., ::-1].transpose(2, 0, 1))
    with torch.inference_mode():
        batch = torch.from_numpy(network_input)[None].to(device).float() / 255
        predictions = model(batch)[0]
        if predictions.device.type == "mps":  # as 8.0.120: NMS on the CPU for Apple MPS
            predictions = predictions.cpu()
        boxes, scores = non_max_suppression(predictions, conf, iou, max_det)
        boxes = snap_boxes_to_border(boxes, batch.shape[2:], border_threshold)
        boxes = scale_boxes_v8_0_120(batch.shape[2:], boxes, image_rgb.shape)
    return boxes.float().cpu().numpy().reshape(-1, 4), scores.float().cpu().numpy().reshape(-1)
