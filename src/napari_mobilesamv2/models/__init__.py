"""Model architectures, weights registry, downloads and strict loaders.

Names are imported on first use: the registry (file names, URLs, hashes) is
readable without loading PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule that defines it
_EXPORTS = {
    **{name: ".build" for name in (
        "IMAGE_ENCODER_BUILDERS", "build_image_encoder", "build_mask_decoder", "build_prompt_encoder",
        "load_image_encoder", "load_prompt_decoder",
    )},
    **{name: ".registry" for name in ("DEFAULT_ENCODER", "ENCODERS", "ENCODER_FILES", "WEIGHT_FILES", "WeightFile")},
    **{name: ".weights" for name in ("load_checked_detector", "load_detector", "pipeline_slots", "resolve_files")},
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
