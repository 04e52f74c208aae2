"""Prompt-guided decoding equals segment-anything's reference path; labels are assembled as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam

from napari_mobilesamv2.decode.labels import assemble_labels, merge_labels, paint_order
from napari_mobilesamv2.decode.masks import MaskCrop, crop_to_content, logits_to_crops, upsample_logits
from napari_mobilesamv2.decode.prompted import ObjectPrompt, decode_boxes, decode_object_prompts
from napari_mobilesamv2.embedding import PIXEL_MEAN, PIXEL_STD, embed_image
from napari_mobilesamv2.errors import InputError

IMAGE_SHAPE = (150, 220)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(5).integers(0, 256, (*IMAGE_SHAPE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def predictor(tiny_encoder, sam_decoder, image):
    sam = Sam(tiny_encoder, *sam_decoder, list(PIXEL_MEAN), list(PIXEL_STD)).eval()
    reference = SamPredictor(sam)
    reference.set_image(image)
    return reference


@pytest.fixture(scope="module")
def embedding(tiny_encoder, image):
    return embed_image(tiny_encoder, image)


BOXES = np.array(
    [[10, 20, 100, 120], [0, 0, 220, 150], [150.5, 30.25, 219.9, 149.0], [40, 40, 41, 41], [5, 90, 60, 149]],
    dtype=np.float32,
)


def test_embedding_equals_sam_predictor(predictor, embedding):
    assert torch.equal(embedding.features, predictor.features)
    assert embedding.input_size == predictor.input_size
    assert embedding.original_size == predictor.original_size == IMAGE_SHAPE


def _predict_torch(predictor, boxes_xyxy):
    boxes = torch.from_numpy(predictor.transform.apply_boxes(boxes_xyxy, IMAGE_SHAPE))
    with torch.no_grad():
        logits, iou, low = predictor.predict_torch(None, None, boxes, multimask_output=False, return_logits=True)
    logits = logits[:, 0].numpy()
    return logits > predictor.model.mask_threshold, iou[:, 0].numpy(), low, logits


def test_exact_box_masks_equal_predict_torch(predictor, embedding, sam_decoder):
    ref_masks, ref_iou, ref_low, _ = _predict_torch(predictor, BOXES)
    decoded = decode_boxes(*sam_decoder, embedding, BOXES, batch_size=len(BOXES), exact=True)  # one batch, as it
    assert len(decoded) == len(BOXES)
    assert torch.equal(decoded.low_res_logits, ref_low)
    np.testing.assert_array_equal(decoded.predicted_iou, ref_iou)
    for k, crop in enumerate(decoded.crops):
        np.testing.assert_array_equal(crop.to_full(IMAGE_SHAPE), ref_masks[k])


@pytest.mark.parametrize("tile_rows", [None, 4096, 1000])
def test_folded_box_masks_match_predict_torch(predictor, embedding, sam_decoder, tile_rows):
    """The default decoder: predict_torch's masks except where the full-size logit is within 1e-5 of 0."""
    from napari_mobilesamv2.decode.folded import FoldedBoxDecoder
    from napari_mobilesamv2.decode.prompted import transform_boxes

    boxes_xyxy = np.concatenate([BOXES, _many_boxes(19, seed=3)])
    ref_masks, ref_iou, ref_low, ref_logits = _predict_torch(predictor, boxes_xyxy)
    boxes = torch.from_numpy(transform_boxes(boxes_xyxy, IMAGE_SHAPE))
    low, iou = FoldedBoxDecoder(*sam_decoder, embedding, tile_rows=tile_rows).decode(boxes, chunk=3)
    assert low.shape == ref_low.shape and low.dtype == torch.float32
    assert (low - ref_low).abs().max() < 1e-5
    np.testing.assert_allclose(iou.numpy(), ref_iou, atol=1e-6)

    decoded = decode_boxes(*sam_decoder, embedding, boxes_xyxy)
    assert (decoded.low_res_logits - ref_low).abs().max() < 1e-5
    for k, crop in enumerate(decoded.crops):
        differ = crop.to_full(IMAGE_SHAPE) != ref_masks[k]
        assert (np.abs(ref_logits[k][differ]) < 1e-5).all()


def test_stability_score_matches_segment_anything(predictor, embedding, sam_decoder):
    from segment_anything.utils.amg import calculate_stability_score

    boxes = torch.from_numpy(predictor.transform.apply_boxes(BOXES, IMAGE_SHAPE))
    with torch.no_grad():
        logits, _, _ = predictor.predict_torch(None, None, boxes, multimask_output=False, return_logits=True)
    expected = calculate_stability_score(logits[:, 0], 0.0, 1.0).numpy()
    decoded = decode_boxes(*sam_decoder, embedding, BOXES, exact=True)
    np.testing.assert_allclose(decoded.stability, expected, rtol=1e-6)


def test_point_prompts_equal_sam_predict(predictor, embedding, sam_decoder):
    points = np.array([[60.0, 70.0], [100.0, 30.0]], dtype=np.float32)
    objects = [
        ObjectPrompt(points[:1], np.array([1])),
        ObjectPrompt(points, np.array([1, 0])),
        ObjectPrompt(points[:1], np.array([1]), box=BOXES[0]),
    ]
    decoded = decode_object_prompts(*sam_decoder, embedding, objects)
    single, single_iou, _ = predictor.predict(points[:1], np.array([1]), multimask_output=True)
    best = int(single_iou.argmax())
    np.testing.assert_array_equal(decoded.crops[0].to_full(IMAGE_SHAPE), single[best])
    pair, _, _ = predictor.predict(points, np.array([1, 0]), multimask_output=False)
    np.testing.assert_array_equal(decoded.crops[1].to_full(IMAGE_SHAPE), pair[0])
    with_box, _, _ = predictor.predict(points[:1], np.array([1]), box=BOXES[0], multimask_output=False)
    np.testing.assert_array_equal(decoded.crops[2].to_full(IMAGE_SHAPE), with_box[0])


def test_no_boxes_gives_no_masks(embedding, sam_decoder):
    decoded = decode_boxes(*sam_decoder, embedding, np.zeros((0, 4), np.float32))
    assert len(decoded) == 0 and decoded.predicted_iou.shape == (0,)


def test_crop_round_trip_and_empty_mask():
    mask = np.zeros((30, 40), bool)
    mask[5:9, 10:25] = True
    mask[20, 3] = True
    crop = crop_to_content(mask)
    assert (crop.top, crop.left, crop.mask.shape) == (5, 3, (16, 22))
    assert crop.bbox_xyxy == (3, 5, 25, 21)
    np.testing.assert_array_equal(crop.to_full(mask.shape), mask)
    assert crop.area == 61 and crop.nbytes == (16 * 22 + 7) // 8  # bit-packed, 8 pixels a byte
    empty = crop_to_content(np.zeros((30, 40), bool))
    assert empty.area == 0 and not empty.to_full((30, 40)).any()


def test_chunked_upsampling_equals_one_batch():
    torch.manual_seed(0)
    low = torch.randn(7, 1, 256, 256) * 3
    full = upsample_logits(low, (683, 1024), (300, 450))[:, 0] > 0
    crops, _ = logits_to_crops(low, (683, 1024), (300, 450), chunk_pixels=300 * 450 * 2)
    for k, crop in enumerate(crops):
        np.testing.assert_array_equal(crop.to_full((300, 450)), full[k].numpy())


def _crop(top, left, h, w):
    return MaskCrop(top, left, np.ones((h, w), bool))


def test_larger_masks_are_painted_first_so_small_ones_stay_visible():
    crops = [_crop(2, 2, 3, 3), _crop(0, 0, 10, 10), _crop(4, 4, 3, 3)]
    labels, visible = assemble_labels(crops, (12, 12))
    assert labels.dtype == np.int32
    assert list(paint_order([9, 100, 9])) == [1, 0, 2]
    assert labels[3, 3] == 1 and labels[5, 5] == 3 and labels[9, 9] == 2 and labels[11, 11] == 0
    assert labels[4, 4] == 3  # equal areas: the later prompt is painted later
    np.testing.assert_array_equal(visible, [(labels == i).sum() for i in (1, 2, 3)])


def test_merge_policies_never_lose_existing_labels():
    existing = np.zeros((4, 6), np.uint8)
    existing[0, :3] = 7
    new = np.zeros((4, 6), np.int32)
    new[0, 2:5] = 1
    new[3, 0] = 2
    merged, id_map = merge_labels(existing, new, "new_ids")
    assert id_map == {1: 8, 2: 9}
    assert merged[0].tolist() == [7, 7, 8, 8, 8, 0] and merged[3, 0] == 9
    filled, _ = merge_labels(existing, new, "fill_background")
    assert filled[0].tolist() == [7, 7, 7, 8, 8, 0]
    overwritten, id_map = merge_labels(existing, new, "overwrite")
    assert id_map == {1: 1, 2: 2} and overwritten[0].tolist() == [7, 7, 1, 1, 1, 0]
    assert existing[0].tolist() == [7, 7, 7, 0, 0, 0]  # input untouched


def test_merge_upcasts_instead_of_wrapping():
    existing = np.full((2, 2), 255, np.uint8)
    new = np.array([[0, 1], [2, 0]], np.int32)
    merged, id_map = merge_labels(existing, new, "new_ids")
    assert merged.dtype == np.int32 and id_map == {1: 256, 2: 257}
    assert merged.tolist() == [[255, 256], [257, 255]]


def test_merge_rejects_mismatched_shapes_and_unknown_policy():
    with pytest.raises(InputError, match=r"shape \(3, 3\) but the result has shape \(2, 2\)"):
        merge_labels(np.zeros((3, 3), np.int32), np.zeros((2, 2), np.int32))
    with pytest.raises(InputError, match="id policy must be one of"):
        merge_labels(np.zeros((2, 2), np.int32), np.zeros((2, 2), np.int32), "replace")


def _many_boxes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    wh = rng.uniform(3, 120, (n, 2))
    xy = rng.uniform(0, 1, (n, 2)) * (np.array(IMAGE_SHAPE[::-1]) - wh)
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@pytest.mark.parametrize("chunk", [1, 7, 16])
def test_exact_decoder_is_bitwise_equal_to_reference_batches(embedding, sam_decoder, chunk):
    from napari_mobilesamv2.decode.prompted import decode_box_logits
    from napari_mobilesamv2.decode.reference import reference_box_logits

    boxes = _many_boxes(24)
    ref_low, ref_iou = reference_box_logits(*sam_decoder, embedding, boxes, batch_size=chunk)
    low, iou = decode_box_logits(*sam_decoder, embedding, boxes, batch_size=chunk, exact=True)
    assert torch.equal(low, ref_low) and torch.equal(iou, ref_iou)


def test_batch_size_changes_logits_only_by_rounding(embedding, sam_decoder):
    """Matrix kernels round differently for other batch sizes: logits move by ~1e-7, masks only there."""
    from napari_mobilesamv2.decode.prompted import decode_box_logits
    from napari_mobilesamv2.decode.reference import reference_box_logits

    boxes = _many_boxes(24)
    ref_low, _ = reference_box_logits(*sam_decoder, embedding, boxes, batch_size=24)
    low, _ = decode_box_logits(*sam_decoder, embedding, boxes, batch_size=7)
    assert (low - ref_low).abs().max() < 1e-5
    flipped = (low > 0) != (ref_low > 0)
    assert (ref_low[flipped].abs() < 1e-5).all()


def test_out_of_memory_halves_the_batch(embedding, sam_decoder, monkeypatch, caplog):
    from napari_mobilesamv2.decode.folded import FoldedBoxDecoder
    from napari_mobilesamv2.decode.prompted import decode_box_logits

    boxes = _many_boxes(10, seed=1)
    expected, _ = decode_box_logits(*sam_decoder, embedding, boxes, batch_size=2)
    real_chunk = FoldedBoxDecoder._decode_chunk
    sizes = []

    def small_gpu(self, chunk_boxes):
        sizes.append(len(chunk_boxes))
        if len(chunk_boxes) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_chunk(self, chunk_boxes)

    monkeypatch.setattr(FoldedBoxDecoder, "_decode_chunk", small_gpu)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    low, _ = decode_box_logits(*sam_decoder, embedding, boxes, batch_size=16)
    assert torch.equal(low, expected)
    assert sizes[:3] == [10, 8, 4] and max(sizes[3:]) == 2
    assert "retrying with batches of 2" in caplog.text


def test_out_of_memory_with_single_boxes_gives_advice(embedding, sam_decoder, monkeypatch):
    from napari_mobilesamv2.decode.folded import FoldedBoxDecoder
    from napari_mobilesamv2.decode.prompted import decode_box_logits

    def no_memory(self, chunk_boxes):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(FoldedBoxDecoder, "_decode_chunk", no_memory)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    with pytest.raises(InputError, match="use device='cpu'"):
        decode_box_logits(*sam_decoder, embedding, _many_boxes(3), batch_size=4)


def _blob_logits(n: int, seed: int = 0) -> torch.Tensor:
    """Logits shaped like a trained decoder's: a positive blob, strongly negative background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    low = torch.empty(n, 1, 256, 256)
    for k in range(n):
        cy, cx = (torch.rand(2, generator=g) * 256).tolist()
        radius = 2 + float(torch.rand(1, generator=g)) * 40
        blob = 8 * (1 - ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt() / radius) + 0.3 * torch.randn(256, 256, generator=g)
        low[k, 0] = torch.where(blob < -3, torch.full_like(blob, -12.0), blob)
    return low


@pytest.mark.parametrize("input_size, original_size", [((683, 1024), (700, 1050)), ((1024, 768), (2000, 1500)),
                                                       ((1024, 1024), (37, 37))])
def test_windowed_upsampling_equals_full_upsampling(input_size, original_size):
    from napari_mobilesamv2.decode.masks import stability_scores

    low = _blob_logits(30, seed=len(input_size) + original_size[0])
    full = upsample_logits(low, input_size, original_size)[:, 0]
    crops, stability = logits_to_crops(low, input_size, original_size)
    np.testing.assert_allclose(stability, stability_scores(full).numpy(), atol=1e-6)
    for k, crop in enumerate(crops):
        differs = crop.to_full(original_size) != (full[k] > 0).numpy()
        assert (full[k].numpy()[differs].__abs__() < 1e-5).all()
    assert sum((c.to_full(original_size) != (full[k] > 0).numpy()).sum() for k, c in enumerate(crops)) == 0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_device_post_processing_equals_the_full_resolution_path(device):
    from napari_mobilesamv2.decode.masks import _crops_on_device

    torch.manual_seed(3)
    low_res = torch.randn(7, 1, 256, 256) * 4
    low_res[2] = -10.0  # an empty mask
    input_size, original_size = (1024, 768), (200, 150)
    expected, expected_stability = logits_to_crops(low_res, input_size, original_size, window_fraction=0.0)
    found, stability = _crops_on_device(low_res.to(device), input_size, original_size, chunk_pixels=3 * 200 * 150)
    np.testing.assert_array_equal(stability, expected_stability)
    assert found[2].shape == (0, 0) and found[2].area == 0
    for mine, theirs in zip(found, expected, strict=True):
        assert (mine.top, mine.left, mine.shape, mine.area) == (theirs.top, theirs.left, theirs.shape, theirs.area)
        np.testing.assert_array_equal(mine.mask, theirs.mask)
