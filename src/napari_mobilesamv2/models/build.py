"""Registry of model builders and strict loaders for every weights slot.

``build_*`` functions return randomly initialised architectures (used by the
loaders, tests and benchmarks); ``load_*`` functions read a file in its official
format into that architecture and refuse anything that does not fit exactly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

from ..errors import CheckpointError
from .checkpoints import load_strict, read_state_dict, take_prefixed

IMAGE_SIZE = 1024
EMBED_DIM = 256
EMBED_SIZE = 64

_VIT_SPECS = {  # embed dim, depth, heads, global attention blocks
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
}
# TinyViT's ImageNet classifier is part of the architecture but unused by SAM.
_TINY_VIT_CLASSIFIER = ("head.", "norm_head.")


def _build_vit(name: str) -> torch.nn.Module:
    embed_dim, depth, heads, global_attn = _VIT_SPECS[name]
    return ImageEncoderViT(
        depth=depth, embed_dim=embed_dim, img_size=IMAGE_SIZE, mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=heads, patch_size=16,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_attn, window_size=14,
        out_chans=EMBED_DIM,
    )


def _build_tiny_vit() -> torch.nn.Module:
    from ultralytics.models.sam.modules.tiny_encoder import TinyViT

    encoder = TinyViT(
        img_size=IMAGE_SIZE, in_chans=3, num_classes=1000, embed_dims=(64, 128, 160, 320),
        depths=(2, 2, 6, 2), num_heads=(2, 4, 5, 10), window_sizes=(7, 7, 14, 7), mlp_ratio=4.0,
        drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0,
        local_conv_size=3, layer_lr_decay=0.8,
    )
    encoder.img_size = IMAGE_SIZE
    return encoder


def _build_efficientvit_l2() -> torch.nn.Module:
    from .efficientvit import build_efficientvit_l2_encoder

    encoder = build_efficientvit_l2_encoder()
    encoder.img_size = IMAGE_SIZE
    return encoder


IMAGE_ENCODER_BUILDERS: dict[str, Callable[[], torch.nn.Module]] = {
    "efficientvit_l2": _build_efficientvit_l2,
    "tiny_vit": _build_tiny_vit,
    "vit_h": partial(_build_vit, "vit_h"),
    "vit_l": partial(_build_vit, "vit_l"),
    "vit_b": partial(_build_vit, "vit_b"),
}

_ENCODER_FORMATS = {
    "efficientvit_l2": "an EfficientViT-L2 SAM encoder checkpoint (l2.pt: {'state_dict': {'image_encoder.*'}})",
    "tiny_vit": "a MobileSAM TinyViT checkpoint (mobile_sam.pt: 'image_encoder.*' keys, or {'model': TinyViT dict})",
    "vit_h": "a SAM ViT-H checkpoint (sam_vit_h_4b8939.pth, or an encoder-only state dict)",
    "vit_l": "a SAM ViT-L checkpoint (sam_vit_l_0b3195.pth, or an encoder-only state dict)",
    "vit_b": "a SAM ViT-B checkpoint (sam_vit_b_01ec64.pth, or an encoder-only state dict)",
}


def build_image_encoder(name: str) -> torch.nn.Module:
    """Randomly initialised image encoder `name` (see ``IMAGE_ENCODER_BUILDERS``), in eval mode."""
    if name not in IMAGE_ENCODER_BUILDERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(IMAGE_ENCODER_BUILDERS)}")
    return IMAGE_ENCODER_BUILDERS[name]().eval()


def encoder_state_from_checkpoint(name: str, raw: dict) -> dict:
    """Pick the image-encoder tensors out of a checkpoint in any of its official layouts."""
    if name == "efficientvit_l2" and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if name == "tiny_vit" and isinstance(raw.get("model"), dict):
        raw = raw["model"]
    encoder_keys = take_prefixed(raw, "image_encoder.")
    return encoder_keys if encoder_keys else raw


def load_image_encoder(name: str, path: str | os.PathLike) -> torch.nn.Module:
    """Build encoder `name` and load its weights strictly from `path`.

    Accepts the official layouts: full SAM checkpoints (``image_encoder.*`` keys),
    encoder-only state dicts, ``{'model': ...}`` for TinyViT and
    ``{'state_dict': ...}`` for EfficientViT-L2.
    """
    expected = _ENCODER_FORMATS[name]
    raw = read_state_dict(path, expected)
    state = encoder_state_from_checkpoint(name, raw)
    encoder = build_image_encoder(name)
    ignore = _TINY_VIT_CLASSIFIER if name == "tiny_vit" else ()
    return load_strict(encoder, state, source=path, expected=expected, ignore_missing=ignore).eval()


def build_prompt_encoder() -> PromptEncoder:
    """SAM's standard prompt encoder (256-d, 64x64 embedding, 1024 input)."""
    return PromptEncoder(
        embed_dim=EMBED_DIM, image_embedding_size=(EMBED_SIZE, EMBED_SIZE),
        input_image_size=(IMAGE_SIZE, IMAGE_SIZE), mask_in_chans=16,
    ).eval()


def build_mask_decoder() -> MaskDecoder:
    """SAM's standard mask decoder (two-way transformer depth 2, MLP 2048, 8 heads, 3+1 masks)."""
    return MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048, num_heads=8),
        transformer_dim=EMBED_DIM, iou_head_depth=3, iou_head_hidden_dim=256,
    ).eval()


_DECODER_FORMAT = (
    "MobileSAMv2's Prompt_guided_Mask_Decoder.pt ({'PromtEncoder': ..., 'MaskDecoder': ...}) "
    "or a SAM checkpoint with prompt_encoder.* and mask_decoder.* keys"
)


def load_prompt_decoder(path: str | os.PathLike) -> tuple[PromptEncoder, MaskDecoder]:
    """Load the prompt encoder and mask decoder, strictly.

    Reads MobileSAMv2's ``Prompt_guided_Mask_Decoder.pt`` (keys ``'PromtEncoder'`` and
    ``'MaskDecoder'``, spelt as released) or any SAM checkpoint (``sam_vit_*.pth``,
    ``mobile_sam.pt``), whose ``prompt_encoder.*``/``mask_decoder.*`` are the same modules.
    """
    raw = read_state_dict(path, _DECODER_FORMAT)
    if "PromtEncoder" in raw and "MaskDecoder" in raw:
        prompt_state, mask_state = raw["PromtEncoder"], raw["MaskDecoder"]
    else:
        prompt_state = take_prefixed(raw, "prompt_encoder.")
        mask_state = take_prefixed(raw, "mask_decoder.")
        if not prompt_state or not mask_state:
            shown = ", ".join(list(raw)[:5])
            raise CheckpointError(f"{path} has neither layout (its first keys: {shown}); expected {_DECODER_FORMAT}")
    prompt_encoder = load_strict(build_prompt_encoder(), prompt_state, source=path, expected=_DECODER_FORMAT)
    mask_decoder = load_strict(build_mask_decoder(), mask_state, source=path, expected=_DECODER_FORMAT)
    return prompt_encoder.eval(), mask_decoder.eval()
