"""The mask filters (least predicted IoU, stability and area) that maximise instance F1 on annotated images.

Segment everything runs once per annotated image with no filter. Each decoded mask (as decoded,
before overlaps are resolved in the label image) is paired with the ground-truth object it
overlaps with mask IoU >= 0.5. The objects of a label image do not overlap, so a mask has at most
one such partner, and one-to-one matching reduces to counting the true objects that keep at
least one partner: further masks on the same object are false positives. Every combination of
the filter grids is then scored from these pairs without running the models again.

The pipeline is taken as an argument (anything with a ``segment_everything`` method returning a
:class:`~napari_mobilesamv2.results.Segmentation`-like object), so this module does not import it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..prompts.object_aware import detect_objects
from .evaluation import match_rates

MASK_MATCH_IOU = 0.5
"""Least mask IoU of a predicted mask and a true object to count as found."""
PREDICTED_IOU_GRID: tuple[float | None, ...] = (None, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96)
"""Values of ``min_predicted_iou`` tried (``None``: off)."""
STABILITY_GRID: tuple[float | None, ...] = (None, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.95, 0.97)
"""Values of ``min_stability`` tried (``None``: off)."""
AREA_GRID: tuple[int | None, ...] = (None, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
"""Values of ``min_area`` (pixels) tried (``None``: off)."""
FILTER_NAMES = ("min_predicted_iou", "min_stability", "min_area")
"""The filter settings, in the order of the tie rule."""


@dataclass(frozen=True)
class MaskScores:
    """How well predicted masks match the true objects (mask IoU >= 0.5, one-to-one).

    Attributes
    ----------
    precision, recall, f1 : float
        ``matched / predicted``, ``matched / true`` and ``2 matched / (predicted + true)``
        (0 where the denominator is 0).
    n_true, n_predicted, n_matched : int
        Counts over all images.
    """

    precision: float
    recall: float
    f1: float
    n_true: int
    n_predicted: int
    n_matched: int

    @classmethod
    def from_counts(cls, n_matched: int, n_predicted: int, n_true: int) -> MaskScores:
        """Scores of the given counts."""
        return cls(*match_rates(n_matched, n_predicted, n_true), int(n_true), int(n_predicted), int(n_matched))

    def as_dict(self) -> dict:
        """Plain dict (for JSON)."""
        return asdict(self)


@dataclass(frozen=True)
class MaskFilterChoice:
    """Mask filters picked by :func:`tune_mask_filters`.

    Attributes
    ----------
    min_predicted_iou, min_stability : float or None
        Least predicted IoU and stability score (``None``: filter off).
    min_area : int or None
        Least mask area in pixels (``None``: filter off).
    before, after : MaskScores
        Instance scores with no filter and with the chosen filters.
    seconds_per_image : float
        Mean wall time per image of detecting and segmenting everything (the filters cost nothing).
    n_images : int
        Annotated images the choice was made on.
    conf, iou : float
        Detector thresholds the images were segmented with.
    grid : tuple of (min_predicted_iou, min_stability, min_area, f1)
        F1 of every tried combination.
    """

    min_predicted_iou: float | None
    min_stability: float | None
    min_area: int | None
    before: MaskScores
    after: MaskScores
    seconds_per_image: float
    n_images: int
    conf: float
    iou: float
    grid: tuple[tuple[float | None, float | None, int | None, float], ...] = ()

    def settings(self) -> dict[str, float | int | None]:
        """The filters as :class:`~napari_mobilesamv2.options.EverythingOptions` settings (``None``: off)."""
        return {name: getattr(self, name) for name in FILTER_NAMES}

    def describe(self) -> str:
        """The filters in words, e.g. ``min_predicted_iou 0.8, min_stability off, min_area 50``."""
        return ", ".join(f"{name} {'off' if value is None else f'{value:g}'}"
                         for name, value in self.settings().items())

    def as_dict(self) -> dict:
        """Plain dict (for JSON), without the grid."""
        return {**self.settings(), "before": self.before.as_dict(), "after": self.after.as_dict(),
                "seconds_per_image": float(self.seconds_per_image), "n_images": int(self.n_images),
                "conf": float(self.conf), "iou": float(self.iou), "match_iou": MASK_MATCH_IOU}


def match_masks(crops: Sequence, labels: np.ndarray, iou_threshold: float = MASK_MATCH_IOU) -> np.ndarray:
    """The true object each predicted mask overlaps with mask IoU >= `iou_threshold`.

    Parameters
    ----------
    crops : sequence of MaskCrop
        Predicted masks (``top``, ``left``, ``mask`` and ``area`` of
        :class:`~napari_mobilesamv2.decode.masks.MaskCrop`), in the image of `labels`.
    labels : numpy.ndarray
        (H, W) integer ground-truth label image (0: background).
    iou_threshold : float
        Least IoU of a pair, above 0.

    Returns
    -------
    numpy.ndarray
        (N,) int64: for each mask the index of its partner among the ids of `labels` in ascending
        order (0 for the smallest id), or -1. Where two objects reach the threshold (only possible
        at exactly 0.5), the one with the higher IoU, then the smaller id, is taken.

    Examples
    --------
    >>> from napari_mobilesamv2.decode.masks import MaskCrop
    >>> labels = np.zeros((4, 8), np.int32)
    >>> labels[:, :4], labels[:, 4:] = 3, 9
    >>> match_masks([MaskCrop(0, 4, np.ones((4, 3), bool)), MaskCrop(0, 2, np.ones((4, 4), bool))], labels)
    array([ 1, -1])
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"a label image must be a 2D integer array, not {labels.dtype} {labels.shape}")
    if not 0 < iou_threshold <= 1:
        raise InputError(f"the matching IoU threshold must be in (0, 1], not {iou_threshold}")
    ids, compact = np.unique(labels, return_inverse=True)
    compact = compact.reshape(labels.shape).astype(np.int64) + (0 if ids[0] == 0 else 1)  # 0 stays background
    n_objects = len(ids) - (1 if ids[0] == 0 else 0)
    true_area = np.bincount(compact.ravel(), minlength=n_objects + 1)
    partner = np.full(len(crops), -1, dtype=np.int64)
    for index, crop in enumerate(crops):
        if crop.area == 0 or n_objects == 0:
            continue
        window = compact[crop.top:crop.top + crop.shape[0], crop.left:crop.left + crop.shape[1]]
        inside = crop.mask[:window.shape[0], :window.shape[1]]
        shared = np.bincount(window[inside], minlength=n_objects + 1).astype(np.float64)
        iou = shared / (crop.area + true_area - shared)
        iou[0] = 0.0
        best = int(np.argmax(iou))  # the first (smallest id) of equal IoUs
        if iou[best] >= iou_threshold:
            partner[index] = best - 1
    return partner


def tune_mask_filters(
    pipeline: Any,
    images: Iterable,
    *,
    conf: float = 0.4,
    iou: float = 0.9,
    imgsz: int = 1024,
    detector: Any = None,
    device: Any = None,
    predicted_ious: Sequence[float | None] = PREDICTED_IOU_GRID,
    stabilities: Sequence[float | None] = STABILITY_GRID,
    areas: Sequence[int | None] = AREA_GRID,
    before_image: Callable[[int], None] | None = None,
) -> MaskFilterChoice:
    """The mask filters (``min_predicted_iou``, ``min_stability``, ``min_area``) with the best instance F1.

    Segment everything runs once per image with the detector thresholds `conf` and `iou` and no
    filter; its masks are matched to the true objects (mask IoU >= 0.5, one-to-one) and every
    combination of the grids is scored from those pairs. Ties go to the loosest filters: the
    combination with the fewest filters on, then the lowest ``min_predicted_iou`` (off is the
    lowest), then the lowest ``min_stability``, then the lowest ``min_area``. So no filter is
    switched on unless it raises F1.

    Parameters
    ----------
    pipeline : MobileSAMv2 or alike
        Its ``segment_everything(image, boxes_xyxy=..., **settings)`` is called (anything with that
        method and a result with ``crops``, ``predicted_iou`` and ``stability`` works).
    images : iterable
        ``(rgb_uint8, labels)`` pairs, or objects with ``read_rgb()`` and ``read_labels()``
        (:class:`~napari_mobilesamv2.training.dataset.AnnotatedImage` with a label image).
    conf, iou, imgsz : float, float, int
        Detector settings to segment with.
    detector : torch.nn.Module, optional
        An object-aware detector to find the boxes with (e.g. one just fine-tuned); its boxes are
        handed to ``segment_everything``. Default: the pipeline's own detector.
    device : str or torch.device, optional
        Where `detector` runs (default: the pipeline's ``device``).
    predicted_ious, stabilities, areas : sequence
        The grids (``None``: filter off; it is always tried).
    before_image : callable, optional
        Called with the 0-based image index before each image is segmented (for progress; an
        exception raised from it stops the tuning).

    Returns
    -------
    MaskFilterChoice

    Raises
    ------
    InputError
        No annotated image, no true object, or an image and its label image differ in size.
    """
    grids = tuple(_grid(values, name) for values, name in zip((predicted_ious, stabilities, areas), FILTER_NAMES))
    columns, partners, n_true, seconds, n_images = _segment_and_match(
        pipeline, images, conf, iou, imgsz, detector, device, before_image)
    f1, matched, predicted = _score_grid(columns, partners, n_true, grids)
    index = _loosest_best(f1, grids)
    chosen = tuple(grid[i] for grid, i in zip(grids, index))
    flat = tuple((a, b, c, float(f1[i, j, k])) for i, a in enumerate(grids[0]) for j, b in enumerate(grids[1])
                 for k, c in enumerate(grids[2]))
    return MaskFilterChoice(
        min_predicted_iou=None if chosen[0] is None else float(chosen[0]),
        min_stability=None if chosen[1] is None else float(chosen[1]),
        min_area=None if chosen[2] is None else int(chosen[2]),
        before=MaskScores.from_counts(matched[0, 0, 0], predicted[0, 0, 0], n_true),
        after=MaskScores.from_counts(matched[index], predicted[index], n_true),
        seconds_per_image=seconds / n_images, n_images=n_images, conf=float(conf), iou=float(iou), grid=flat,
    )


def _grid(values: Sequence, name: str) -> tuple:
    """Off first, then the values ascending, without repeats."""
    numbers = sorted({float(v) if name != "min_area" else int(v) for v in values if v is not None})
    return (None, *numbers)


def _pairs(images: Iterable):
    for item in images:
        if hasattr(item, "read_rgb"):
            yield item.read_rgb(), item.read_labels()
        else:
            rgb, labels = item
            yield np.asarray(rgb), np.asarray(labels)


def _segment_and_match(pipeline, images, conf, iou, imgsz, detector, device, before_image):
    """(predicted IoU, stability, area) columns and partners of all masks, true count, seconds, image count.

    Partners are numbered over all images, so one index is one true object.
    """
    quality, partners = [], []
    n_true = n_images = 0
    seconds = 0.0
    for rgb, labels in _pairs(images):
        if before_image is not None:
            before_image(n_images)
        if rgb.shape[:2] != labels.shape:
            raise InputError(f"an image of {rgb.shape[0]}x{rgb.shape[1]} pixels has a label image of "
                             f"{labels.shape[0]}x{labels.shape[1]}; each label image must match its image")
        start = time.perf_counter()
        found = _segment(pipeline, rgb, conf, iou, imgsz, detector, device)
        seconds += time.perf_counter() - start
        partner = match_masks(found.crops, labels)
        partners.append(np.where(partner >= 0, partner + n_true, -1))
        quality.append(np.stack([np.asarray(found.predicted_iou, np.float64).reshape(-1),
                                 np.asarray(found.stability, np.float64).reshape(-1),
                                 np.array([c.area for c in found.crops], np.float64)], axis=1).reshape(-1, 3))
        n_true += len(np.unique(labels[labels != 0]))
        n_images += 1
    if not n_images:
        raise InputError("no annotated images to tune the mask filters on")
    if not n_true:
        raise InputError("the label images hold no objects; the mask filters need annotated objects to be tuned")
    return np.concatenate(quality), np.concatenate(partners), n_true, seconds, n_images


def _segment(pipeline, rgb: np.ndarray, conf: float, iou: float, imgsz: int, detector, device):
    if detector is None:
        return pipeline.segment_everything(rgb, conf=conf, iou=iou, imgsz=imgsz)
    boxes, _ = detect_objects(detector, rgb, imgsz=imgsz, conf=conf, iou=iou,
                              device=device or getattr(pipeline, "device", "cpu"))
    return pipeline.segment_everything(rgb, boxes_xyxy=boxes)


def _score_grid(columns: np.ndarray, partners: np.ndarray, n_true: int, grids: tuple) -> tuple[np.ndarray, ...]:
    """(F1, matched, predicted) of every combination, each (len(grid0), len(grid1), len(grid2))."""
    passes = [np.stack([np.ones(len(columns), bool) if v is None else columns[:, axis] >= v for v in grid])
              for axis, grid in enumerate(grids)]  # (G, N) per filter
    order = np.argsort(partners, kind="stable")
    order = order[partners[order] >= 0]  # masks with a partner, grouped by it
    starts = np.flatnonzero(np.r_[True, np.diff(partners[order]) != 0]) if len(order) else np.zeros(0, np.int64)
    shape = tuple(len(g) for g in grids)
    matched, predicted = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    for i, first in enumerate(passes[0]):  # one slice at a time keeps memory at (G1, G2, N)
        keep = first[None, None, :] & passes[1][:, None, :] & passes[2][None, :, :]
        predicted[i] = keep.sum(-1)
        if len(order):
            matched[i] = np.logical_or.reduceat(keep[..., order], starts, axis=-1).sum(-1)
    total = predicted + n_true
    f1 = np.where(total > 0, 2 * matched / np.maximum(total, 1), 0.0)
    return f1, matched, predicted


def _loosest_best(f1: np.ndarray, grids: tuple) -> tuple[int, int, int]:
    """Index of the best F1; ties: fewest filters on, then the lowest values in the order of FILTER_NAMES."""
    best = np.flatnonzero(f1.ravel() >= f1.max() - 1e-12)
    candidates = [np.unravel_index(i, f1.shape) for i in best]
    return tuple(int(i) for i in min(candidates, key=lambda idx: (sum(int(i) > 0 for i in idx), *map(int, idx))))
