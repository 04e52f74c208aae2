"""Choosing the device, and running a pipeline step on it with a CPU fallback for Apple MPS gaps."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import TypeVar

import torch

from .errors import InputError

log = logging.getLogger(__name__)
Result = TypeVar("Result")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for a name: ``auto`` picks CUDA, then Apple MPS, then CPU.

    Parameters
    ----------
    device : str or torch.device
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns
    -------
    torch.device

    Raises
    ------
    InputError
        The name is unknown, or names a device this machine does not have.
    """
    name = str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} was asked for but CUDA is not available; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(f"{name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("device 'mps' was asked for but Apple MPS is not available; use --device cpu")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return resolved


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
