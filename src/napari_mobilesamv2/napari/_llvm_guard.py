"""Keep torch from loading Triton into a process that already runs Mesa's LLVM.

Triton's compiler library carries its own copy of LLVM. When a process has already
loaded the system ``libLLVM`` globally, as Mesa's OpenGL drivers do (software
rendering, Intel/AMD GPUs; so any napari window on such a machine), loading Triton
crashes the process with a segmentation fault. ``import torchvision`` imports
``torch._dynamo``, which imports Triton when it is installed, so opening the
napari plugin after the viewer would crash napari.

Triton only serves ``torch.compile``; this package runs eager PyTorch, so in such
a process Triton is made unimportable (torch then runs without it). Processes
without libLLVM (scripts before a window exists) are left alone. The check runs
only where napari runs: when :mod:`napari_mobilesamv2.napari` is imported, and
when the core package is imported into a process that already imported napari
(the plugin's modules import the core package first, before torch).
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)


def block_triton_if_llvm_loaded() -> bool:
    """Make ``import triton`` fail if libLLVM is already mapped; True when it did."""
    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/maps") as maps:
            llvm_loaded = any("libLLVM" in line for line in maps)
    except OSError:
        return False
    if llvm_loaded:
        sys.modules["triton"] = None  # type: ignore[assignment]  # import triton -> ImportError
        log.info("libLLVM is loaded (Mesa OpenGL): Triton disabled to avoid a crash; torch runs eagerly")
    return llvm_loaded

