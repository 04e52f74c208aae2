"""Instance matching of a predicted label image against a ground-truth label image.

The conventions are those of stardist's ``matching`` (criterion IoU):

* Two objects can be paired when their intersection over union is at least the
  threshold (``iou >= threshold``; thresholds must lie in (0, 1]).
* Pairing is one-to-one: among the candidate pairs an optimal assignment
  (Hungarian algorithm, :func:`scipy.optimize.linear_sum_assignment`) first
  maximises the number of pairs and then, among assignments with that many pairs,
  the summed IoU. Above IoU 0.5 an object can only have one candidate partner, so
  the assignment matters only for thresholds of 0.5 and below. The counts are
  those of stardist; below 0.5 the summed matched IoU can be higher than
  stardist's, whose tie-breaker also weighs the IoU of pairs below the threshold.
* Paired objects are true positives (tp), unpaired predictions false positives (fp),
  unpaired ground-truth objects false negatives (fn).
* ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``,
  ``f1 = 2 tp / (2 tp + fp + fn)`` and ``average_precision = tp / (tp + fp + fn)``:
  the "average precision" of cellpose's ``metrics.average_precision`` and of the
  2018 Data Science Bowl, which stardist calls accuracy.
* ``mean_matched_iou`` is the mean IoU of the true positives and
  ``panoptic_quality = sum of matched IoU / (tp + fp / 2 + fn / 2)``
  (Kirillov et al., Panoptic Segmentation, CVPR 2019).
* Every ratio is 0 when there is no true positive, also when neither image holds
  an object (stardist's convention); ``n_true`` and ``n_pred`` tell these cases apart.

Over several images, tp, fp, fn and the matched IoU are summed first and the ratios
are taken of the sums, so every object weighs the same whatever image it is in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import scipy.sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from ..errors import InputError

DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))
"""IoU thresholds 0.5, 0.55, ..., 0.95."""

IOU_THRESHOLDS_HELP = (
    "IoU thresholds in (0, 1], separated by commas: a predicted object matches a ground-truth object when their "
    "intersection over union is at least the threshold (default: 0.5, 0.55, ..., 0.95)"
)
"""One line of help on the IoU thresholds, for the front ends."""

RATIOS = ("precision", "recall", "f1", "average_precision", "mean_matched_iou", "panoptic_quality")
"""Names of the per-threshold ratios of :class:`MatchStats`."""


class PairwiseIoU(NamedTuple):
    """IoU of every overlapping (ground truth, prediction) pair, stored sparsely.

    Attributes
    ----------
    true_ids, pred_ids : numpy.ndarray
        (n_true,) and (n_pred,) ids of the ground-truth and predicted objects, ascending.
    rows, cols : numpy.ndarray
        (P,) int64 indices into `true_ids` and `pred_ids` of the overlapping pairs.
    intersection : numpy.ndarray
        (P,) int64 number of pixels the pair shares.
    iou : numpy.ndarray
        (P,) float64 intersection over union of the pair, in (0, 1].
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    intersection: np.ndarray
    iou: np.ndarray

    def to_sparse(self) -> scipy.sparse.csr_array:
        """The (n_true, n_pred) IoU matrix as a SciPy sparse array (absent pairs: IoU 0)."""
        shape = (len(self.true_ids), len(self.pred_ids))
        return scipy.sparse.csr_array((self.iou, (self.rows, self.cols)), shape=shape)


@dataclass(frozen=True)
class MatchStats:
    """Matching counts at one IoU threshold, with the ratios derived from them.

    Attributes
    ----------
    threshold : float
        Least IoU of a pair.
    n_true, n_pred : int
        Number of ground-truth and predicted objects.
    tp : int
        Number of pairs (true positives).
    sum_matched_iou : float
        Summed IoU of the pairs.
    true_ids, pred_ids, ious : numpy.ndarray
        (tp,) ground-truth id, predicted id and IoU of each pair, by ground-truth id.
        Empty for results aggregated over several images.
    """

    threshold: float
    n_true: int
    n_pred: int
    tp: int
    sum_matched_iou: float
    true_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), compare=False, repr=False)
    pred_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), compare=False, repr=False)
    ious: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64), compare=False, repr=False)

    @property
    def fp(self) -> int:
        """Predicted objects without a partner."""
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        """Ground-truth objects without a partner."""
        return self.n_true - self.tp

    @property
    def precision(self) -> float:
        """tp / (tp + fp); 0 without true positives."""
        return _ratio(self.tp, self.tp + self.fp, self.tp)

    @property
    def recall(self) -> float:
        """tp / (tp + fn); 0 without true positives."""
        return _ratio(self.tp, self.tp + self.fn, self.tp)

    @property
    def f1(self) -> float:
        """2 tp / (2 tp + fp + fn); 0 without true positives."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, self.tp)

    @property
    def average_precision(self) -> float:
        """tp / (tp + fp + fn), as cellpose's ``average_precision`` (stardist's accuracy)."""
        return _ratio(self.tp, self.tp + self.fp + self.fn, self.tp)

    @property
    def mean_matched_iou(self) -> float:
        """Mean IoU of the true positives; 0 without true positives."""
        return _ratio(self.sum_matched_iou, self.tp, self.tp)

    @property
    def panoptic_quality(self) -> float:
        """Summed matched IoU / (tp + fp / 2 + fn / 2); 0 without true positives."""
        return _ratio(self.sum_matched_iou, self.tp + self.fp / 2 + self.fn / 2, self.tp)

    def to_dict(self, pairs: bool = False) -> dict:
        """Counts and ratios as plain Python numbers (for JSON).

        Parameters
        ----------
        pairs : bool
            Also list the pairs as ``[[true_id, pred_id, iou], ...]`` under ``"pairs"``.
        """
        row = {
            "threshold": float(self.threshold), "n_true": int(self.n_true), "n_pred": int(self.n_pred),
            "tp": int(self.tp), "fp": int(self.fp), "fn": int(self.fn),
            **{name: float(getattr(self, name)) for name in RATIOS},
            "sum_matched_iou": float(self.sum_matched_iou),
        }
        if pairs:
            row["pairs"] = [[int(t), int(p), float(s)] for t, p, s in zip(self.true_ids, self.pred_ids, self.ious)]
        return row


@dataclass(frozen=True)
class MatchingResult:
    """Matching of one image pair, or of several pairs aggregated, at several thresholds.

    Attributes
    ----------
    stats : tuple of MatchStats
        One entry per threshold, in the order the thresholds were given.
    n_images : int
        Number of image pairs the counts cover.
    """

    stats: tuple[MatchStats, ...]
    n_images: int = 1

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The IoU thresholds, in the order of `stats`."""
        return tuple(s.threshold for s in self.stats)

    def at(self, threshold: float) -> MatchStats:
        """The stats at `threshold` (compared to 1e-9).

        Raises
        ------
        InputError
            `threshold` is not one of the evaluated thresholds.
        """
        for s in self.stats:
            if abs(s.threshold - threshold) < 1e-9:
                return s
        raise InputError(f"IoU threshold {threshold} was not evaluated; evaluated: {_listed(self.thresholds)}")

    def mean(self, name: str) -> float:
        """Mean over the thresholds of the ratio `name` (one of :data:`RATIOS`)."""
        if name not in RATIOS:
            raise InputError(f"unknown ratio {name!r}; choose one of {', '.join(RATIOS)}")
        return float(np.mean([getattr(s, name) for s in self.stats]))

    def to_dict(self, pairs: bool = False) -> dict:
        """Per-threshold rows and means over the thresholds, as plain Python values (for JSON)."""
        return {
            "n_images": int(self.n_images),
            "thresholds": [float(t) for t in self.thresholds],
            "per_threshold": [s.to_dict(pairs=pairs) for s in self.stats],
            "mean_over_thresholds": {name: self.mean(name) for name in RATIOS},
        }

    def table(self) -> str:
        """A plain-text table, one line per threshold."""
        names = ("prec", "recall", "f1", "AP", "mIoU", "PQ")  # short names of RATIOS
        lines = [f"{'IoU':>5} {'tp':>7} {'fp':>7} {'fn':>7} " + " ".join(f"{n:>6}" for n in names)]
        for s in self.stats:
            ratios = " ".join(f"{getattr(s, name):6.3f}" for name in RATIOS)
            lines.append(f"{s.threshold:5.2f} {s.tp:7d} {s.fp:7d} {s.fn:7d} {ratios}")
        return "\n".join(lines)


def pairwise_iou(gt: np.ndarray, pred: np.ndarray) -> PairwiseIoU:
    """IoU of every pair of overlapping objects of two label images.

    Counts pixels per (ground-truth id, predicted id) pair of the foreground with a
    sparse contingency table: memory grows with the number of pixels, not with the
    product of the object counts.

    Parameters
    ----------
    gt, pred : numpy.ndarray
        Label images of the same shape (2D or nD), any integer dtype; 0 is background.
        Ids need not be contiguous.

    Returns
    -------
    PairwiseIoU

    Raises
    ------
    InputError
        The shapes differ, or an image is not a label image of non-negative integers.
    """
    gt = _check_labels(gt, "ground truth")
    pred = _check_labels(pred, "prediction")
    if gt.shape != pred.shape:
        raise InputError(
            f"the ground truth has shape {gt.shape} but the prediction has shape {pred.shape}; "
            "compare label images of the same image"
        )
    g, p = gt.reshape(-1), pred.reshape(-1)
    foreground = (g != 0) | (p != 0)
    true_ids, t = _ids_and_index(g[foreground])
    pred_ids, q = _ids_and_index(p[foreground])
    true_area = np.bincount(t, minlength=len(true_ids) + 1)
    pred_area = np.bincount(q, minlength=len(pred_ids) + 1)
    both = (t > 0) & (q > 0)
    width = len(pred_ids) + 1
    codes, intersection = np.unique(t[both] * width + q[both], return_counts=True)
    rows, cols = codes // width, codes % width
    intersection = intersection.astype(np.int64)
    iou = intersection / (true_area[rows] + pred_area[cols] - intersection)
    return PairwiseIoU(true_ids, pred_ids, rows - 1, cols - 1, intersection, iou.astype(np.float64))


def match_labels(
    gt: np.ndarray, pred: np.ndarray, thresholds: float | Sequence[float] = DEFAULT_IOU_THRESHOLDS
) -> MatchingResult:
    """Match the objects of a predicted label image to those of a ground-truth label image.

    See the module documentation for the pairing rule and the definitions of the ratios.

    Parameters
    ----------
    gt, pred : numpy.ndarray
        Label images of the same shape (2D or nD), any integer dtype; 0 is background.
    thresholds : float or sequence of float
        IoU thresholds in (0, 1]; default 0.5, 0.55, ..., 0.95.

    Returns
    -------
    MatchingResult
        One :class:`MatchStats` per threshold, with the matched id pairs.

    Raises
    ------
    InputError
        The shapes differ, an image holds something other than non-negative integers,
        or a threshold is outside (0, 1].

    Examples
    --------
    >>> gt = np.zeros((4, 8), np.uint8); gt[:, :4] = 1; gt[:, 4:] = 2
    >>> pred = np.zeros((4, 8), np.uint16); pred[:, :3] = 7
    >>> s = match_labels(gt, pred, 0.5).at(0.5)
    >>> s.tp, s.fp, s.fn, s.mean_matched_iou
    (1, 0, 1, 0.75)
    """
    thresholds = check_thresholds(thresholds)
    table = pairwise_iou(gt, pred)
    n_true, n_pred = len(table.true_ids), len(table.pred_ids)
    stats = []
    for threshold in thresholds:
        rows, cols = _assign(table, threshold)
        order = np.argsort(rows, kind="stable")
        rows, cols = rows[order], cols[order]
        ious = table.iou[_pair_index(table, rows, cols)]
        stats.append(MatchStats(
            threshold, n_true, n_pred, int(len(rows)), float(ious.sum()),
            table.true_ids[rows], table.pred_ids[cols], ious,
        ))
    return MatchingResult(tuple(stats))


def aggregate_matching(results: Iterable[MatchingResult]) -> MatchingResult:
    """Combine the matching of several image pairs: counts and matched IoU are summed.

    The ratios of the result are those of the summed counts (every object weighs the
    same), and ``mean_matched_iou`` is the mean over all matches of all images.

    Raises
    ------
    InputError
        No results, or results evaluated at different thresholds.
    """
    results = list(results)
    if not results:
        raise InputError("nothing to aggregate: no image pairs were evaluated")
    thresholds = results[0].thresholds
    for result in results[1:]:
        same = len(result.thresholds) == len(thresholds) and np.allclose(result.thresholds, thresholds, 0, 1e-9)
        if not same:
            raise InputError(
                f"cannot aggregate results at thresholds {_listed(thresholds)} and {_listed(result.thresholds)}; "
                "evaluate every image pair at the same thresholds"
            )
    stats = tuple(
        MatchStats(
            threshold,
            sum(r.stats[k].n_true for r in results),
            sum(r.stats[k].n_pred for r in results),
            sum(r.stats[k].tp for r in results),
            float(sum(r.stats[k].sum_matched_iou for r in results)),
        )
        for k, threshold in enumerate(thresholds)
    )
    return MatchingResult(stats, sum(r.n_images for r in results))


def check_thresholds(thresholds: float | Sequence[float]) -> tuple[float, ...]:
    """IoU thresholds as a tuple of floats in (0, 1], without repeats.

    Raises
    ------
    InputError
        No threshold, or one outside (0, 1].
    """
    values = [float(t) for t in np.atleast_1d(np.asarray(thresholds, dtype=np.float64))]
    if not values:
        raise InputError("give at least one IoU threshold, e.g. 0.5")
    bad = [t for t in values if not 0 < t <= 1]
    if bad:
        raise InputError(f"IoU thresholds must lie in (0, 1]; got {_listed(bad)}")
    return tuple(dict.fromkeys(values))


def _assign(table: PairwiseIoU, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the one-to-one pairs at `threshold`."""
    candidate = table.iou >= threshold
    rows, cols, iou = table.rows[candidate], table.cols[candidate], table.iou[candidate]
    # a candidate pair whose two objects have no other candidate is an isolated pair: matched as is
    row_degree = np.bincount(rows, minlength=len(table.true_ids))
    col_degree = np.bincount(cols, minlength=len(table.pred_ids))
    alone = (row_degree[rows] == 1) & (col_degree[cols] == 1)
    found_rows, found_cols = [rows[alone]], [cols[alone]]
    for r, c, s in _components(rows[~alone], cols[~alone], iou[~alone]):
        a, b = _hungarian(r, c, s)
        found_rows.append(a)
        found_cols.append(b)
    return np.concatenate(found_rows), np.concatenate(found_cols)


def _components(rows: np.ndarray, cols: np.ndarray, iou: np.ndarray):
    """The candidate pairs split into connected groups (objects linked through shared partners)."""
    if rows.size == 0:
        return
    row_nodes, r = np.unique(rows, return_inverse=True)
    col_nodes, c = np.unique(cols, return_inverse=True)
    n = len(row_nodes) + len(col_nodes)
    graph = scipy.sparse.coo_array((np.ones(len(r)), (r, len(row_nodes) + c)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    edge_component = component[r]
    order = np.argsort(edge_component, kind="stable")
    starts = np.flatnonzero(np.diff(edge_component[order], prepend=-1))
    for group in np.split(order, starts[1:]):
        yield rows[group], cols[group], iou[group]


def _hungarian(rows: np.ndarray, cols: np.ndarray, iou: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Most pairs, then largest summed IoU, among the candidate pairs of one group."""
    row_nodes, r = np.unique(rows, return_inverse=True)
    col_nodes, c = np.unique(cols, return_inverse=True)
    # each pair gains 1 plus a tie-breaker; the tie-breakers of all pairs sum to at most 1/2 < 1
    gain = np.zeros((len(row_nodes), len(col_nodes)), dtype=np.float64)
    gain[r, c] = 1.0 + iou / (2 * min(gain.shape))
    a, b = linear_sum_assignment(gain, maximize=True)
    paired = gain[a, b] > 0
    return row_nodes[a[paired]], col_nodes[b[paired]]


def _pair_index(table: PairwiseIoU, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Positions of the (row, col) pairs in the table (whose pairs are sorted by row, then col)."""
    width = len(table.pred_ids) + 1
    return np.searchsorted(table.rows * width + table.cols, rows * width + cols)


def _ids_and_index(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object ids (without 0) and each value's index into them, counted from 1 (0: background)."""
    ids, index = np.unique(values, return_inverse=True)
    index = index.reshape(-1).astype(np.int64)
    if ids.size and ids[0] == 0:
        return ids[1:], index
    return ids, index + 1


def _check_labels(labels, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim < 1:
        raise InputError(f"the {name} is a single number, not a label image")
    if not np.issubdtype(labels.dtype, np.integer):
        hint = " (a mask: number its objects with skimage.measure.label)" if labels.dtype == bool else ""
        raise InputError(
            f"the {name} must be a label image of integers, not {labels.dtype}{hint}; "
            "0 is background, every other value one object"
        )
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise InputError(f"the {name} holds negative values (least {labels.min()}); object ids must be >= 0")
    return labels


def _ratio(numerator: float, denominator: float, tp: int) -> float:
    return float(numerator / denominator) if tp > 0 else 0.0


def _listed(values: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)
