"""Keep torch from loading Triton into a process that already runs Mesa's LLVM.

Triton's compiler library carries its own copy of LLVM. When a process has already
loaded the system ``libLLVM`` globally, as Mesa's OpenGL drivers do (software
rendering, Intel/AMD GPUs; so any napari window on such a machine), loading Triton
crashes the process with a segmentation fault. ``import torchvision`` imports
``torch._dynamo``, which imports Triton when it is installed, so opening the
napari plugin after the viewer would crash napari.

Triton only serves ``torch.compile``; this package runs eager PyTorch. Where napari runs
(when :mod:`napari_mobilesamv2.napari` is imported, or the core package into a process
that imported napari) an import hook is installed: when torch or Triton is first imported
into a process that has libLLVM loaded at that moment, Triton is made unimportable (torch
then runs without it). A script that imports the package before it opens a window is
covered too; processes without libLLVM are left alone.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys

log = logging.getLogger(__name__)


def block_triton_if_llvm_loaded() -> bool:
    """Make ``import triton`` fail whenever libLLVM is mapped at that moment; True when installed.

    The check is made when Triton is imported, not now, so a window opened later (a script
    that imports this package first) is covered too.
    """
    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return False
    if not any(isinstance(finder, _TritonGate) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TritonGate())
    return True


def _llvm_loaded() -> bool:
    try:
        with open("/proc/self/maps") as maps:
            return any("libLLVM" in line for line in maps)
    except OSError:
        return False


class _TritonGate(importlib.abc.MetaPathFinder):
    """Blocks Triton when torch (which imports it) or Triton itself is imported in a process
    that has libLLVM loaded at that moment; finds nothing itself."""

    def find_spec(self, name, path=None, target=None):
        if name in ("torch", "triton") and "triton" not in sys.modules and _llvm_loaded():
            sys.modules["triton"] = None  # type: ignore[assignment]  # import triton -> ImportError
            log.info("libLLVM is loaded (Mesa OpenGL): Triton disabled to avoid a crash; torch runs eagerly")
        return None
