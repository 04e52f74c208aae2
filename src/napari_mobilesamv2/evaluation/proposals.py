"""Recall of object proposals against ground-truth label images.

Mask AR@K is the metric of the MobileSAMv2 and SAM papers for "segment everything"
as zero-shot object proposal: pycocotools' ``COCOeval`` with ``iouType='segm'``,
class-agnostic (``useCats=0``), ``maxDets`` = the K values (the K proposals of
highest score per image count), recall averaged over the mask IoU thresholds
0.5, 0.55, ..., 0.95. Small, medium and large objects are those of COCO: an area
below 32², from 32² to 96², and above 96² pixels.

Box recall is the fraction of ground-truth objects whose bounding box has IoU of at
least 0.5 with the ``bbox`` of some proposal. Several objects may be covered by the
same proposal box (no one-to-one pairing), which suits checking that a box detector
misses no object.

Proposals are COCO results as ``segment-everything --proposals`` writes them: a list of
dicts with ``image_id``, ``score``, ``segmentation`` (RLE ``{'size': [H, W], 'counts'}``)
and ``bbox`` ([x, y, w, h]).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

from ..errors import InputError
from .matching import _check_labels, _ids_and_index

DEFAULT_KS: tuple[int, ...] = (10, 100, 1000)
"""Numbers of proposals per image of the mask AR@K values."""

_CATEGORY = 1


@dataclass(frozen=True)
class _Plane:
    """One 2D image: its ground-truth objects (COCO annotations without ids) and its proposals."""

    height: int
    width: int
    objects: list[dict]
    proposals: list[dict]


@dataclass(frozen=True)
class ProposalRecall:
    """Recall of proposals against ground-truth objects.

    Attributes
    ----------
    ks : tuple of int
        Numbers of proposals per image (K), ascending.
    average_recall : tuple of float
        Mask AR@K for each K, objects of every size.
    average_recall_by_area : dict of str to tuple of float
        Mask AR@K of the ``"small"``, ``"medium"`` and ``"large"`` objects (empty when
        not computed).
    box_recall : float
        Fraction of the objects covered by a proposal box (IoU >= `box_iou_threshold`),
        all proposals counted.
    box_iou_threshold : float
        Least box IoU for box recall.
    n_images, n_objects, n_proposals : int
        Number of 2D images (stack planes count one each), ground-truth objects and proposals.

    A recall is NaN where the ground truth holds no object (of that size).
    """

    ks: tuple[int, ...]
    average_recall: tuple[float, ...]
    average_recall_by_area: dict[str, tuple[float, ...]] = field(compare=False)
    box_recall: float
    box_iou_threshold: float
    n_images: int
    n_objects: int
    n_proposals: int

    def at(self, k: int) -> float:
        """Mask AR@`k`.

        Raises
        ------
        InputError
            `k` was not evaluated.
        """
        if k not in self.ks:
            raise InputError(f"AR@{k} was not evaluated; evaluated K: {', '.join(map(str, self.ks))}")
        return self.average_recall[self.ks.index(k)]

    def to_dict(self) -> dict:
        """Plain Python values for JSON (NaN as None)."""
        return {
            "ks": list(self.ks),
            "mask_average_recall": _by_k(self.ks, self.average_recall),
            "mask_average_recall_by_area": {
                area: _by_k(self.ks, values) for area, values in self.average_recall_by_area.items()
            },
            "box_recall": _number(self.box_recall),
            "box_iou_threshold": float(self.box_iou_threshold),
            "n_images": int(self.n_images),
            "n_objects": int(self.n_objects),
            "n_proposals": int(self.n_proposals),
        }

    def table(self) -> str:
        """A plain-text table: one line per K, then the box recall."""
        lines = [" ".join([f"{'K':>6}", f"{'AR':>6}", *(f"{area:>6}" for area in self.average_recall_by_area)])]
        for k, value in enumerate(self.average_recall):
            by_area = (f"{values[k]:6.3f}" for values in self.average_recall_by_area.values())
            lines.append(" ".join([f"{self.ks[k]:6d}", f"{value:6.3f}", *by_area]))
        lines.append(f"box recall at IoU {self.box_iou_threshold:g}: {self.box_recall:.3f} "
                     f"({self.n_objects} objects, {self.n_proposals} proposals, {self.n_images} images)")
        return "\n".join(lines)


def proposal_recall(
    gt_labels: np.ndarray | Sequence[np.ndarray],
    proposals: Sequence[dict] | Sequence[Sequence[dict]],
    ks: Sequence[int] = DEFAULT_KS,
    box_iou_threshold: float = 0.5,
    by_area: bool = True,
) -> ProposalRecall:
    """Mask AR@K and box recall of proposals against ground-truth label images.

    Parameters
    ----------
    gt_labels : numpy.ndarray or sequence of numpy.ndarray
        A label image, or several. A 2D label image takes the proposals of one
        ``image_id`` (any value). An nD label image is a stack of 2D planes whose
        ``image_id`` is the flat (C-order) plane index, as ``segment-everything --stack``
        writes them; objects are counted plane by plane.
    proposals : sequence of dict, or sequence of sequences of dict
        COCO results (see the module documentation); with several label images, one
        list per label image.
    ks : sequence of int
        Numbers of proposals per image for mask AR@K.
    box_iou_threshold : float
        Least box IoU for box recall.
    by_area : bool
        Also the AR@K of small, medium and large objects; without them pycocotools
        matches about four times faster.

    Returns
    -------
    ProposalRecall

    Raises
    ------
    InputError
        Malformed proposals, proposals for an image the ground truth lacks or of
        another image size, unequal numbers of label images and proposal lists, or
        invalid K values or threshold.
    """
    planes = _all_planes(gt_labels, proposals)
    return _recalls(planes, [range(len(planes))], ks, box_iou_threshold, by_area)[0]


def box_recall(
    gt_labels: np.ndarray | Sequence[np.ndarray],
    proposals: Sequence[dict] | Sequence[Sequence[dict]],
    iou_threshold: float = 0.5,
    max_proposals: int | None = None,
) -> float:
    """Fraction of ground-truth objects whose bounding box a proposal ``bbox`` covers.

    An object is covered when some proposal box of its image has box IoU of at least
    `iou_threshold` with the object's bounding box; one proposal may cover several
    objects. Inputs as for :func:`proposal_recall`.

    Parameters
    ----------
    max_proposals : int, optional
        Count only the proposals of highest score, this many per image.

    Returns
    -------
    float
        NaN when the ground truth holds no object.
    """
    return _box_recall(_all_planes(gt_labels, proposals), _check_threshold(iou_threshold), max_proposals)


def labels_to_coco(labels: np.ndarray) -> dict:
    """Ground-truth COCO dataset of a label image: one annotation per object.

    Parameters
    ----------
    labels : numpy.ndarray
        A 2D label image (``image_id`` 0) or a stack of 2D planes (``image_id`` = flat
        C-order plane index), any integer dtype, 0 background.

    Returns
    -------
    dict
        ``images`` (``id``, ``height``, ``width``), ``annotations`` (``id`` from 1,
        ``image_id``, ``category_id`` 1, ``segmentation`` as RLE with ``counts`` a str,
        ``area``, ``bbox`` [x, y, w, h], ``iscrowd`` 0, ``label_id``: the object's value
        in the label image) and ``categories``; JSON-serialisable.
    """
    flat = _check_planes(labels)
    return _coco_dataset([_Plane(*plane.shape, _plane_objects(plane), []) for plane in flat], first_image_id=0)


def read_proposals(path: str | os.PathLike) -> list[dict]:
    """Read and check a COCO results JSON file of proposals.

    Raises
    ------
    InputError
        The file is missing, not JSON, or not a list of proposals.
    """
    try:
        with open(path) as f:
            records = json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path} does not exist; check the path and the file name") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} as JSON ({exc}); give a proposals file written by "
                         "segment-everything --proposals") from None
    _check_proposals(records, str(path))
    return records


def check_ks(ks: int | Sequence[int]) -> tuple[int, ...]:
    """K values as ascending distinct positive ints.

    Raises
    ------
    InputError
        No K, or one that is not a positive whole number.
    """
    values = list(np.atleast_1d(ks))
    if not values or any(not float(k).is_integer() or k < 1 for k in values):
        raise InputError(f"K values must be positive whole numbers such as 10,100,1000; got {', '.join(map(str, values)) or 'none'}")
    return tuple(sorted({int(k) for k in values}))


def _recalls(
    planes: list[_Plane], groups: Sequence[Sequence[int]], ks: Sequence[int], box_iou_threshold: float,
    by_area: bool = True,
) -> list[ProposalRecall]:
    """The recall of each group of planes (indices into `planes`), from one COCOeval run over all planes."""
    ks = check_ks(ks)
    box_iou_threshold = _check_threshold(box_iou_threshold)
    evaluation = _coco_evaluation(planes, ks, by_area)
    results = []
    for group in groups:
        mine = [planes[i] for i in group]
        recall = _average_recall(evaluation, group, ks)
        results.append(ProposalRecall(
            ks=ks,
            average_recall=recall.pop("all"),
            average_recall_by_area=recall,
            box_recall=_box_recall(mine, box_iou_threshold),
            box_iou_threshold=box_iou_threshold,
            n_images=len(mine),
            n_objects=sum(len(p.objects) for p in mine),
            n_proposals=sum(len(p.proposals) for p in mine),
        ))
    return results


def _coco_evaluation(planes: list[_Plane], ks: tuple[int, ...], by_area: bool) -> COCOeval:
    """pycocotools' per-image mask matching (``COCOeval.evaluate``), class-agnostic, image ids 1..N."""
    dataset = _coco_dataset(planes, first_image_id=1)
    results = [
        # without "bbox": COCO would take the box area as the proposal's area for the size ranges
        {"image_id": image_id, "category_id": _CATEGORY, "score": float(r["score"]), "segmentation": r["segmentation"]}
        for image_id, plane in enumerate(planes, start=1) for r in plane.proposals
    ]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports progress on stdout
        truth = COCO()
        truth.dataset = dataset
        truth.createIndex()
        if results:
            found = truth.loadRes(results)
        else:  # loadRes cannot take an empty list
            found = COCO()
            found.dataset = {**dataset, "annotations": []}
            found.createIndex()
        evaluation = COCOeval(truth, found, iouType="segm")
        evaluation.params.useCats = 0
        evaluation.params.maxDets = list(ks)
        if not by_area:
            evaluation.params.areaRng = evaluation.params.areaRng[:1]
            evaluation.params.areaRngLbl = evaluation.params.areaRngLbl[:1]
        evaluation.evaluate()
    return evaluation


def _average_recall(evaluation: COCOeval, planes: Sequence[int], ks: tuple[int, ...]) -> dict[str, tuple]:
    """Mask AR@K of some planes per area range, summed over their images as ``COCOeval.accumulate`` does.

    Recall at an IoU threshold is the number of matched ground-truth objects (matched
    by one of the K proposals of highest score of their image) over the number of
    objects; AR is its mean over the IoU thresholds; NaN without objects.
    """
    n_images = len(evaluation.params.imgIds)
    recall = {}
    for a, name in enumerate(evaluation.params.areaRngLbl):
        # evalImgs holds one entry per (area range, image), None where an image has neither objects nor proposals
        entries = [e for e in (evaluation.evalImgs[a * n_images + i] for i in planes) if e is not None]
        n_objects = sum(int(np.count_nonzero(e["gtIgnore"] == 0)) for e in entries)
        values = []
        for k in ks:
            found = sum(
                np.count_nonzero(np.logical_and(e["dtMatches"][:, :k], np.logical_not(e["dtIgnore"][:, :k])), axis=1)
                for e in entries
            )
            values.append(float(np.mean(found / n_objects)) if n_objects else math.nan)
        recall[name] = tuple(values)
    return recall


def _box_recall(planes: list[_Plane], threshold: float, max_proposals: int | None = None) -> float:
    covered = total = 0
    for plane in planes:
        total += len(plane.objects)
        records = plane.proposals
        if max_proposals is not None:
            records = sorted(records, key=lambda r: -float(r["score"]))[:max_proposals]
        if not plane.objects or not records:
            continue
        boxes = np.array([_proposal_box(r) for r in records], dtype=np.float64)
        truth = np.array([o["bbox"] for o in plane.objects], dtype=np.float64)
        iou = np.asarray(mask_utils.iou(boxes, truth, [0] * len(truth)))
        covered += int(np.count_nonzero(iou.max(axis=0) >= threshold))
    return covered / total if total else math.nan


def _proposal_box(record: dict) -> list[float]:
    if "bbox" in record:
        return [float(v) for v in record["bbox"]]
    return [float(v) for v in mask_utils.toBbox(_rle(record["segmentation"]))]


def _all_planes(gt_labels, proposals) -> list[_Plane]:
    """The planes of one label image and its proposals, or of several and their proposal lists."""
    if isinstance(gt_labels, np.ndarray):
        return _planes(gt_labels, proposals, "the proposals")
    if len(gt_labels) != len(proposals):
        raise InputError(
            f"{len(gt_labels)} label images but {len(proposals)} proposal lists; give one list per label image"
        )
    return [plane for i, (labels, records) in enumerate(zip(gt_labels, proposals))
            for plane in _planes(labels, records, f"the proposals of image {i}")]


def _check_planes(labels: np.ndarray) -> np.ndarray:
    """The 2D planes (P, H, W) of a label image or stack."""
    labels = _check_labels(labels, "ground truth")
    if labels.ndim < 2:
        raise InputError(f"the ground truth has shape {labels.shape}; give a 2D label image or a stack of them")
    return labels.reshape(-1, *labels.shape[-2:])


def _planes(labels: np.ndarray, records: Sequence[dict], source: str) -> list[_Plane]:
    """Split a label image (2D or stack) into planes and give each plane its proposals."""
    flat = _check_planes(labels)
    records = list(records)
    _check_proposals(records, source)
    image_ids = sorted({int(r["image_id"]) for r in records})
    if np.ndim(labels) == 2:
        if len(image_ids) > 1:
            raise InputError(
                f"{source} are for {len(image_ids)} images (image_id {_few(image_ids)}) but the ground truth is "
                "one 2D image; give one proposals file per image"
            )
        per_plane = [records]
    else:
        outside = [i for i in image_ids if not 0 <= i < len(flat)]
        if outside:
            raise InputError(
                f"{source} name image_id {_few(outside)}, but the ground-truth stack {np.shape(labels)} has planes "
                f"0..{len(flat) - 1}; give the proposals of this stack"
            )
        per_plane = [[] for _ in flat]
        for r in records:
            per_plane[int(r["image_id"])].append(r)
    planes = []
    for plane, mine in zip(flat, per_plane):
        sizes = {tuple(int(s) for s in r["segmentation"]["size"]) for r in mine} - {plane.shape}
        if sizes:
            raise InputError(
                f"{source} hold masks of size {_few(sorted(sizes))} (height, width) but the ground truth "
                f"is {plane.shape}; give the proposals of this image"
            )
        planes.append(_Plane(plane.shape[0], plane.shape[1], _plane_objects(plane), mine))
    return planes


def _plane_objects(plane: np.ndarray) -> list[dict]:
    """One COCO annotation (without ids) per object of a 2D label image."""
    ids, index = _ids_and_index(plane.reshape(-1))
    index = index.reshape(plane.shape)
    mask = np.zeros(plane.shape, dtype=np.uint8, order="F")
    objects = []
    for k, box in enumerate(ndimage.find_objects(index), start=1):
        mask[box] = index[box] == k
        rle = mask_utils.encode(mask)
        mask[box] = 0
        objects.append({
            "label_id": int(ids[k - 1]),
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": float(mask_utils.area(rle)),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "iscrowd": 0,
        })
    return objects


def _coco_dataset(planes: list[_Plane], first_image_id: int) -> dict:
    images, annotations = [], []
    for image_id, plane in enumerate(planes, start=first_image_id):
        images.append({"id": image_id, "height": plane.height, "width": plane.width})
        for obj in plane.objects:
            # ids start at 1: COCOeval reads id 0 as "not matched"
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": _CATEGORY, **obj})
    return {"images": images, "annotations": annotations, "categories": [{"id": _CATEGORY, "name": "object"}]}


def _check_proposals(records, source: str) -> None:
    if not isinstance(records, list):
        raise InputError(f"{source} must be a list of COCO results, not {type(records).__name__}")
    for k, r in enumerate(records):
        problem = _proposal_problem(r)
        if problem:
            raise InputError(
                f"proposal {k} of {source} {problem}; proposals need image_id, score and an RLE segmentation "
                "{'size': [H, W], 'counts': ...} as segment-everything --proposals writes them"
            )


def _proposal_problem(record) -> str | None:
    if not isinstance(record, dict):
        return f"is a {type(record).__name__}, not a dict"
    missing = [key for key in ("image_id", "score", "segmentation") if key not in record]
    if missing:
        return f"lacks {', '.join(missing)}"
    segmentation = record["segmentation"]
    if not isinstance(segmentation, dict) or "size" not in segmentation or "counts" not in segmentation:
        return "has no RLE segmentation (polygons are not supported)"
    if len(segmentation["size"]) != 2:
        return f"has an RLE size {segmentation['size']} that is not [height, width]"
    if "bbox" in record and len(record["bbox"]) != 4:
        return f"has a bbox {record['bbox']} that is not [x, y, w, h]"
    return None


def _rle(segmentation: dict) -> dict:
    counts = segmentation["counts"]
    return {"size": segmentation["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0 < threshold <= 1:
        raise InputError(f"the box IoU threshold must lie in (0, 1]; got {threshold:g}")
    return threshold


def _by_k(ks: Sequence[int], values: Sequence[float]) -> dict[str, float | None]:
    return {f"AR@{k}": _number(v) for k, v in zip(ks, values)}


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _few(values: Sequence, limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")
