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
from .evaluation import (
    MatchingResult,
    ProposalRecall,
    evaluate_label_files,
    evaluate_proposal_files,
    match_labels,
    proposal_recall,
)
from .options import EverythingOptions, ImageOptions, ModelOptions
from .pipeline import MobileSAMv2
from .prompts.user import objects_from_prompts
from .protocols import SegmentationPipeline
from .results import Segmentation

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "EverythingOptions", "ImageEmbedding", "ImageOptions", "InputError", "IntegrityError",
    "MatchingResult", "MobileSAMv2", "MobileSAMv2Error", "ModelOptions", "ObjectPrompt", "OutputError",
    "ProposalRecall", "Segmentation", "SegmentationPipeline", "UntrustedWeightsError", "UntrustedWeightsWarning",
    "WeightsUnavailableError", "evaluate_label_files", "evaluate_proposal_files", "match_labels",
    "objects_from_prompts", "proposal_recall", "to_rgb_uint8",
]
