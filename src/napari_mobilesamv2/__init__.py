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

