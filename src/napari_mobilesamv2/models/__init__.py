"""Model architectures, weights registry, downloads and strict loaders."""

from .build import (
    IMAGE_ENCODER_BUILDERS,
    build_image_encoder,
    build_mask_decoder,
    build_prompt_encoder,
    load_image_encoder,
    load_prompt_decoder,
)
from .registry import DEFAULT_ENCODER, ENCODER_FILES, ENCODERS, WEIGHT_FILES, WeightFile
from .weights import load_checked_detector, load_detector, pipeline_slots, resolve_files

__all__ = [
    "DEFAULT_ENCODER", "ENCODERS", "ENCODER_FILES", "IMAGE_ENCODER_BUILDERS", "WEIGHT_FILES", "WeightFile",
    "build_image_encoder", "build_mask_decoder", "build_prompt_encoder", "load_checked_detector", "load_detector",
    "load_image_encoder", "load_prompt_decoder", "pipeline_slots", "resolve_files",
]
