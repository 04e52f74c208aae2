"""The headless pipeline end to end on small random-weight models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mobilesamv2 import (
    InputError, MobileSAMv2, UntrustedWeightsError, UntrustedWeightsWarning, objects_from_prompts,
)
from napari_mobilesamv2.decode.prompted import decode_boxes
from napari_mobilesamv2.devices import resolve_device
from napari_mobilesamv2.export import coco_results, decode_rle

from .conftest import DETECTOR_FIXTURE, synthetic_cells, write_weight_files


@pytest.fixture(scope="module")
def cells():
    return synthetic_cells((192, 256), n=14, seed=3)


def test_segment_everything_follows_detector_order(tiny_pipeline, cells):
    image_rgb = tiny_pipeline.prepare_image(cells)
    boxes, scores = tiny_pipeline.detect(image_rgb)
    result = tiny_pipeline.segment_everything(cells)
    assert len(result) == len(boxes) > 0
    np.testing.assert_array_equal(result.boxes_xyxy, boxes)
    np.testing.assert_array_equal(result.score, scores)
    assert np.all(np.diff(result.score) <= 0)
    embedding = tiny_pipeline.embed(image_rgb)
    decoded = decode_boxes(tiny_pipeline.prompt_encoder, tiny_pipeline.mask_decoder, embedding, boxes)
    for crop, expected in zip(result.crops, decoded.crops):
        np.testing.assert_array_equal(crop.to_full(cells.shape), expected.to_full(cells.shape))
    assert result.labels.dtype == np.int32 and result.labels.shape == cells.shape
    assert set(np.unique(result.labels)) <= set(range(len(result) + 1))


def test_max_prompts_keeps_the_best_boxes(tiny_pipeline, cells):
    full = tiny_pipeline.segment_everything(cells)
    capped = tiny_pipeline.segment_everything(cells, max_prompts=3)
    assert len(capped) == 3
    np.testing.assert_array_equal(capped.boxes_xyxy, full.boxes_xyxy[:3])


def test_no_detections_is_an_empty_result_not_an_error(tiny_pipeline):
    result = tiny_pipeline.segment_everything(synthetic_cells((64, 64), n=2, seed=1), conf=1.0)
    assert len(result) == 0 and result.labels.shape == (64, 64) and not result.labels.any()
    assert all(len(column) == 0 for column in result.table().values())


def test_table_columns(tiny_pipeline, cells):
    result = tiny_pipeline.segment_everything(cells, max_prompts=5)
    table = result.table()
    assert list(table["id"]) == [1, 2, 3, 4, 5]
    assert set(table) == {"id", "x0", "y0", "x1", "y1", "score", "predicted_iou", "stability", "area", "visible_area"}
    for k, crop in enumerate(result.crops):
        assert table["area"][k] == crop.area
        assert table["visible_area"][k] == (result.labels == k + 1).sum()


def test_quality_filters(tiny_pipeline, cells):
    result = tiny_pipeline.segment_everything(cells)
    threshold = float(np.median(result.area))
    filtered = tiny_pipeline.segment_everything(cells, min_area=threshold)
    assert len(filtered) == int((result.area >= threshold).sum())
    assert (filtered.area >= threshold).all()


def test_user_boxes_skip_the_detector_and_are_cleaned(tiny_pipeline, cells):
    boxes = np.array([[10, 10, 60, 50], [300, 5, 200, 40], [5, 5, 5, 30], [-20, -5, 30, 40]], np.float32)
    result = tiny_pipeline.segment_everything(cells, boxes_xyxy=boxes)
    np.testing.assert_array_equal(result.boxes_xyxy, [[10, 10, 60, 50], [200, 5, 256, 40], [0, 0, 30, 40]])
    assert np.isnan(result.score).all()


def test_grid_strategy_runs_on_the_given_embedding(tiny_pipeline, cells, monkeypatch):
    grid = {"strategy": "grid", "points_per_side": 2, "min_predicted_iou": -1.0, "min_stability": 0.0}  # keep all
    inverted = 255 - cells
    own = tiny_pipeline.segment_everything(cells, **grid)
    embedding = tiny_pipeline.embed(tiny_pipeline.prepare_image(inverted))
    expected = tiny_pipeline.segment_everything(inverted, **grid)

    def no_encoder(image_rgb):
        raise AssertionError("the image encoder ran although an embedding was given")

    monkeypatch.setattr(tiny_pipeline, "embed", no_encoder)
    result = tiny_pipeline.segment_everything(cells, embedding=embedding, **grid)
    assert result.strategy == "grid" and result.labels.shape == cells.shape
    assert len(result) == len(result.predicted_iou) == len(result.boxes_xyxy) == len(expected) > 0
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_array_equal(result.predicted_iou, expected.predicted_iou)
    np.testing.assert_array_equal(result.stability, expected.stability)
    assert not np.array_equal(result.predicted_iou, own.predicted_iou)  # the embedding, not the image, decided


def test_segment_anything_points_and_boxes(tiny_pipeline, cells):
    result = tiny_pipeline.segment_anything(
        cells, points=[[50, 60], [120, 100], [30, 30]], point_labels=[1, 1, 0], boxes=[[100, 20, 180, 90]]
    )
    assert len(result) == 3
    np.testing.assert_array_equal(result.boxes_xyxy[2], [100, 20, 180, 90])


def test_prompt_grouping():
    objects = objects_from_prompts(points=[[1, 1], [2, 2], [3, 3]], point_labels=[1, 0, 1], boxes=[[0, 0, 5, 5]])
    assert len(objects) == 3
    assert objects[0].labels.tolist() == [1, 0] and objects[1].points.tolist() == [[3, 3], [2, 2]]
    assert objects[2].box.tolist() == [0, 0, 5, 5]
    grouped = objects_from_prompts(points=[[1, 1], [2, 2], [3, 3]], point_labels=[1, 0, 0], point_groups=[7, 7, 8])
    assert len(grouped) == 1 and grouped[0].labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"points": [[500, 10]]}, "outside the 256x192"),
        ({"boxes": [[10, 10, 10, 40]]}, "has no area"),
        ({}, "no prompts"),
        ({"points": [[5, 5]], "point_labels": [2]}, "one 0 .background. or 1"),
    ],
)
def test_bad_prompts(tiny_pipeline, cells, kwargs, message):
    with pytest.raises(InputError, match=message):
        tiny_pipeline.segment_anything(cells, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"strategy": "random"}, "strategy must be"), ({"conf": 1.5}, "conf must be between 0 and 1"),
     ({"imgsz": 1000}, "multiple of 32"), ({"max_prompts": 0}, "max_prompts must be at least 1")],
)
def test_bad_parameters(tiny_pipeline, cells, kwargs, message):
    with pytest.raises(InputError, match=message):
        tiny_pipeline.segment_everything(cells, **kwargs)


def test_coco_export_round_trip(tiny_pipeline, cells):
    result = tiny_pipeline.segment_everything(cells, max_prompts=6)
    records = coco_results(result, image_id=4)
    assert [r["id"] for r in records] == list(range(1, len(result) + 1))
    for record, crop, box, score in zip(records, result.crops, result.boxes_xyxy, result.score):
        assert record["image_id"] == 4 and record["category_id"] == 1
        assert record["score"] == pytest.approx(float(score))
        assert record["bbox"] == pytest.approx([box[0], box[1], box[2] - box[0], box[3] - box[1]])
        np.testing.assert_array_equal(decode_rle(record["segmentation"]), crop.to_full(cells.shape))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu7")


def test_model_files_and_trust(tmp_path, sam_decoder, monkeypatch):
    from napari_mobilesamv2.models.download import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    encoder_path, decoder_path = write_weight_files(tmp_path, sam_decoder)
    files = dict(encoder_weights=encoder_path, decoder_weights=decoder_path,
                 detector_weights=DETECTOR_FIXTURE, device="cpu", download=False)
    with pytest.raises(UntrustedWeightsError, match="can run arbitrary code"):
        MobileSAMv2.from_pretrained("tiny_vit", **files)
    with pytest.warns(UntrustedWeightsWarning, match="because you trust it"):
        model = MobileSAMv2.from_pretrained("tiny_vit", trust_weights=True, **files)
    assert model.detector is not None and model.encoder_name == "tiny_vit"
    with pytest.raises(InputError, match="do not exist"):
        MobileSAMv2.from_pretrained("tiny_vit", **{**files, "decoder_weights": tmp_path / "nope.pt"})
    with pytest.raises(InputError, match="unknown encoder"):
        MobileSAMv2.from_pretrained("vit_z")


def test_mps_operator_gap_falls_back_to_cpu_for_that_step(tiny_encoder, sam_decoder, detector, cells, caplog):
    """Simulated: the pipeline believes it is on MPS and the encoder raises like a missing MPS operator."""

    class GappyEncoder(torch.nn.Module):
        img_size = 1024

        def __init__(self):
            super().__init__()
            self.inner = tiny_encoder

        def forward(self, x):
            if not getattr(self, "is_cpu_copy", False):
                raise NotImplementedError("The operator 'aten::upsample' is not currently implemented for the MPS device")
            return self.inner(x)

    gappy = GappyEncoder()
    pipeline = MobileSAMv2(gappy, *sam_decoder, detector, device="cpu")
    pipeline.device = torch.device("mps")
    make_cpu_copy = pipeline._steps._on_cpu

    def mark_copy(module):
        copy = make_cpu_copy(module)
        copy.is_cpu_copy = True
        return copy

    pipeline._steps._on_cpu = mark_copy
    embedding = pipeline.embed(pipeline.prepare_image(cells))
    expected = MobileSAMv2(tiny_encoder, *sam_decoder, detector).embed(pipeline.prepare_image(cells))
    assert torch.equal(embedding.features, expected.features)
    assert "image encoder: an operator is missing on MPS" in caplog.text
    pipeline.device = torch.device("cpu")
    with pytest.raises(NotImplementedError):
        pipeline.embed(pipeline.prepare_image(cells))
