"""Checkpoint formats: each official layout loads strictly; wrong files give clear errors."""

from __future__ import annotations

import importlib

import pytest
import torch

from napari_mobilesamv2.errors import CheckpointError, UntrustedWeightsError
from napari_mobilesamv2.models import (
    build_image_encoder,
    build_mask_decoder,
    build_prompt_encoder,
    load_detector,
    load_image_encoder,
    load_prompt_decoder,
)

from .conftest import DETECTOR_FIXTURE, seeded


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def _same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def tiny_vit():
    return seeded(lambda: build_image_encoder("tiny_vit"), 10)


@pytest.mark.parametrize("name", ["vit_h", "vit_l", "vit_b"])
def test_vit_architecture_matches_segment_anything(name):
    """Our ViT builders have exactly segment-anything's keys and shapes (built on the meta device)."""
    sam_builders = importlib.import_module("segment_anything.build_sam")
    with torch.device("meta"):
        reference = getattr(sam_builders, f"build_sam_{name}")().image_encoder.state_dict()
        ours = build_image_encoder(name).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.items()}


def test_vit_b_loads_from_full_sam_checkpoint_and_encoder_only_dict(tmp_path):
    encoder = seeded(lambda: build_image_encoder("vit_b"), 11)
    full = _prefixed(encoder.state_dict(), "image_encoder.")
    full.update(_prefixed(build_prompt_encoder().state_dict(), "prompt_encoder."))
    full.update(_prefixed(build_mask_decoder().state_dict(), "mask_decoder."))
    torch.save(full, tmp_path / "sam_vit_b_01ec64.pth")
    torch.save(encoder.state_dict(), tmp_path / "sam_vit_b_encoder.pt")
    for file in ("sam_vit_b_01ec64.pth", "sam_vit_b_encoder.pt"):
        assert _same_tensors(load_image_encoder("vit_b", tmp_path / file), encoder)


def test_tiny_vit_loads_mobile_sam_and_model_wrapped_layouts(tmp_path, tiny_vit):
    full = _prefixed(tiny_vit.state_dict(), "image_encoder.")
    full.update(_prefixed(build_prompt_encoder().state_dict(), "prompt_encoder."))
    full.update(_prefixed(build_mask_decoder().state_dict(), "mask_decoder."))
    torch.save(full, tmp_path / "mobile_sam.pt")
    without_classifier = {k: v for k, v in tiny_vit.state_dict().items() if not k.startswith(("head.", "norm_head."))}
    torch.save({"model": without_classifier}, tmp_path / "mobile_sam_v2_layout.pt")
    assert _same_tensors(load_image_encoder("tiny_vit", tmp_path / "mobile_sam.pt"), tiny_vit)
    loaded = load_image_encoder("tiny_vit", tmp_path / "mobile_sam_v2_layout.pt").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in without_classifier.items())


def test_efficientvit_l2_loads_official_layout(tmp_path):
    encoder = seeded(lambda: build_image_encoder("efficientvit_l2"), 12)
    state = _prefixed(encoder.state_dict(), "image_encoder.")
    state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.zeros(2, 128)
    torch.save({"state_dict": state}, tmp_path / "l2.pt")
    loaded = load_image_encoder("efficientvit_l2", tmp_path / "l2.pt")
    assert len(loaded.state_dict()) == 508
    assert _same_tensors(loaded, encoder)


def test_prompt_guided_decoder_layout_and_sam_checkpoint(tmp_path):
    prompt_encoder, mask_decoder = seeded(build_prompt_encoder, 13), seeded(build_mask_decoder, 14)
    torch.save({"PromtEncoder": prompt_encoder.state_dict(), "MaskDecoder": mask_decoder.state_dict()},
               tmp_path / "Prompt_guided_Mask_Decoder.pt")
    sam_checkpoint = _prefixed(prompt_encoder.state_dict(), "prompt_encoder.")
    sam_checkpoint.update(_prefixed(mask_decoder.state_dict(), "mask_decoder."))
    sam_checkpoint["image_encoder.neck.0.weight"] = torch.zeros(1)
    torch.save(sam_checkpoint, tmp_path / "sam.pth")
    for file in ("Prompt_guided_Mask_Decoder.pt", "sam.pth"):
        loaded_prompt, loaded_mask = load_prompt_decoder(tmp_path / file)
        assert _same_tensors(loaded_prompt, prompt_encoder) and _same_tensors(loaded_mask, mask_decoder)


def test_wrong_file_for_slot_lists_missing_and_unexpected_keys(tmp_path, tiny_vit):
    torch.save({"model": tiny_vit.state_dict()}, tmp_path / "mobile_sam.pt")
    with pytest.raises(CheckpointError, match=r"missing keys: .*unexpected keys: ") as info:
        load_image_encoder("vit_b", tmp_path / "mobile_sam.pt")
    assert "SAM ViT-B" in str(info.value)
    with pytest.raises(CheckpointError, match="neither layout"):
        load_prompt_decoder(tmp_path / "mobile_sam.pt")


def test_shape_mismatch_is_reported(tmp_path):
    prompt_encoder, mask_decoder = build_prompt_encoder(), build_mask_decoder()
    mask_state = mask_decoder.state_dict()
    mask_state["iou_token.weight"] = torch.zeros(2, 256)
    torch.save({"PromtEncoder": prompt_encoder.state_dict(), "MaskDecoder": mask_state}, tmp_path / "d.pt")
    with pytest.raises(CheckpointError, match=r"1 wrong shape keys: iou_token.weight \(2, 256\) != \(1, 256\)"):
        load_prompt_decoder(tmp_path / "d.pt")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a readable PyTorch checkpoint"),
        (b"this is a text file, not weights\n", "not a readable PyTorch checkpoint"),
        ("truncated", "not a readable PyTorch checkpoint"),
    ],
)
def test_unreadable_files(tmp_path, content, message):
    path = tmp_path / "weights.pt"
    if content == "truncated":
        torch.save({"PromtEncoder": build_prompt_encoder().state_dict()}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_prompt_decoder(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_image_encoder("vit_b", tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_image_encoder("vit_b", tmp_path)


def test_pickled_detector_is_refused_as_a_state_dict_and_without_trust():
    with pytest.raises(CheckpointError, match="holds pickled Python objects"):
        load_prompt_decoder(DETECTOR_FIXTURE)
    with pytest.raises(UntrustedWeightsError, match="--trust-weights"):
        load_detector(DETECTOR_FIXTURE, trusted=False)
