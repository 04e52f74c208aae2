"""napari-mobilesamv2: MobileSAMv2 segment everything / anything, headless and in napari."""

import sys as _sys

if "napari" in _sys.modules:  # inside napari (the plugin): its graphics workaround goes before torch
    from .napari._llvm_guard import block_triton_if_llvm_loaded

    block_triton_if_llvm_loaded()

from .decode.prompted import ObjectPrompt
from .embedding import ImageEmbedding
from .errors import (
    CheckpointError,
    InputError,
    IntegrityError,
    MobileSAMv2Error,
    OutputError,
    UntrustedWeightsError,
    UntrustedWeightsWarning,
    WeightsUnavailableError,
)
from .imaging import to_rgb_uint8
from .pipeline import MobileSAMv2
from .prompts.user import objects_from_prompts
from .results import Segmentation

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ImageEmbedding", "InputError", "IntegrityError", "MobileSAMv2", "MobileSAMv2Error",
    "ObjectPrompt", "OutputError", "Segmentation", "UntrustedWeightsError", "UntrustedWeightsWarning", "WeightsUnavailableError", "objects_from_prompts",
    "to_rgb_uint8",
]
