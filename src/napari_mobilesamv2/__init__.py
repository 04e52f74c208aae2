"""napari-mobilesamv2: MobileSAMv2 segment everything / anything, headless and in napari."""

from . import _llvm_guard  # noqa: F401  (first, before torch: napari on Mesa OpenGL, see the module)

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
from .pipeline import MobileSAMv2, Segmentation, objects_from_prompts
from .evaluation import (
    MatchingResult, ProposalRecall, evaluate_label_files, evaluate_proposal_files, match_labels, proposal_recall,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ImageEmbedding", "InputError", "IntegrityError", "MobileSAMv2", "MobileSAMv2Error",
    "ObjectPrompt", "OutputError", "Segmentation", "UntrustedWeightsError", "UntrustedWeightsWarning", "WeightsUnavailableError", "objects_from_prompts",
    "to_rgb_uint8",
    "MatchingResult", "ProposalRecall", "evaluate_label_files", "evaluate_proposal_files", "match_labels",
    "proposal_recall",
]
