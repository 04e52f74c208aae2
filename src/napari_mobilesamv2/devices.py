"""Running a pipeline step on the chosen device, with a CPU fallback for Apple MPS gaps."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import TypeVar

import torch

log = logging.getLogger(__name__)
Result = TypeVar("Result")


class CpuFallback:
    """Runs steps on their device; where MPS lacks an operator, runs that step on the CPU.

    PyTorch raises ``NotImplementedError`` for operators MPS does not implement. The
    step is then repeated with CPU copies of its modules (made once and kept) and a
    warning is logged; other devices re-raise.
    """

    def __init__(self) -> None:
        self._cpu_copies: dict[int, torch.nn.Module] = {}

    def run(
        self, step: str, device: torch.device, function: Callable[..., Result], *modules: torch.nn.Module
    ) -> Result:
        """Call ``function(*modules, device)``; on an MPS operator gap, with CPU copies and ``cpu``."""
        try:
            return function(*modules, device)
        except NotImplementedError as exc:
            if device.type != "mps":
                raise
            log.warning("%s: an operator is missing on MPS (%s); running this step on the CPU",
                        step, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return function(*(self._on_cpu(m) for m in modules), torch.device("cpu"))

    def _on_cpu(self, module: torch.nn.Module) -> torch.nn.Module:
        if id(module) not in self._cpu_copies:
            self._cpu_copies[id(module)] = copy.deepcopy(module).cpu()
        return self._cpu_copies[id(module)]
