"""napari-mobilesamv2: MobileSAMv2 segment everything / anything, headless and in napari.

Names are imported on first use, so the command line starts without loading
PyTorch for ``--help`` and ``--version``.
"""

from __future__ import annotations

import importlib
import sys as _sys
from typing import Any

if "napari" in _sys.modules:  # inside napari (the plugin): its graphics workaround goes before torch
    from .napari._llvm_guard import block_triton_if_llvm_loaded

    block_triton_if_llvm_loaded()

__version__ = "0.1.0"

#: public name -> submodule that defines it
_EXPORTS = {
    "ObjectPrompt": ".decode.prompted",
    "ImageEmbedding": ".embedding",
    **{name: ".errors" for name in (
        "CheckpointError", "InputError", "IntegrityError", "MobileSAMv2Error", "OutputError",
        "UntrustedWeightsError", "UntrustedWeightsWarning", "WeightsUnavailableError",
    )},
    **{name: ".evaluation" for name in (
        "MatchingResult", "ProposalRecall", "evaluate_label_files", "evaluate_proposal_files", "match_labels",
        "proposal_recall",
    )},
    "to_rgb_uint8": ".imaging",
    "EverythingOptions": ".options",
    "ImageOptions": ".options",
    "ModelOptions": ".options",
    "PropagationOptions": ".options",
    "MobileSAMv2": ".pipeline",
    "objects_from_prompts": ".prompts.user",
    "SegmentationPipeline": ".protocols",
    "Segmentation": ".results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
