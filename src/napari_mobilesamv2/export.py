"""Proposals in the COCO results format (RLE masks via pycocotools)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from .decode.masks import MaskCrop
from .io import atomic_write
from .stack import LinkedStack


def encode_rle(crop: MaskCrop, shape: tuple[int, int]) -> dict:
    """COCO RLE (``{'size': [H, W], 'counts': str}``) of a mask crop in an image of `shape`.

    Only the columns the crop spans are expanded (to full height), so large images cost
    no more than their objects.
    """
    height, width = (int(s) for s in shape)
    h, w = crop.shape
    strip = np.zeros((height, w), dtype=bool)
    strip[crop.top:crop.top + h] = crop.mask
    flat = strip.ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist() if flat.size else [0]
    if flat.size and flat[0]:
        runs.insert(0, 0)  # RLE counts start with background
    runs[0] += crop.left * height
    after = (width - crop.left - w) * height
    if len(runs) % 2:
        runs[-1] += after
    elif after:
        runs.append(after)
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """Inverse of :func:`encode_rle`: an (H, W) bool mask."""
    counts = rle["counts"]
    rle = {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(rle).astype(bool)


def coco_results(segmentation, image_id: int = 0, category_id: int = 1) -> list[dict]:
    """One COCO result per object, in object (detector) order.

    ``bbox`` is the prompt box as [x, y, w, h]; ``score`` the detector confidence
    (the predicted IoU where there is no detector score); ``id`` the label id.
    """
    shape = segmentation.shape
    results = []
    for k, (crop, box) in enumerate(zip(segmentation.crops, segmentation.boxes_xyxy)):
        score = float(segmentation.score[k])
        results.append({
            "image_id": int(image_id),
            "category_id": int(category_id),
            "id": k + 1,
            "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
            "score": score if np.isfinite(score) else float(segmentation.predicted_iou[k]),
            "segmentation": encode_rle(crop, shape),
            "predicted_iou": float(segmentation.predicted_iou[k]),
            "stability_score": float(segmentation.stability[k]),
            "area": crop.area,
        })
    return results


def stack_coco_results(link: LinkedStack, planes: Sequence) -> list[dict]:
    """COCO results of every plane of a linked stack: ``image_id`` is the flat plane index.

    Each record's ``id`` is the object's id in the linked labels (shared through
    the planes), or 0 for an object that larger objects hide completely.
    """
    global_id = {(int(p), int(i)): int(g) for p, i, g in zip(link.plane, link.local_id, link.global_id)}
    records = []
    for plane, result in enumerate(planes):
        for record in coco_results(result, image_id=plane):
            record["id"] = global_id.get((plane, record["id"]), 0)
            records.append(record)
    return records


def write_json(path: str | os.PathLike, data) -> None:
    """Write JSON atomically (see :func:`napari_mobilesamv2.io.atomic_write`).

    Raises
    ------
    OutputError
        The file cannot be written (e.g. the disk is full); an existing file at `path`
        is left as it was and no partial file remains.
    """
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f)
