"""Object-aware detector: checkpoint loading with current Ultralytics and the official pre/post-processing.

The expected boxes come from Ultralytics 8.0.120 running MobileSAMv2's prediction code on a tiny
random-weight checkpoint of the ObjectAwareModel format (see tests/fixtures/make_detector_fixture.py).
"""

from __future__ import annotations

import copy
import importlib.util
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_mobilesamv2.models.detector import load_object_aware_model
from napari_mobilesamv2.models.errors import CheckpointError
from napari_mobilesamv2.prompts.object_aware import (
    detect_objects,
    letterbox,
    non_max_suppression,
    scale_boxes_v8_0_120,
    snap_boxes_to_border,
)

FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINT = FIXTURES / "object_aware_tiny.pt"
EXPECTED = json.loads((FIXTURES / "object_aware_expected.json").read_text())


def _fixture_script():
    spec = importlib.util.spec_from_file_location("make_detector_fixture", FIXTURES / "make_detector_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fixture_script = _fixture_script()


@pytest.fixture(scope="module")
def detector():
    return load_object_aware_model(CHECKPOINT)


def test_checkpoint_becomes_a_current_detect_head(detector):
    from ultralytics.nn.modules.head import Detect

    head = detector.head
    assert type(head) is Detect and head.reg_max == 26 and head.nc == 1
    assert not hasattr(head, "cv4") and not hasattr(head, "proto")
    assert detector.stride.tolist() == [8.0, 16.0, 32.0]
    assert detector.names == {0: "object"}
    assert all(p.dtype == torch.float32 for p in detector.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in detector.modules())  # fused
    with torch.inference_mode():
        raw = detector(torch.rand(1, 3, 64, 96))
    assert raw.shape == (1, 5, 8 * 12 + 4 * 6 + 2 * 3)


@pytest.mark.parametrize("expected", EXPECTED["images"], ids=lambda e: f"{e['height']}x{e['width']}")
def test_boxes_match_ultralytics_8_0_120(detector, expected):
    image = fixture_script.synthetic_image(expected["seed"], expected["height"], expected["width"])
    assert fixture_script.image_sha256(image) == expected["sha256"], "the synthetic image is not reproduced"

    boxes, scores = detect_objects(detector, image)

    assert boxes.dtype == scores.dtype == np.float32
    assert boxes.shape == (len(expected["scores"]), 4)
    # Convolution kernels differ between CPUs and library builds by up to ~4e-3 px on these random
    # weights (official-pipeline-facts.md; parity with the official code is checked at 1e-2 px).
    np.testing.assert_allclose(boxes, expected["boxes_xyxy"], rtol=0, atol=5e-3)
    np.testing.assert_allclose(scores, expected["scores"], rtol=0, atol=1e-4)


def test_no_detections_give_empty_arrays(detector):
    boxes, scores = detect_objects(detector, fixture_script.synthetic_image(11, 280, 440), conf=0.999)
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    assert boxes.dtype == scores.dtype == np.float32


def test_letterbox_pads_to_a_multiple_of_the_stride():
    padded, ratio, pad = letterbox(np.zeros((280, 440, 3), np.uint8))
    assert padded.shape == (672, 1024, 3) and ratio == pytest.approx(1024 / 440) and pad == (0, 10)
    assert (padded[:10] == 114).all() and (padded[-10:] == 114).all() and (padded[10:-10] == 0).all()

    padded, _, pad = letterbox(np.zeros((64, 96, 3), np.uint8))  # 683 rows + 21 px: top 10, bottom 11
    assert padded.shape == (704, 1024, 3) and pad == (0, 10)
    assert (padded[:10] == 114).all() and (padded[10:-11] == 0).all() and (padded[-11:] == 114).all()


def test_scale_boxes_uses_the_8_0_120_rounded_padding():
    boxes = torch.tensor([[100.0, 100.0, 500.0, 600.0], [-5.0, 0.0, 1030.0, 700.0]])
    scaled = scale_boxes_v8_0_120((672, 1024), boxes, (280, 440))
    # gain = 1024 / 440, pad = (0, round(10.18 - 0.1)) = (0, 10): y1 = 90 * 440 / 1024
    expected = [[100 * 440 / 1024, 90 * 440 / 1024, 500 * 440 / 1024, 590 * 440 / 1024], [0, 0, 440, 280]]
    np.testing.assert_allclose(scaled.numpy(), expected, rtol=1e-6)
    assert scaled[0, 1].item() == pytest.approx(38.671875)  # current ultralytics gives 38.6503


def test_border_snap_in_network_coordinates():
    boxes = torch.tensor([[19.9, 20.0, 1004.1, 652.0], [5.0, 5.0, 1010.0, 660.0], [30.0, 40.0, 500.0, 600.0]])
    snapped = snap_boxes_to_border(boxes, (672, 1024), threshold=20)
    expected = [[0.0, 20.0, 1024.0, 652.0], [0.0, 0.0, 1024.0, 672.0], [30.0, 40.0, 500.0, 600.0]]
    np.testing.assert_array_equal(snapped.numpy(), np.float32(expected))


def test_nms_keeps_scores_above_conf_and_drops_near_duplicates():
    # xywh columns: a box, a near duplicate (IoU 0.95), a box scored exactly at conf, a separate box
    xywh = torch.tensor([[100.0, 100.0, 100.0, 100.0], [100.0, 102.5, 100.0, 100.0],
                         [300.0, 300.0, 50.0, 50.0], [500.0, 500.0, 60.0, 60.0]])
    predictions = torch.cat([xywh, torch.tensor([[0.8], [0.9], [0.4], [0.5]])], 1).T
    boxes, scores = non_max_suppression(predictions, conf=0.4, iou=0.9)
    assert scores.tolist() == pytest.approx([0.9, 0.5])
    np.testing.assert_array_equal(boxes.numpy(), [[50.0, 52.5, 150.0, 152.5], [470.0, 470.0, 530.0, 530.0]])
    assert len(non_max_suppression(predictions, conf=0.4, iou=0.9, max_det=1)[1]) == 1


def _write_state_dict(path):
    torch.save(OrderedDict(weight=torch.zeros(3)), path)


def _write_text(path):
    path.write_text("this is not a checkpoint\n")


def _write_truncated_checkpoint(path):
    path.write_bytes(CHECKPOINT.read_bytes()[: CHECKPOINT.stat().st_size // 2])


def _write_stock_yolov8_seg(path):
    from ultralytics.nn.tasks import SegmentationModel

    stock_model = SegmentationModel(copy.deepcopy(fixture_script.TINY_SEGMENT_YAML), nc=1, verbose=False)
    torch.save({"model": stock_model.half()}, path)


@pytest.mark.parametrize(
    "write, reason",
    [
        (_write_truncated_checkpoint, "cannot be read"),
        (_write_state_dict, "not a YOLOv8 model"),
        (_write_text, "cannot be read"),
        (_write_stock_yolov8_seg, "16 DFL bins"),
    ],
    ids=["corrupt", "state-dict", "text", "stock-yolov8"],
)
def test_wrong_files_raise_checkpoint_error(tmp_path, write, reason):
    path = tmp_path / "detector.pt"
    write(path)
    with pytest.raises(CheckpointError, match=reason) as error:
        load_object_aware_model(path)
    assert "ObjectAwareModel.pt" in str(error.value) and "reg_max=26" in str(error.value)


def test_bytes_load_like_the_file(detector):
    from_bytes = load_object_aware_model(CHECKPOINT.read_bytes())
    a, b = from_bytes.state_dict(), detector.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CheckpointError, match=r"^my-detector cannot be read as a detector checkpoint"):
        load_object_aware_model(b"weights\n", source="my-detector")


def test_missing_file_is_not_a_checkpoint_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_object_aware_model(tmp_path / "missing.pt")
