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
from .pipeline import MobileSAMv2
from .prompts.user import objects_from_prompts
from .results import Segmentation

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ImageEmbedding", "InputError", "IntegrityError", "MobileSAMv2", "MobileSAMv2Error",
    "ObjectPrompt", "OutputError", "Segmentation", "UntrustedWeightsError", "UntrustedWeightsWarning", "WeightsUnavailableError", "objects_from_prompts",
    "to_rgb_uint8",
]
