"""Evaluation against ground truth: instance matching, proposal recall, file pairing.

Expected values are computed by hand in the comments from the pixel counts of
small label images.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import tifffile
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from napari_mobilesamv2 import InputError, OutputError
from napari_mobilesamv2.evaluation import (
    DEFAULT_IOU_THRESHOLDS,
    aggregate_matching,
    box_recall,
    evaluate_label_files,
    evaluate_proposal_files,
    labels_to_coco,
    match_labels,
    pair_files,
    pairwise_iou,
    proposal_recall,
    read_proposals,
    write_evaluation,
)
from napari_mobilesamv2.export import write_json


def three_objects_two_predictions():
    """3 ground-truth objects, 2 predictions: IoU 0.6 (6 of 10 columns), IoU 0.3, one object missed.

    Two rows of 25 columns. GT 1 = columns 0-9, GT 2 = 10-19, GT 3 = 20-24.
    Prediction 1 = columns 0-5: 12 shared pixels / 20 in the union = 0.6 with GT 1.
    Prediction 2 = columns 17-19: 6 / 20 = 0.3 with GT 2.
    """
    gt = np.zeros((2, 25), np.uint8)
    gt[:, 0:10], gt[:, 10:20], gt[:, 20:25] = 1, 2, 3
    pred = np.zeros((2, 25), np.int32)
    pred[:, 0:6], pred[:, 17:20] = 1, 2
    return gt, pred


def test_default_thresholds_are_half_to_095():
    assert DEFAULT_IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_matching_counts_and_ratios_by_hand():
    gt, pred = three_objects_two_predictions()
    result = match_labels(gt, pred)
    s = result.at(0.5)  # only the IoU 0.6 pair counts
    assert (s.n_true, s.n_pred, s.tp, s.fp, s.fn) == (3, 2, 1, 1, 2)
    assert s.precision == pytest.approx(0.5)
    assert s.recall == pytest.approx(1 / 3)
    assert s.f1 == pytest.approx(0.4)  # 2 / (2 + 1 + 2)
    assert s.average_precision == pytest.approx(0.25)  # 1 / (1 + 1 + 2)
    assert s.mean_matched_iou == pytest.approx(0.6)
    assert s.panoptic_quality == pytest.approx(0.6 / (1 + 0.5 + 1))
    assert s.true_ids.tolist() == [1] and s.pred_ids.tolist() == [1] and s.ious.tolist() == pytest.approx([0.6])
    assert result.at(0.6).tp == 1  # IoU >= threshold pairs
    for t in (0.65, 0.95):  # no pair: every ratio 0
        s = result.at(t)
        assert (s.tp, s.fp, s.fn) == (0, 2, 3)
        assert [s.precision, s.recall, s.f1, s.average_precision, s.mean_matched_iou, s.panoptic_quality] == [0] * 6

    low = match_labels(gt, pred, thresholds=[0.25]).at(0.25)  # both pairs count
    assert (low.tp, low.fp, low.fn) == (2, 0, 1)
    assert (low.precision, low.recall, low.f1) == pytest.approx((1.0, 2 / 3, 0.8))
    assert low.average_precision == pytest.approx(2 / 3)
    assert low.mean_matched_iou == pytest.approx(0.45)
    assert low.panoptic_quality == pytest.approx(0.9 / 2.5)
    assert low.true_ids.tolist() == [1, 2] and low.pred_ids.tolist() == [1, 2]


def test_means_over_thresholds_and_table():
    gt, pred = three_objects_two_predictions()
    result = match_labels(gt, pred)
    # 0.5, 0.55, 0.6 have AP 0.25; the seven others 0
    assert result.mean("average_precision") == pytest.approx(3 * 0.25 / 10)
    assert result.mean("f1") == pytest.approx(3 * 0.4 / 10)
    lines = result.table().splitlines()
    assert len(lines) == 11 and lines[0].split()[:4] == ["IoU", "tp", "fp", "fn"]
    assert lines[1].split()[:8] == ["0.50", "1", "1", "2", "0.500", "0.333", "0.400", "0.250"]
    with pytest.raises(InputError, match="unknown ratio 'accuracy'"):
        result.mean("accuracy")
    with pytest.raises(InputError, match="IoU threshold 0.52 was not evaluated"):
        result.at(0.52)


def test_one_to_one_assignment_finds_the_most_pairs():
    """One row, GT A = columns 0-9, GT B = 10-12; prediction P2 = 0-2, P1 = 3-12.

    IoU(A, P1) = 7/13 = 0.538, IoU(A, P2) = 3/10, IoU(B, P1) = 3/10. At 0.25 pairing
    A with its best partner P1 would leave one pair; the assignment pairs A-P2, B-P1.
    """
    gt = np.zeros((1, 13), np.uint16)
    gt[0, :10], gt[0, 10:] = 1, 2
    pred = np.zeros((1, 13), np.uint16)
    pred[0, :3], pred[0, 3:] = 2, 1
    s = match_labels(gt, pred, 0.25).at(0.25)
    assert (s.tp, s.fp, s.fn) == (2, 0, 0)
    assert list(zip(s.true_ids.tolist(), s.pred_ids.tolist())) == [(1, 2), (2, 1)]
    assert s.sum_matched_iou == pytest.approx(0.6)
    s = match_labels(gt, pred, 0.5).at(0.5)
    assert (s.tp, s.fp, s.fn) == (1, 1, 1) and s.ious.tolist() == pytest.approx([7 / 13])


def test_non_contiguous_ids_and_dtypes():
    gt, pred = three_objects_two_predictions()
    gt_ids = np.array([0, 3, 70, 4_000_000_000], np.uint32)[gt]  # large ids: no table sized by id
    pred_ids = np.array([0, 9, 5], np.int64)[pred]
    s = match_labels(gt_ids, pred_ids, [0.25]).at(0.25)
    assert (s.tp, s.fp, s.fn) == (2, 0, 1)
    assert s.true_ids.tolist() == [3, 70] and s.pred_ids.tolist() == [9, 5]
    table = pairwise_iou(gt_ids, pred_ids)
    assert table.true_ids.tolist() == [3, 70, 4_000_000_000] and table.pred_ids.tolist() == [5, 9]
    dense = table.to_sparse().toarray()  # rows: GT 3, 70, 4e9; columns: prediction 5, 9
    assert dense == pytest.approx(np.array([[0, 0.6], [0.3, 0], [0, 0]]))
    assert table.intersection.tolist() == [12, 6]


def test_nd_labels():
    """(4, 4, 4) volumes. GT 1 = z 0-1 (32 px), GT 2 = z 2-3, rows 0-1 (16 px).

    Prediction 8 = z 1-2 (32 px): 16 shared with GT 1 -> 16/48 = 1/3; 8 with GT 2 -> 8/40.
    Prediction 9 = z 3, rows 0-1 (8 px): 8/16 = 0.5 with GT 2.
    """
    gt = np.zeros((4, 4, 4), np.int16)
    gt[0:2], gt[2:4, 0:2] = 1, 2
    pred = np.zeros((4, 4, 4), np.uint8)
    pred[1:3], pred[3, 0:2] = 8, 9
    result = match_labels(gt, pred, [0.3, 0.5])
    assert (result.at(0.5).tp, result.at(0.5).fp, result.at(0.5).fn) == (1, 1, 1)
    assert result.at(0.5).pred_ids.tolist() == [9]
    low = result.at(0.3)
    assert (low.tp, low.fp, low.fn) == (2, 0, 0)
    assert low.sum_matched_iou == pytest.approx(1 / 3 + 1 / 2)
    assert low.panoptic_quality == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert sorted(pairwise_iou(gt, pred).iou.tolist()) == pytest.approx([0.2, 1 / 3, 0.5])


def test_empty_images_follow_stardist():
    empty = np.zeros((5, 5), np.uint8)
    two = np.zeros((5, 5), np.uint8)
    two[0, :2], two[4, 3:] = 1, 2
    s = match_labels(empty, empty, 0.5).at(0.5)  # nothing to find, nothing found: ratios 0, counts 0
    assert (s.n_true, s.n_pred, s.tp, s.fp, s.fn) == (0, 0, 0, 0, 0)
    assert [s.precision, s.recall, s.f1, s.average_precision, s.panoptic_quality] == [0.0] * 5
    s = match_labels(empty, two, 0.5).at(0.5)
    assert (s.tp, s.fp, s.fn, s.precision) == (0, 2, 0, 0.0)
    s = match_labels(two, empty, 0.5).at(0.5)
    assert (s.tp, s.fp, s.fn, s.recall) == (0, 0, 2, 0.0)
    perfect = match_labels(two, two).at(0.95)
    assert (perfect.tp, perfect.precision, perfect.recall, perfect.panoptic_quality) == (2, 1.0, 1.0, 1.0)


def test_aggregate_sums_counts_before_ratios():
    gt, pred = three_objects_two_predictions()
    first = match_labels(gt, pred, [0.5, 0.7])
    second = match_labels(gt, gt, [0.5, 0.7])  # 3 perfect pairs
    empty = match_labels(np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint8), [0.5, 0.7])
    total = aggregate_matching([first, second, empty])
    assert total.n_images == 3
    s = total.at(0.5)  # tp 1 + 3, fp 1 + 0, fn 2 + 0; matched IoU 0.6 + 3
    assert (s.n_true, s.n_pred, s.tp, s.fp, s.fn) == (6, 5, 4, 1, 2)
    assert (s.precision, s.recall, s.f1) == pytest.approx((4 / 5, 4 / 6, 8 / 11))
    assert s.average_precision == pytest.approx(4 / 7)
    assert s.mean_matched_iou == pytest.approx(3.6 / 4)  # mean over all matches, not of image means
    assert s.panoptic_quality == pytest.approx(3.6 / (4 + 0.5 + 1))
    assert len(s.true_ids) == 0  # no id pairs across images
    assert total.at(0.7).tp == 3
    with pytest.raises(InputError, match="cannot aggregate results at thresholds 0.5, 0.7 and 0.5"):
        aggregate_matching([first, match_labels(gt, pred, 0.5)])
    with pytest.raises(InputError, match="no image pairs"):
        aggregate_matching([])


def test_to_dict_is_json():
    gt, pred = three_objects_two_predictions()
    data = json.loads(json.dumps(match_labels(gt, pred, [0.25, 0.5]).to_dict(pairs=True)))
    assert data["n_images"] == 1 and data["thresholds"] == [0.25, 0.5]
    row = data["per_threshold"][1]
    assert {k: row[k] for k in ("threshold", "tp", "fp", "fn", "average_precision")} == {
        "threshold": 0.5, "tp": 1, "fp": 1, "fn": 2, "average_precision": 0.25}
    assert row["pairs"] == [[1, 1, pytest.approx(0.6)]]
    assert data["mean_over_thresholds"]["f1"] == pytest.approx((0.8 + 0.4) / 2)


def test_invalid_inputs_raise_input_error():
    gt, pred = three_objects_two_predictions()
    with pytest.raises(InputError, match=r"shape \(2, 25\) but the prediction has shape \(25, 2\)"):
        match_labels(gt, pred.T)
    with pytest.raises(InputError, match="integers, not float32"):
        match_labels(gt.astype(np.float32), pred)
    with pytest.raises(InputError, match="skimage.measure.label"):
        match_labels(gt, pred > 0)
    with pytest.raises(InputError, match="negative values"):
        match_labels(gt, -pred)
    with pytest.raises(InputError, match=r"lie in \(0, 1\]; got 0, 1.5"):
        match_labels(gt, pred, [0, 0.5, 1.5])


# --- proposal recall ------------------------------------------------------------------

def proposal(mask: np.ndarray, score: float, image_id: int = 0, bbox=None) -> dict:
    """A COCO result as segment-everything writes it (RLE counts as str)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    box = bbox if bbox is not None else [float(v) for v in mask_utils.toBbox(rle)]
    return {"image_id": image_id, "category_id": 1, "bbox": box, "score": score,
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}}


def four_objects() -> np.ndarray:
    labels = np.zeros((20, 20), np.uint16)
    labels[1:5, 1:5], labels[1:5, 10:16], labels[10:18, 2:6], labels[12:16, 12:19] = 4, 9, 12, 30
    return labels


def coco_recall(labels: list[np.ndarray], results: list[list[dict]], max_dets: list[int]) -> np.ndarray:
    """AR per maxDets (area 'all') of several images straight from pycocotools, for comparison."""
    images, annotations, found = [], [], []
    for image_id, (plane, records) in enumerate(zip(labels, results)):
        images.append({"id": image_id, "height": plane.shape[0], "width": plane.shape[1]})
        for i in np.unique(plane[plane > 0]):
            rle = mask_utils.encode(np.asfortranarray((plane == i).astype(np.uint8)))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                "segmentation": rle, "area": float(mask_utils.area(rle)),
                                "bbox": list(mask_utils.toBbox(rle))})
        found += [{"image_id": image_id, "category_id": 1, "score": r["score"], "segmentation": r["segmentation"]}
                  for r in records]
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(found), "segm")
        evaluation.params.useCats = 0
        evaluation.params.maxDets = max_dets
        evaluation.evaluate()
        evaluation.accumulate()
    return evaluation.eval["recall"][:, 0, 0, :].mean(axis=0)


def test_perfect_proposals_have_recall_one():
    labels = four_objects()
    records = [proposal(labels == i, 0.9) for i in (4, 9, 12, 30)]
    result = proposal_recall(labels, records)
    assert result.ks == (10, 100, 1000) and result.average_recall == (1.0, 1.0, 1.0)
    assert coco_recall([labels], [records], [10, 100, 1000]).tolist() == [1.0, 1.0, 1.0]
    assert result.box_recall == 1.0 and (result.n_images, result.n_objects, result.n_proposals) == (1, 4, 4)
    assert result.average_recall_by_area["small"] == (1.0, 1.0, 1.0)  # every object is under 32² px
    assert np.isnan(result.average_recall_by_area["large"]).all()
    data = json.loads(json.dumps(result.to_dict()))
    assert data["mask_average_recall"] == {"AR@10": 1.0, "AR@100": 1.0, "AR@1000": 1.0}
    assert data["mask_average_recall_by_area"]["large"] == {"AR@10": None, "AR@100": None, "AR@1000": None}
    table = result.table().splitlines()
    assert table[0].split() == ["K", "AR", "small", "medium", "large"]
    assert table[1].split() == ["10", "1.000", "1.000", "nan", "nan"]
    assert table[-1] == "box recall at IoU 0.5: 1.000 (4 objects, 4 proposals, 1 images)"


def test_half_the_objects_proposed_gives_half_recall_and_k_counts_by_score():
    labels = four_objects()
    records = [proposal(labels == 4, 0.9), proposal(labels == 30, 0.2)]
    result = proposal_recall(labels, records, ks=[1, 10])
    assert result.average_recall == (0.25, 0.5)  # AR@1: only the proposal of highest score counts
    assert result.at(10) == 0.5 and result.box_recall == 0.5
    assert coco_recall([labels], [records], [1, 10]).tolist() == [0.25, 0.5]
    with pytest.raises(InputError, match="AR@100 was not evaluated"):
        result.at(100)


def test_partial_mask_counts_at_the_iou_thresholds_it_passes():
    """Object 12 is 8x4 = 32 px; a proposal of its first 5 rows (20 px) has IoU 0.625:

    it is found at IoU 0.5, 0.55 and 0.6 (3 of 10 thresholds) -> recall 0.3 of that object.
    """
    labels = four_objects()
    partial = (labels == 12) & (np.arange(20)[:, None] < 15)
    records = [proposal(partial, 0.5)]
    expected = 0.3 / 4
    assert proposal_recall(labels, records, ks=[10]).average_recall[0] == pytest.approx(expected)
    assert coco_recall([labels], [records], [10])[0] == pytest.approx(expected)


def test_recall_of_several_images_equals_cocoeval_accumulate():
    """Duplicates, partial masks, misses and K cut-offs over two images, against COCOeval itself."""
    labels = four_objects()
    rows = np.arange(20)[:, None]
    first = [proposal(labels == 4, 0.3), proposal(labels == 4, 0.9),  # a duplicate matches nothing more
             proposal((labels == 12) & (rows < 15), 0.8), proposal(labels == 9, 0.1)]
    second = [proposal((labels == 30) & (rows < 14), 0.7), proposal(labels > 0, 0.95)]
    result = proposal_recall([labels, labels], [first, second], ks=[1, 2, 3, 10])
    expected = coco_recall([labels, labels], [first, second], [1, 2, 3, 10])
    assert result.average_recall == pytest.approx(tuple(expected))
    # by hand at K=10: objects 4 and 9 found at every threshold, 12 at 3 of 10 (IoU 0.625), 30 at 0 of 10
    # (IoU 2/4 rows = 0.5: found at 0.5 only -> 1 of 10); 8 objects in all
    assert result.at(10) == pytest.approx((1 + 1 + 0.3 + 0.1) / 8)
    per_image = [proposal_recall(labels, records, ks=[10], by_area=False) for records in (first, second)]
    assert [r.at(10) for r in per_image] == pytest.approx([(1 + 1 + 0.3) / 4, 0.1 / 4])
    assert per_image[0].average_recall_by_area == {} and "small" not in per_image[0].table()


def test_box_recall_uses_the_proposal_boxes_at_iou_half():
    labels = np.zeros((20, 20), np.uint8)
    labels[2:6, 2:6] = 1  # box [2, 2, 4, 4]
    labels[10:14, 10:14] = 2  # box [10, 10, 4, 4]
    mask = np.zeros((20, 20), bool)
    records = [proposal(mask, 0.9, bbox=[2, 2, 4, 8]),  # 16 / 32 = 0.5 with object 1: covered
               proposal(mask, 0.8, bbox=[10, 10, 4, 9])]  # 16 / 36 < 0.5 with object 2: not covered
    assert box_recall(labels, records) == 0.5
    assert box_recall(labels, records, iou_threshold=0.4) == 1.0
    assert box_recall(labels, records, iou_threshold=0.4, max_proposals=1) == 0.5
    # one box may cover several objects (no one-to-one pairing): [0, 0, 8, 4] has IoU 16 / 32 with both
    pair = np.zeros((8, 8), np.uint8)
    pair[0:4, 0:4], pair[0:4, 4:8] = 1, 2
    assert box_recall(pair, [proposal(np.zeros((8, 8), bool), 0.9, bbox=[0, 0, 8, 4])]) == 1.0
    assert box_recall([labels, pair], [records, []]) == 0.25


def test_stacks_take_image_id_as_plane_and_2d_takes_any_single_id():
    stack = np.stack([four_objects(), four_objects()])
    records = [proposal(stack[0] == 4, 0.9, image_id=0), proposal(stack[1] == 9, 0.9, image_id=1)]
    result = proposal_recall(stack, records, ks=[10])
    assert (result.n_images, result.n_objects, result.average_recall) == (2, 8, (0.25,))
    single = proposal_recall(stack[0], [proposal(stack[0] == 4, 0.9, image_id=7)], ks=[10])
    assert single.average_recall == (0.25,)
    with pytest.raises(InputError, match="image_id 2, but the ground-truth stack"):
        proposal_recall(stack, records + [proposal(stack[0] == 4, 0.9, image_id=2)])
    with pytest.raises(InputError, match="for 2 images"):
        proposal_recall(stack[0], records)


def test_several_images_and_no_proposals():
    labels = four_objects()
    result = proposal_recall([labels, labels], [[proposal(labels == 4, 0.9)], []], ks=[10])
    assert result.average_recall == (0.125,) and result.n_objects == 8
    assert proposal_recall(labels, [], ks=[10]).average_recall == (0.0,)
    assert np.isnan(proposal_recall(np.zeros((4, 4), np.uint8), [], ks=[10]).average_recall[0])


def test_proposal_errors():
    labels = four_objects()
    with pytest.raises(InputError, match=r"masks of size \(10, 20\)"):
        proposal_recall(labels, [proposal(np.zeros((10, 20), bool), 0.5)])
    with pytest.raises(InputError, match="proposal 0 of the proposals lacks score"):
        proposal_recall(labels, [{"image_id": 0, "segmentation": {"size": [20, 20], "counts": ""}}])
    with pytest.raises(InputError, match="polygons are not supported"):
        proposal_recall(labels, [{"image_id": 0, "score": 1, "segmentation": [[0, 0, 1, 1, 2, 0]]}])
    with pytest.raises(InputError, match="2 label images but 1 proposal lists"):
        proposal_recall([labels, labels], [[]])
    with pytest.raises(InputError, match="positive whole numbers"):
        proposal_recall(labels, [], ks=[0])


def test_labels_to_coco():
    stack = np.zeros((2, 6, 8), np.uint8)
    stack[0, 1:3, 2:6] = 5
    stack[1, 0:2, 0:2], stack[1, 4:6, 6:8] = 1, 2
    data = json.loads(json.dumps(labels_to_coco(stack)))
    assert data["images"] == [{"id": 0, "height": 6, "width": 8}, {"id": 1, "height": 6, "width": 8}]
    anns = data["annotations"]
    assert [(a["id"], a["image_id"], a["label_id"], a["area"]) for a in anns] == [
        (1, 0, 5, 8.0), (2, 1, 1, 4.0), (3, 1, 2, 4.0)]
    assert anns[0]["bbox"] == [2.0, 1.0, 4.0, 2.0] and anns[0]["iscrowd"] == 0
    assert np.array_equal(mask_utils.decode({**anns[0]["segmentation"],
                                             "counts": anns[0]["segmentation"]["counts"].encode()}), stack[0] == 5)


# --- files ----------------------------------------------------------------------------

def test_pair_files_by_name_and_by_order(tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(tmp_path / "gt" / name, np.zeros((2, 2), np.uint8))
    tifffile.imwrite(tmp_path / "pred" / "a_labels.tif", np.zeros((2, 2), np.uint8))
    tifffile.imwrite(tmp_path / "pred" / "b.tif", np.zeros((2, 2), np.uint8))
    pairs = pair_files(tmp_path / "gt", tmp_path / "pred")
    assert [(g.name, p.name) for g, p in pairs] == [("a.tif", "a_labels.tif"), ("b.tif", "b.tif")]
    files = [tmp_path / "gt" / "a.tif", tmp_path / "gt" / "b.tif"]
    swapped = pair_files(files, [tmp_path / "pred" / "b.tif", tmp_path / "pred" / "a_labels.tif"])
    assert [p.name for _, p in swapped] == ["b.tif", "a_labels.tif"]  # lists pair in order
    with pytest.raises(InputError, match="2 ground-truth files but 1 prediction files"):
        pair_files(files, [tmp_path / "pred" / "b.tif"])
    tifffile.imwrite(tmp_path / "gt" / "c.tif", np.zeros((2, 2), np.uint8))
    tifffile.imwrite(tmp_path / "pred" / "z.tif", np.zeros((2, 2), np.uint8))
    with pytest.raises(InputError, match=r"ground-truth files without a prediction: \S*c.tif; "
                                         r"predictions without a ground truth: \S*z.tif"):
        pair_files(tmp_path / "gt", tmp_path / "pred")
    with pytest.raises(InputError, match="does not exist"):
        pair_files(tmp_path / "missing", tmp_path / "pred")


def test_evaluate_label_files_and_write_json(tmp_path):
    gt, pred = three_objects_two_predictions()
    for folder in ("gt", "pred"):
        (tmp_path / folder).mkdir()
    tifffile.imwrite(tmp_path / "gt" / "one.tif", gt)
    tifffile.imwrite(tmp_path / "pred" / "one_labels.tif", pred)
    tifffile.imwrite(tmp_path / "gt" / "two.tif", gt)
    tifffile.imwrite(tmp_path / "pred" / "two_labels.tif", gt)
    seen = []
    evaluation = evaluate_label_files(tmp_path / "gt", tmp_path / "pred", [0.5],
                                      on_image=lambda i, n: seen.append((i, n)))
    assert seen == [(0, 2), (1, 2)]
    assert [r.at(0.5).tp for r in evaluation.per_image] == [1, 3]
    assert (evaluation.total.at(0.5).tp, evaluation.total.at(0.5).fp, evaluation.total.at(0.5).fn) == (4, 1, 2)
    out = tmp_path / "evaluation.json"
    write_evaluation(out, evaluation)
    data = json.loads(out.read_text())
    assert [image["prediction"] for image in data["images"]] == [
        str(tmp_path / "pred" / "one_labels.tif"), str(tmp_path / "pred" / "two_labels.tif")]
    assert data["images"][0]["per_threshold"][0]["f1"] == pytest.approx(0.4)
    assert data["total"]["per_threshold"][0]["average_precision"] == pytest.approx(4 / 7)
    with pytest.raises(OutputError, match="is the input image"):
        write_evaluation(tmp_path / "gt" / "one.tif", evaluation)
    tifffile.imwrite(tmp_path / "pred" / "two_labels.tif", gt[:, :20])
    with pytest.raises(InputError, match=r"two.tif vs \S*two_labels.tif: the ground truth has shape \(2, 25\) "
                                         r"but the prediction has shape \(2, 20\)"):
        evaluate_label_files(tmp_path / "gt", tmp_path / "pred")


def test_evaluate_proposal_files(tmp_path):
    labels = four_objects()
    tifffile.imwrite(tmp_path / "a.tif", labels)
    tifffile.imwrite(tmp_path / "b.tif", labels)
    (tmp_path / "props").mkdir()
    write_json(tmp_path / "props" / "a_proposals.json", [proposal(labels == i, 0.9) for i in (4, 9, 12, 30)])
    write_json(tmp_path / "props" / "b_proposals.json", [proposal(labels == 4, 0.9, image_id=1)])
    assert len(read_proposals(tmp_path / "props" / "a_proposals.json")) == 4
    evaluation = evaluate_proposal_files([tmp_path / "a.tif", tmp_path / "b.tif"], tmp_path / "props", ks=[10, 100])
    assert [r.average_recall for r in evaluation.per_image] == [(1.0, 1.0), (0.25, 0.25)]
    assert evaluation.total.average_recall == (0.625, 0.625) and evaluation.total.box_recall == 0.625
    data = json.loads(json.dumps(evaluation.to_dict()))
    assert data["total"]["n_objects"] == 8 and data["images"][1]["mask_average_recall"]["AR@10"] == 0.25
    (tmp_path / "props" / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read .*bad.json as JSON"):
        read_proposals(tmp_path / "props" / "bad.json")
