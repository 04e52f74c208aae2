"""Evaluating files: pair ground-truth files with predictions, evaluate each pair and all of them."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..export import write_json
from ..io import check_output_path, read_image
from .matching import DEFAULT_IOU_THRESHOLDS, MatchingResult, aggregate_matching, check_thresholds, match_labels
from .proposals import DEFAULT_KS, ProposalRecall, _few, _planes, _recalls, check_ks, read_proposals

LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".bmp")
"""File types read as label images when a folder is given."""

PROPOSAL_SUFFIXES = (".json",)
"""File types read as proposals when a folder is given."""

OUTPUT_TAGS = ("_labels", "_proposals")
"""Name endings segment-everything adds to its outputs; ignored when pairing by name."""

Paths = str | os.PathLike | Sequence[str | os.PathLike]


@dataclass(frozen=True)
class FileEvaluation:
    """Results of each (ground truth, prediction) file pair and of all pairs together.

    Attributes
    ----------
    pairs : tuple of (Path, Path)
        The ground-truth file and the prediction file of each image.
    per_image : tuple of MatchingResult or ProposalRecall
        The result of each pair, in the order of `pairs`.
    total : MatchingResult or ProposalRecall
        The result over all pairs (objects of all images counted together).
    """

    pairs: tuple[tuple[Path, Path], ...]
    per_image: tuple[MatchingResult | ProposalRecall, ...]
    total: MatchingResult | ProposalRecall

    def to_dict(self) -> dict:
        """Plain Python values for JSON: ``{"images": [...], "total": {...}}``."""
        images = [{"ground_truth": str(gt), "prediction": str(pred), **result.to_dict()}
                  for (gt, pred), result in zip(self.pairs, self.per_image)]
        return {"images": images, "total": self.total.to_dict()}


def pair_files(gt: Paths, pred: Paths, suffixes: Sequence[str] = LABEL_SUFFIXES) -> list[tuple[Path, Path]]:
    """Pair ground-truth files with prediction files.

    Parameters
    ----------
    gt, pred : path or sequence of paths
        Files or folders. Where a folder is given (on either side), files pair by
        name: first identical names, then names equal after dropping the file type
        and an ending ``_labels`` or ``_proposals`` (so ``a.tif`` pairs with
        ``a_labels.tif`` and ``a_proposals.json``). Where both sides are files, they
        pair in the given order.
    suffixes : sequence of str
        File types taken from prediction folders (ground-truth folders: label images).

    Returns
    -------
    list of (Path, Path)
        In the order of the ground-truth files.

    Raises
    ------
    InputError
        A path does not exist, a folder holds no files of the types, the lists have
        different lengths, or files do not pair up (the message lists the first few).
    """
    gt_files, gt_folder = _expand(gt, LABEL_SUFFIXES, "ground-truth")
    pred_files, pred_folder = _expand(pred, suffixes, "prediction")
    if not (gt_folder or pred_folder):
        if len(gt_files) != len(pred_files):
            raise InputError(
                f"{len(gt_files)} ground-truth files but {len(pred_files)} prediction files; "
                "give as many of each, in the same order"
            )
        return list(zip(gt_files, pred_files))
    return _pair_by_name(gt_files, pred_files)


def evaluate_label_files(
    gt: Paths,
    pred: Paths,
    thresholds: float | Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    on_image: Callable[[int, int], None] | None = None,
) -> FileEvaluation:
    """Match predicted label images to ground-truth label images, file by file.

    Parameters
    ----------
    gt, pred : path or sequence of paths
        Label image files or folders, paired by :func:`pair_files`.
    thresholds : float or sequence of float
        IoU thresholds (see :func:`~napari_mobilesamv2.evaluation.match_labels`).
    on_image : callable, optional
        Called as ``on_image(index, total)`` after each pair.

    Returns
    -------
    FileEvaluation
        Per pair a :class:`MatchingResult` (with the matched id pairs) and their aggregate.

    Raises
    ------
    InputError
        Files that do not pair up or cannot be read, or label images of different shapes
        (the message names the files).
    """
    thresholds = check_thresholds(thresholds)
    pairs = pair_files(gt, pred)
    results = _each_pair(pairs, lambda g, p: match_labels(read_image(g), read_image(p), thresholds), on_image)
    return FileEvaluation(tuple(pairs), tuple(results), aggregate_matching(results))


def evaluate_proposal_files(
    gt: Paths,
    proposals: Paths,
    ks: Sequence[int] = DEFAULT_KS,
    box_iou_threshold: float = 0.5,
    by_area: bool = True,
    on_image: Callable[[int, int], None] | None = None,
) -> FileEvaluation:
    """Mask AR@K and box recall of proposal files against ground-truth label images.

    Parameters
    ----------
    gt : path or sequence of paths
        Label image files or folders (2D images or stacks, see
        :func:`~napari_mobilesamv2.evaluation.proposal_recall`).
    proposals : path or sequence of paths
        COCO results JSON files or folders, paired with `gt` by :func:`pair_files`.
    ks : sequence of int
        Numbers of proposals per image for mask AR@K.
    box_iou_threshold : float
        Least box IoU for box recall.
    by_area : bool
        Also the AR@K of small, medium and large objects (about four times slower).
    on_image : callable, optional
        Called as ``on_image(index, total)`` after each pair is read.

    Returns
    -------
    FileEvaluation
        Per pair a :class:`ProposalRecall`, and one over all objects of all pairs.
    """
    ks = check_ks(ks)
    pairs = pair_files(gt, proposals, PROPOSAL_SUFFIXES)
    per_pair = _each_pair(pairs, lambda g, p: _planes(read_image(g), read_proposals(p), str(p)), on_image)
    planes = [plane for mine in per_pair for plane in mine]
    ends = np.cumsum([len(mine) for mine in per_pair])
    groups = [range(end - len(mine), end) for mine, end in zip(per_pair, ends)]
    *results, total = _recalls(planes, [*groups, range(len(planes))], ks, box_iou_threshold, by_area)
    return FileEvaluation(tuple(pairs), tuple(results), total)


def write_evaluation(path: str | os.PathLike, evaluation: FileEvaluation | MatchingResult | ProposalRecall) -> None:
    """Write an evaluation as JSON (its ``to_dict()``), atomically.

    Raises
    ------
    OutputError
        The path is one of the evaluated files, a folder, or cannot be written.
    """
    inputs = tuple(p for pair in getattr(evaluation, "pairs", ()) for p in pair)
    write_json(check_output_path(path, inputs), evaluation.to_dict())


def _each_pair(pairs: list[tuple[Path, Path]], evaluate: Callable, on_image: Callable | None) -> list:
    """``evaluate(gt_path, pred_path)`` of each pair; errors name the two files."""
    results = []
    for k, (gt_path, pred_path) in enumerate(pairs):
        try:
            results.append(evaluate(gt_path, pred_path))
        except InputError as exc:
            raise InputError(f"{gt_path} vs {pred_path}: {exc}") from None
        if on_image is not None:
            on_image(k, len(pairs))
    return results


def _expand(paths: Paths, suffixes: Sequence[str], role: str) -> tuple[list[Path], bool]:
    """Files of `paths` (folders expanded, sorted), and whether a folder was given."""
    given = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not given:
        raise InputError(f"no {role} files given")
    files, folder = [], False
    for path in map(Path, given):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise InputError(f"the {role} folder {path} holds no {' or '.join(suffixes)} files")
            files.extend(found)
            folder = True
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"the {role} file {path} does not exist; check the path and the file name")
    return files, folder


def _pair_by_name(gt_files: list[Path], pred_files: list[Path]) -> list[tuple[Path, Path]]:
    by_name = _index(pred_files, lambda p: p.name, "prediction")
    _index(gt_files, lambda p: p.name, "ground-truth")
    pairs: dict[Path, Path] = {}
    for path in gt_files:
        if path.name in by_name:
            pairs[path] = by_name.pop(path.name)
    left_gt = [p for p in gt_files if p not in pairs]
    by_key = _index(list(by_name.values()), _key, "prediction")
    _index(left_gt, _key, "ground-truth")
    for path in left_gt:
        if _key(path) in by_key:
            pairs[path] = by_key.pop(_key(path))
    left_gt = [p for p in gt_files if p not in pairs]
    if left_gt or by_key:
        problems = []
        if left_gt:
            problems.append(f"ground-truth files without a prediction: {_few(left_gt)}")
        if by_key:
            problems.append(f"predictions without a ground truth: {_few(list(by_key.values()))}")
        raise InputError(
            "; ".join(problems) + "; name each prediction like its ground-truth file (or with _labels / _proposals "
            "added, as segment-everything writes them), or give two lists of files in the same order"
        )
    return [(path, pairs[path]) for path in gt_files]


def _index(files: list[Path], key: Callable[[Path], str], role: str) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in files:
        name = key(path)
        if name in index:
            raise InputError(
                f"the {role} files {index[name]} and {path} both pair with the name {name!r}; "
                "keep one of them or give two lists of files in the same order"
            )
        index[name] = path
    return index


def _key(path: Path) -> str:
    """File name without its type (``.ome.tif`` counts as one) and without an output ending."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    stem = stem[:-4] if stem.lower().endswith(".ome") else stem
    for tag in OUTPUT_TAGS:
        if stem.endswith(tag):
            return stem[: -len(tag)]
    return stem

