"""Which weights files a pipeline uses, and the trust policy for the pickled detector.

State dicts (encoders, decoder) are read with ``weights_only=True`` and cannot run code.
The detector file is a full pickle: it is read once into memory, those bytes are hashed,
and the same bytes are unpickled only if their sha256 is the known ``ObjectAwareModel.pt``'s
or the user said they trust the file. Nothing is read from disk between the check and
the unpickling.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import (
    CheckpointError,
    InputError,
    UntrustedWeightsError,
    UntrustedWeightsWarning,
    WeightsUnavailableError,
)
from . import download
from .registry import DECODER_FILE, DETECTOR_FILE, ENCODER_FILES, weight_file

#: A slot's file: the path the user gave (``None``: the registry file) and the registry file's name.
SlotRequest = tuple[str | os.PathLike | None, str]


def pipeline_slots(
    encoder: str,
    encoder_weights: str | os.PathLike | None = None,
    decoder_weights: str | os.PathLike | None = None,
    detector_weights: str | os.PathLike | None = None,
    *,
    with_detector: bool = True,
) -> dict[str, SlotRequest]:
    """The slots of a MobileSAMv2 pipeline with `encoder`: given paths, else registry files.

    Raises
    ------
    InputError
        `encoder` is not one of the registry's encoders.
    """
    if encoder not in ENCODER_FILES:
        raise InputError(f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODER_FILES)}")
    slots = {"encoder": (encoder_weights, ENCODER_FILES[encoder]), "decoder": (decoder_weights, DECODER_FILE)}
    if with_detector:
        slots["detector"] = (detector_weights, DETECTOR_FILE)
    return slots


def resolve_files(slots: Mapping[str, SlotRequest], *, download_missing: bool = True) -> dict[str, Path]:
    """Path of each slot's file: the one given, else the registry file in the cache.

    Registry files of state dicts are verified against their sha256 here; pickled ones
    (the detector) are not read here, but hashed from the bytes that get loaded
    (:func:`load_checked_detector`).

    Parameters
    ----------
    slots : mapping of str to (path-like or None, str)
        Slot name -> (the user's file or ``None``, the registry file's name).
    download_missing : bool
        Download registry files that are not in the cache.

    Returns
    -------
    dict of str to pathlib.Path
        The file of each slot.

    Raises
    ------
    InputError
        A given file does not exist.
    WeightsUnavailableError
        Registry files are missing and cannot be downloaded (all of them are named).
    IntegrityError
        A cached state-dict file does not have its sha256.
    """
    paths, missing = {}, []
    for slot, (given, registry_name) in slots.items():
        if given is not None:
            if not os.path.isfile(given):
                raise InputError(f"{slot} weights {given} do not exist (or are not a file)")
            paths[slot] = Path(given)
            continue
        try:
            paths[slot] = download.fetch(registry_name, download=download_missing,
                                         check=not weight_file(registry_name).pickled)
        except WeightsUnavailableError:
            missing.append(registry_name)
    if missing:
        raise WeightsUnavailableError(download.missing_message(missing))
    return paths


def load_detector(path: str | os.PathLike, *, trusted: bool) -> torch.nn.Module:
    """Load the object-aware detector pickle, but only when `trusted` is True.

    The file is a full Python pickle (it can run code when loaded). Callers decide
    trust first: a registry file whose sha256 matches, or an explicit user opt-in
    (:func:`load_checked_detector` does both from the bytes it loads).
    """
    _check_detector_path(path)
    if not trusted:
        raise _untrusted(path)
    return _unpickle_detector(_read_detector(path), path)


def load_checked_detector(
    path: str | os.PathLike, *, trust_weights: bool = False, cached: bool = False
) -> torch.nn.Module:
    """Read the detector once, hash those bytes and unpickle them if known or trusted.

    Parameters
    ----------
    path : path-like
        The detector file.
    trust_weights : bool
        Unpickle it even if its sha256 is not the known one (with an
        :class:`UntrustedWeightsWarning`).
    cached : bool
        `path` is the registry's cached copy: a mismatching sha256 is an
        :class:`IntegrityError` and the file is deleted (it would be downloaded again).

    Raises
    ------
    UntrustedWeightsError
        Unknown sha256 and `trust_weights` is False; nothing was unpickled.
    IntegrityError
        `cached` and the file does not have its published or pinned sha256.
    CheckpointError
        Missing, unreadable or not a detector checkpoint.
    """
    _check_detector_path(path)
    data = _read_detector(path)
    actual = hashlib.sha256(data).hexdigest()
    if cached:
        download.check_sha256(DETECTOR_FILE, path, actual)
    if not download.is_known_sha256(DETECTOR_FILE, actual):
        if not trust_weights:
            raise _untrusted(path)
        warnings.warn(UntrustedWeightsWarning(
            f"loading {path} although its sha256 is not the known {DETECTOR_FILE}'s, because you trust it: "
            "a pickle can run arbitrary code, so use only files from a source you trust"
        ), stacklevel=3)
    return _unpickle_detector(data, path)


def _check_detector_path(path: str | os.PathLike) -> None:
    if not os.path.isfile(path):
        problem = "is a directory" if os.path.isdir(path) else "does not exist"
        raise CheckpointError(f"{path} {problem}; expected the detector file {DETECTOR_FILE}")


def _read_detector(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise CheckpointError(
            f"{path} cannot be read ({error.strerror or error}); expected the detector file {DETECTOR_FILE}"
        ) from error


def _untrusted(path: str | os.PathLike) -> UntrustedWeightsError:
    return UntrustedWeightsError(
        f"{path} is a pickled detector checkpoint whose sha256 is not a known {DETECTOR_FILE}; "
        "loading a pickle can run arbitrary code. If you trust this file, pass "
        "--trust-weights (CLI) or trust_weights=True (Python), or tick 'Trust weights' in napari."
    )


def _unpickle_detector(data: bytes, path: str | os.PathLike) -> torch.nn.Module:
    from .detector import load_object_aware_model

    return load_object_aware_model(data, source=path)
