"""The evaluate and train-detector commands, and fine-tuned detector files in segment-everything."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal

import numpy as np
import pytest
import tifffile
import torch
from pycocotools import mask as mask_utils

from napari_mobilesamv2.cli import main
from napari_mobilesamv2.evaluation import aggregate_matching, match_labels, proposal_recall
from napari_mobilesamv2.training import (
    DEFAULT_BATCH,
    DEFAULT_EPOCHS,
    DEFAULT_IMGSZ,
    is_detector_state,
    load_detector_state,
    read_detector_state,
)

from .conftest import DETECTOR_FIXTURE, synthetic_cells, write_pairs, write_weight_files


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(argv: list[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of the command line (usable in module-scoped fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


# --- evaluate: label images ----------------------------------------------------------------------------


def hand_made_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """Two (ground truth, prediction) label images with exact, partial, missed and extra objects."""
    gt_a = np.zeros((20, 20), np.uint16)
    gt_a[1:5, 1:5], gt_a[1:5, 10:16], gt_a[10:18, 2:6] = 1, 2, 3
    pred_a = np.zeros_like(gt_a)
    pred_a[1:5, 1:5] = 7          # exact: IoU 1
    pred_a[1:5, 11:16] = 8        # 20 of 24 px: IoU 5/6
    pred_a[12:16, 12:19] = 9      # nothing there: a false positive; object 3 is missed
    gt_b = np.zeros((16, 24), np.uint16)
    gt_b[2:10, 2:10], gt_b[2:10, 14:22] = 5, 6
    pred_b = np.zeros_like(gt_b)
    pred_b[2:10, 2:8] = 1         # 48 of 64 px: IoU 0.75
    pred_b[2:10, 14:22] = 2       # exact
    return [(gt_a, pred_a), (gt_b, pred_b)]


@pytest.fixture()
def label_folders(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    for name, (truth, predicted) in zip("ab", hand_made_pairs()):
        tifffile.imwrite(gt / f"{name}.tif", truth)
        tifffile.imwrite(pred / f"{name}_labels.tif", predicted)  # as segment-everything names its output
    return gt, pred


def expected_row(result, iou: float = 0.5) -> dict:
    stats = result.at(iou)
    return {"n_true": stats.n_true, "n_pred": stats.n_pred, "tp": stats.tp, "fp": stats.fp, "fn": stats.fn,
            "precision": stats.precision, "recall": stats.recall, "f1": stats.f1,
            "mean_iou": stats.mean_matched_iou, "pq": stats.panoptic_quality,
            "ap50_95": float(np.mean([s.average_precision for s in result.stats]))}


def test_evaluate_labels_gives_match_labels_numbers_in_table_and_json(label_folders, tmp_path):
    gt, pred = label_folders
    code, out, err = run(["evaluate", "--gt", str(gt), "--pred", str(pred), "--json", str(tmp_path / "s.json")])
    assert code == 0, err
    results = [match_labels(truth, predicted) for truth, predicted in hand_made_pairs()]
    expected = [expected_row(r) for r in results] + [expected_row(aggregate_matching(results))]
    summary = json.loads((tmp_path / "s.json").read_text())["summary"]
    assert summary["iou_threshold"] == 0.5
    assert [row["image"] for row in summary["images"]] == ["a.tif", "b.tif"]
    assert summary["total"]["image"] == "total (2 images)"
    for got, want in zip([*summary["images"], summary["total"]], expected):
        assert {key: got[key] for key in want} == pytest.approx(want, abs=1e-12)
    # hand-computed values of image a at IoU 0.5: tp 2, fp 1, fn 1, matched IoU 1 and 5/6
    a = summary["images"][0]
    assert (a["tp"], a["fp"], a["fn"]) == (2, 1, 1) and a["precision"] == pytest.approx(2 / 3)
    assert a["mean_iou"] == pytest.approx((1 + 5 / 6) / 2) and a["pq"] == pytest.approx((1 + 5 / 6) / 3)
    # the full per-threshold results are in the JSON too
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["total"]["per_threshold"][0]["tp"] == 4 and len(data["images"]) == 2
    lines = out.splitlines()
    assert lines[0].split() == ["image", "n_true", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1",
                                "mean_iou", "pq", "ap50_95"]
    cells = lambda row: [str(row[k]) if isinstance(row[k], int) else f"{row[k]:.3f}" for k in expected[0]]  # noqa: E731
    assert lines[1].split() == ["a.tif", *cells(expected[0])]
    assert lines[2].split() == ["b.tif", *cells(expected[1])]
    assert lines[3].split() == ["total", "(2", "images)", *cells(expected[2])]
    assert "at IoU 0.5" in lines[4]


def test_evaluate_reports_another_iou_threshold(label_folders):
    gt, pred = label_folders
    code, out, _ = run(["evaluate", "--gt", str(gt / "a.tif"), str(gt / "b.tif"), "--pred",
                        str(pred / "a_labels.tif"), str(pred / "b_labels.tif"), "--iou", "0.8"])
    assert code == 0
    total = expected_row(aggregate_matching([match_labels(t, p) for t, p in hand_made_pairs()]), 0.8)
    assert total["tp"] == 3  # the IoU 0.75 pair no longer counts
    cells = [str(total[k]) if isinstance(total[k], int) else f"{total[k]:.3f}" for k in total]
    assert out.splitlines()[3].split() == ["total", "(2", "images)", *cells]
    assert "at IoU 0.8" in out.splitlines()[4]


# --- evaluate: proposals -------------------------------------------------------------------------------


def proposal(mask: np.ndarray, score: float) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"image_id": 0, "category_id": 1, "bbox": [float(v) for v in mask_utils.toBbox(rle)], "score": score,
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}}


def test_evaluate_proposals_gives_proposal_recall_numbers(tmp_path):
    gt_folder, pred_folder = tmp_path / "gt", tmp_path / "pred"
    gt_folder.mkdir(), pred_folder.mkdir()
    truths, records = [], []
    for name, (truth, predicted) in zip("ab", hand_made_pairs()):
        tifffile.imwrite(gt_folder / f"{name}.tif", truth)
        mine = [proposal(predicted == i, 0.9 - 0.1 * k) for k, i in enumerate(np.unique(predicted[predicted > 0]))]
        (pred_folder / f"{name}_proposals.json").write_text(json.dumps(mine))
        truths.append(truth), records.append(mine)
    code, out, err = run(["evaluate", "--proposals", "--gt", str(gt_folder), "--pred", str(pred_folder),
                          "--ks", "1", "10", "--json", str(tmp_path / "ar.json")])
    assert code == 0, err
    expected = [proposal_recall(t, r, ks=[1, 10], by_area=False) for t, r in zip(truths, records)]
    total = proposal_recall(truths, records, ks=[1, 10], by_area=False)
    summary = json.loads((tmp_path / "ar.json").read_text())["summary"]
    for got, want in zip([*summary["images"], summary["total"]], [*expected, total]):
        assert got["AR@1"] == pytest.approx(want.average_recall[0])
        assert got["AR@10"] == pytest.approx(want.average_recall[1])
        assert got["box_recall"] == pytest.approx(want.box_recall)
        assert (got["n_objects"], got["n_proposals"]) == (want.n_objects, want.n_proposals)
    assert total.box_recall == pytest.approx(4 / 5)  # box IoU 1, 5/6 (a; its third object is missed), 0.75, 1 (b)
    lines = out.splitlines()
    assert lines[0].split() == ["image", "n_objects", "n_proposals", "AR@1", "AR@10", "box_recall"]
    assert lines[3].split()[:2] == ["total", "(2"] and lines[3].split()[-1] == f"{total.box_recall:.3f}"


# --- evaluate: errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("make_args, message", [
    (lambda gt, pred, t: ["--gt", str(gt), "--pred", str(pred / "a_labels.tif")],
     "ground-truth files without a prediction: "),
    (lambda gt, pred, t: ["--gt", str(gt / "a.tif"), str(gt / "b.tif"), "--pred", str(pred / "a_labels.tif")],
     "2 ground-truth files but 1 prediction files"),
    (lambda gt, pred, t: ["--gt", str(gt), "--pred", str(t / "missing")], "does not exist"),
    (lambda gt, pred, t: ["--gt", str(gt), "--pred", str(t / "p.json")], "add --proposals"),
    (lambda gt, pred, t: ["--gt", str(gt), "--pred", str(pred), "--iou", "0.3"], "--iou must be one of 0.5, "),
    (lambda gt, pred, t: ["--gt", str(gt), "--pred", str(pred), "--json", str(gt / "a.tif")], "is the input"),
])
def test_evaluate_errors_are_one_line_with_status_2(label_folders, tmp_path, make_args, message):
    gt, pred = label_folders
    (tmp_path / "p.json").write_text("[]")
    code, out, err = run(["evaluate", *make_args(gt, pred, tmp_path)])
    assert code == 2 and err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


# --- train-detector ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_cli(tmp_path_factory):
    """train-detector on five 128 px images for two epochs, from the tiny pickled detector (trusted)."""
    folder = tmp_path_factory.mktemp("train")
    images, labels = write_pairs(folder, range(5))
    out = folder / "tuned.pt"
    result = run(["train-detector", "--images", str(images), "--labels", str(labels), "--out", str(out),
                  "--detector-weights", str(DETECTOR_FIXTURE), "--trust-weights", "--epochs", "2", "--imgsz", "128",
                  "--batch", "4", "--device", "cpu", "--no-download"])
    return result, out


def test_train_detector_writes_a_loadable_file_its_card_and_reports(trained_cli):
    (code, out, err), path = trained_cli
    assert code == 0, err
    assert is_detector_state(path) and load_detector_state(path).head.reg_max == 26
    card = json.loads(path.with_suffix(".json").read_text())
    stored = read_detector_state(path)
    assert card["training"]["epochs"] == 2 and card["training"]["imgsz"] == 128 and card["training"]["batch"] == 4
    assert stored["card"]["training"]["best_epoch"] == card["training"]["best_epoch"] in (1, 2)
    lines = out.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]
    assert all("box " in line and "recall " in line and "mAP50 " in line for line in epochs)
    inference = stored["inference"]
    assert f"best epoch: {card['training']['best_epoch']} of 2" in out
    assert f"chosen thresholds: --conf {inference['conf']:g} --iou {inference['iou']:g}" in out
    assert "time per image: " in out and "at --imgsz 128 on cpu" in out
    assert ("mask filters not tuned: the efficientvit_l2 image encoder or the mask decoder weights are not here; "
            "give --encoder-weights FILE --decoder-weights FILE") in out
    assert "min_area" not in inference
    assert f"wrote {path} and its model card {path.with_suffix('.json')}" in out


def test_help_shows_the_training_defaults_from_the_training_package():
    code, out, _ = run(["train-detector", "--help"])
    assert code == 0
    flat = " ".join(out.split())
    assert f"(default: {DEFAULT_EPOCHS})" in flat and f"(default: {DEFAULT_IMGSZ})" in flat
    assert f"(default: {DEFAULT_BATCH})" in flat and "example: napari-mobilesamv2 train-detector" in flat


def test_fine_tuned_detector_needs_no_trust_in_segment_everything(trained_cli, tmp_path, sam_decoder, monkeypatch):
    (code, _, _), detector = trained_cli
    assert code == 0
    monkeypatch.setenv("NAPARI_MOBILESAMV2_CACHE", str(tmp_path / "cache"))
    encoder, decoder = write_weight_files(tmp_path, sam_decoder, seed=20)
    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, synthetic_cells((128, 128), n=6, seed=0, dtype=np.uint16))
    labels = tmp_path / "labels.tif"
    code, out, err = run(["segment-everything", str(image), "--encoder", "tiny_vit", "--encoder-weights", str(encoder),
                          "--decoder-weights", str(decoder), "--detector-weights", str(detector), "--device", "cpu",
                          "--no-download", "--labels", str(labels)])
    assert code == 0, err
    assert "warning" not in err and "trust" not in err and "error" not in err
    inference = read_detector_state(detector)["inference"]
    assert f"hint: {detector} was tuned for --imgsz 128 --conf {inference['conf']:g} --iou {inference['iou']:g}" \
        in err and "this run uses --imgsz 1024 --conf 0.4 --iou 0.9" in err
    assert tifffile.imread(labels).shape == (128, 128)
    # with its own settings, no hint
    code, _, err = run(["segment-everything", str(image), "--encoder", "tiny_vit", "--encoder-weights", str(encoder),
                        "--decoder-weights", str(decoder), "--detector-weights", str(detector), "--device", "cpu",
                        "--no-download", "--labels", str(labels), "--imgsz", "128", "--conf", f"{inference['conf']}",
                        "--iou", f"{inference['iou']}"])
    assert code == 0 and "hint" not in err


def test_pipeline_exposes_the_stored_settings_without_applying_them(trained_cli, tmp_path, sam_decoder):
    from napari_mobilesamv2 import MobileSAMv2

    _, detector = trained_cli
    encoder, decoder = write_weight_files(tmp_path, sam_decoder, seed=20)
    model = MobileSAMv2.from_pretrained("tiny_vit", encoder_weights=encoder, decoder_weights=decoder,
                                        detector_weights=detector, device="cpu", download=False)
    inference = read_detector_state(detector)["inference"]
    assert model.detector_settings == {"imgsz": 128, "conf": inference["conf"], "iou": inference["iou"]}
    reference = load_detector_state(detector)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model.detector(x), reference(x))
    pickled = MobileSAMv2.from_pretrained("tiny_vit", encoder_weights=encoder, decoder_weights=decoder,
                                          detector_weights=DETECTOR_FIXTURE, trust_weights=True, device="cpu",
                                          download=False)
    assert pickled.detector_settings == {}


def test_ctrl_c_stops_after_the_current_batch_and_keeps_the_best_epoch(tmp_path, monkeypatch):
    import napari_mobilesamv2.training as training

    real = training.train_detector

    def interrupted_once(*args, should_stop, **kwargs):
        sent = []

        def poll() -> bool:
            if not sent:
                sent.append(True)
                os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl+C during the first batch
            return should_stop()

        return real(*args, should_stop=poll, **kwargs)

    monkeypatch.setattr(training, "train_detector", interrupted_once)
    images, labels = write_pairs(tmp_path, range(5))
    out = tmp_path / "stopped.pt"
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    code, stdout, err = run(["train-detector", "--images", str(images), "--labels", str(labels), "--out", str(out),
                             "--detector-weights", str(DETECTOR_FIXTURE), "--trust-weights", "--epochs", "20",
                             "--imgsz", "128", "--batch", "2", "--device", "cpu"])
    assert code == 0, err
    assert "stopping after the current batch" in err
    assert "stopped by Ctrl+C after 1 epoch(s)" in stdout and "best epoch: 1 of 1" in stdout
    assert is_detector_state(out) and json.loads(out.with_suffix(".json").read_text())["training"]["epochs_run"] == 1
    assert signal.getsignal(signal.SIGINT) is before  # the handler is given back


@pytest.mark.parametrize("make_args, message", [
    (lambda i, l, t: ["--images", str(t / "missing"), "--labels", str(l), "--out", str(t / "d.pt"),
                      "--detector-weights", str(DETECTOR_FIXTURE), "--trust-weights"], "missing"),
    (lambda i, l, t: ["--images", str(i), "--labels", str(l), "--out", str(t / "d.pt"),
                      "--detector-weights", str(DETECTOR_FIXTURE)], "--trust-weights"),
    (lambda i, l, t: ["--images", str(i), "--labels", str(l), "--out", str(t / "d.pt"),
                      "--detector-weights", str(DETECTOR_FIXTURE), "--trust-weights", "--imgsz", "100"],
     "multiple of 32"),
    (lambda i, l, t: ["--images", str(i), "--labels", str(l), "--out", str(t / "d.json"),
                      "--detector-weights", str(DETECTOR_FIXTURE), "--trust-weights"], "model card"),
    (lambda i, l, t: ["--images", str(i), "--labels", str(l)], "required: --out"),
])
def test_train_detector_errors_are_one_line_with_status_2(tmp_path, make_args, message):
    images, labels = write_pairs(tmp_path, range(4))
    code, out, err = run(["train-detector", *make_args(images, labels, tmp_path)])
    assert code == 2 and err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "d.pt").exists()
