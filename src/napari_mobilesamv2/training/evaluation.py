"""Box recall, precision and F1 of a detector on annotated images, and the thresholds that maximise F1.

A predicted box counts as found when it overlaps a not yet matched true box with IoU >= 0.5
(greedy matching, best score first, as in the usual detection benchmarks). The detector runs
exactly as in segmentation (:func:`napari_mobilesamv2.prompts.object_aware.detect_objects`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..errors import InputError
from ..prompts.object_aware import (
    detect_objects,
    letterbox,
    non_max_suppression,
    scale_boxes_v8_0_120,
    snap_boxes_to_border,
)

CONF_GRID = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8)
IOU_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MATCH_IOU = 0.5


def match_rates(n_matched: int, n_predicted: int, n_true: int) -> tuple[float, float, float]:
    """Precision ``matched / predicted``, recall ``matched / true`` and F1 ``2 matched / (predicted + true)``,
    each 0.0 where its denominator is 0."""
    precision = n_matched / n_predicted if n_predicted else 0.0
    recall = n_matched / n_true if n_true else 0.0
    f1 = 2 * n_matched / (n_predicted + n_true) if n_predicted + n_true else 0.0
    return float(precision), float(recall), float(f1)


@dataclass(frozen=True)
class BoxScores:
    """How well predicted boxes match the true boxes (IoU >= 0.5, one-to-one).

    Attributes
    ----------
    precision, recall, f1 : float
        ``matched / predicted``, ``matched / true`` and ``2 matched / (predicted + true)``
        (0 where the denominator is 0).
    n_true, n_predicted, n_matched : int
        Counts over all images.
    seconds_per_image : float
        Mean wall time of the detector per image (network and post-processing).
    """

    precision: float
    recall: float
    f1: float
    n_true: int
    n_predicted: int
    n_matched: int
    seconds_per_image: float

    @classmethod
    def from_counts(cls, n_matched: int, n_predicted: int, n_true: int, seconds_per_image: float) -> BoxScores:
        """Scores of the given counts."""
        return cls(*match_rates(n_matched, n_predicted, n_true), int(n_true), int(n_predicted), int(n_matched),
                   float(seconds_per_image))

    def as_dict(self) -> dict:
        """Plain dict (for JSON)."""
        return asdict(self)


@dataclass(frozen=True)
class ThresholdChoice:
    """Detector thresholds picked by :func:`tune_thresholds`.

    Attributes
    ----------
    conf, iou : float
        Confidence threshold and NMS IoU threshold with the highest box F1.
    scores : BoxScores
        The scores at those thresholds (``seconds_per_image`` measured at them).
    grid : tuple of (conf, iou, f1)
        F1 of every tried pair.
    """

    conf: float
    iou: float
    scores: BoxScores
    grid: tuple[tuple[float, float, float], ...]

    def as_dict(self) -> dict:
        """Plain dict (for JSON), without the grid."""
        return {"conf": self.conf, "iou": self.iou, **self.scores.as_dict()}


def count_matches(predicted: np.ndarray, true: np.ndarray, iou_threshold: float = MATCH_IOU) -> int:
    """Number of one-to-one matches with IoU >= `iou_threshold`, predictions taken in the given order.

    Parameters
    ----------
    predicted : numpy.ndarray
        (N, 4) xyxy boxes, best score first.
    true : numpy.ndarray
        (M, 4) xyxy boxes.
    """
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1, 4)
    true = np.asarray(true, dtype=np.float64).reshape(-1, 4)
    if not len(predicted) or not len(true):
        return 0
    overlaps = _iou(predicted, true)
    free = np.ones(len(true), dtype=bool)
    matched = 0
    for row in overlaps:
        candidates = np.where(free & (row >= iou_threshold))[0]
        if len(candidates):
            free[candidates[np.argmax(row[candidates])]] = False
            matched += 1
    return matched


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)


def _annotated(images: Iterable) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rgb, boxes) pairs from AnnotatedImage objects or (rgb, boxes) tuples."""
    pairs = []
    for item in images:
        rgb, boxes = (item.read_rgb(), item.boxes) if hasattr(item, "read_rgb") else item
        pairs.append((np.asarray(rgb), np.asarray(boxes, dtype=np.float32).reshape(-1, 4)))
    if not pairs:
        raise InputError("no annotated images to evaluate the detector on")
    return pairs


def evaluate_detector(
    detector: torch.nn.Module,
    images: Iterable,
    *,
    conf: float = 0.4,
    iou: float = 0.9,
    imgsz: int = 1024,
    max_det: int = 300,
    border_threshold: float = 20,
    device: str | torch.device = "cpu",
) -> BoxScores:
    """Box precision, recall and F1 (IoU >= 0.5) of `detector` on annotated images.

    Parameters
    ----------
    detector : torch.nn.Module
        An :class:`~napari_mobilesamv2.models.detector.ObjectAwareDetector` on `device`.
    images : iterable
        :class:`~napari_mobilesamv2.training.dataset.AnnotatedImage` objects or
        ``(rgb_uint8, boxes_xyxy)`` pairs.
    conf, iou, imgsz, max_det, border_threshold, device
        As in :func:`~napari_mobilesamv2.prompts.object_aware.detect_objects`.
    """
    matched = predicted = true = 0
    seconds = 0.0
    pairs = _annotated(images)
    for rgb, boxes in pairs:
        start = time.perf_counter()
        found, _ = detect_objects(detector, rgb, imgsz=imgsz, conf=conf, iou=iou, max_det=max_det,
                                  border_threshold=border_threshold, device=device)
        seconds += time.perf_counter() - start
        matched += count_matches(found, boxes)
        predicted += len(found)
        true += len(boxes)
    return BoxScores.from_counts(matched, predicted, true, seconds / len(pairs))


def tune_thresholds(
    detector: torch.nn.Module,
    images: Iterable,
    *,
    confs: Sequence[float] = CONF_GRID,
    ious: Sequence[float] = IOU_GRID,
    imgsz: int = 1024,
    max_det: int = 300,
    border_threshold: float = 20,
    device: str | torch.device = "cpu",
) -> ThresholdChoice:
    """Confidence and NMS IoU thresholds that maximise box F1 (IoU >= 0.5) on annotated images.

    The network runs once per image; every (conf, iou) pair of the grid then post-processes its
    output as :func:`~napari_mobilesamv2.prompts.object_aware.detect_objects` does. Ties go to the
    higher confidence threshold (fewer boxes), then to the higher IoU threshold.

    Parameters
    ----------
    detector : torch.nn.Module
        An :class:`~napari_mobilesamv2.models.detector.ObjectAwareDetector` on `device`.
    images : iterable
        :class:`~napari_mobilesamv2.training.dataset.AnnotatedImage` objects or
        ``(rgb_uint8, boxes_xyxy)`` pairs.
    confs, ious : sequence of float
        The grid.
    imgsz, max_det, border_threshold, device
        As in :func:`~napari_mobilesamv2.prompts.object_aware.detect_objects`.

    Returns
    -------
    ThresholdChoice
        The best pair, its scores (with the detector's time per image at that pair) and the grid.
    """
    if not confs or not ious:
        raise InputError("give at least one confidence and one IoU threshold to try")
    pairs = _annotated(images)
    counts = {(c, i): [0, 0] for c in confs for i in ious}  # (matched, predicted)
    for rgb, boxes in pairs:
        predictions, network_shape = _raw_predictions(detector, rgb, imgsz, device)
        for (conf, iou), count in counts.items():
            found = _postprocess(predictions, network_shape, rgb.shape, conf, iou, max_det, border_threshold)
            count[0] += count_matches(found, boxes)
            count[1] += len(found)
    n_true = sum(len(boxes) for _, boxes in pairs)
    grid = tuple((c, i, BoxScores.from_counts(m, p, n_true, 0.0).f1) for (c, i), (m, p) in counts.items())
    best_conf, best_iou, _ = max(grid, key=lambda cell: (round(cell[2], 12), cell[0], cell[1]))
    scores = evaluate_detector(detector, pairs, conf=best_conf, iou=best_iou, imgsz=imgsz, max_det=max_det,
                               border_threshold=border_threshold, device=device)
    return ThresholdChoice(float(best_conf), float(best_iou), scores, grid)


def _raw_predictions(detector, rgb: np.ndarray, imgsz: int, device) -> tuple[torch.Tensor, tuple[int, int]]:
    """The detector's (4 + nc, A) output for one image, with the network input's (H, W)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"the detector needs (H, W, 3) uint8 RGB images, not {rgb.dtype} {rgb.shape}")
    stride = max(int(detector.stride.max()), 32) if hasattr(detector, "stride") else 32
    network_image, _, _ = letterbox(rgb, imgsz, stride)
    network_input = np.ascontiguousarray(network_image[..., ::-1].transpose(2, 0, 1))  # reversed, as detect_objects
    with torch.inference_mode():
        batch = torch.from_numpy(network_input)[None].to(device).float() / 255
        predictions = detector(batch)[0].float().cpu()
    return predictions, tuple(batch.shape[2:])


def _postprocess(predictions, network_shape, image_shape, conf, iou, max_det, border_threshold) -> np.ndarray:
    with torch.inference_mode():
        boxes, _ = non_max_suppression(predictions, conf, iou, max_det)
        boxes = snap_boxes_to_border(boxes, network_shape, border_threshold)
        boxes = scale_boxes_v8_0_120(network_shape, boxes, image_shape)
    return boxes.numpy().reshape(-1, 4)
