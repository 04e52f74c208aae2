"""Safe reading of state-dict checkpoints and strict loading into modules."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError

_MAX_LISTED = 8


def read_state_dict(path: str | os.PathLike, expected: str) -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (no code can run).

    Parameters
    ----------
    path : path-like
        The checkpoint file.
    expected : str
        What the slot expects, used in error messages (e.g. "a SAM ViT-H checkpoint").

    Raises
    ------
    CheckpointError
        Missing, truncated, non-PyTorch or code-carrying (full pickle) files.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; expected {expected} file")
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; expected {expected}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for files that are not checkpoints
        if isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in str(exc).lower():
            raise CheckpointError(
                f"{path} is not a plain state dict (it holds pickled Python objects); expected {expected}"
            ) from None
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({_first_line(exc)}); it may be "
            f"truncated or another kind of file; expected {expected}"
        ) from None
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a dict; expected {expected}")
    return dict(data)


def take_prefixed(state: Mapping, prefix: str) -> dict:
    """Entries whose key contains `prefix`, with everything up to and including it removed.

    Matches keys such as ``image_encoder.x`` and ``module.image_encoder.x``, as the
    official MobileSAMv2 loader does.
    """
    taken = {}
    for key, value in state.items():
        index = key.find(prefix)
        if index != -1 and (index == 0 or key[index - 1] == "."):
            taken[key[index + len(prefix):]] = value
    return taken


def load_strict(
    module: torch.nn.Module,
    state: Mapping,
    *,
    source: str | os.PathLike,
    expected: str,
    ignore_missing: tuple[str, ...] = (),
) -> torch.nn.Module:
    """Load `state` into `module`, insisting on the same keys and shapes.

    Parameters
    ----------
    module : torch.nn.Module
        The freshly built architecture.
    state : mapping
        Tensors by parameter/buffer name.
    source : path-like
        Where the tensors came from, for messages.
    expected : str
        What the file should have been, for messages.
    ignore_missing : tuple of str
        Key prefixes that may be absent (e.g. an unused classifier head).

    Raises
    ------
    CheckpointError
        Listing missing keys, unexpected keys and shape mismatches.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{source} does not fit: expected {expected}; found a {type(state).__name__} where tensors should be"
        )
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(ignore_missing)]
    unexpected = [k for k in state if k not in own]
    not_tensor = [f"{k} ({type(state[k]).__name__})" for k in own if k in state and not torch.is_tensor(state[k])]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in state and torch.is_tensor(state[k]) and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong_shape or not_tensor:
        parts = [f"{source} does not fit: expected {expected}."]
        groups = (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape),
                  ("non-tensor", not_tensor))
        for label, keys in groups:
            if keys:
                listed = ", ".join(keys[:_MAX_LISTED]) + (", ..." if len(keys) > _MAX_LISTED else "")
                parts.append(f"{len(keys)} {label} keys: {listed}.")
        raise CheckpointError(" ".join(parts))
    module.load_state_dict({k: v for k, v in state.items()}, strict=not ignore_missing)
    return module


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
