"""A pickle-free detector file: weights plus an architecture description, read with ``weights_only=True``.

``ObjectAwareModel.pt`` is a full Python pickle, so loading it can run code. A fine-tuned detector
is instead saved as a ``torch.save`` dict of plain values and tensors::

    {"format": "napari-mobilesamv2-detector", "format_version": 1,
     "architecture": {"yaml": {...}, "nc": 1, "reg_max": 26, "stride": [8.0, 16.0, 32.0],
                      "names": {0: "object"}},
     "state_dict": {name: float32 tensor, ...},   # unfused: BatchNorms kept, so it can be trained further
     "inference": {"imgsz": 640, "conf": 0.25, "iou": 0.7},   # settings chosen on the training data
     "card": {...}}                                 # how it was made (also written as JSON next to it)

``yaml`` is the Ultralytics model description (layers as ``[from, repeats, module, args]``) with a
``Detect`` head; only known YOLOv8 layers and literal arguments are accepted, so building the
network from a file cannot run code either.
"""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..io import atomic_write
from ..errors import CheckpointError, OutputError, UntrustedWeightsError
from ..models.checkpoints import load_strict
from ..models.detector import (
    REG_MAX,
    ObjectAwareDetector,
    _detect_head_from,
    _fuse_batch_norms,
    _pick_network,
    _unpickle,
)

FORMAT = "napari-mobilesamv2-detector"
FORMAT_VERSION = 1
EXPECTED = f"a {FORMAT} file (weights and architecture of a one-class YOLOv8 detector, written by train_detector)"

# Layers a YOLOv8 detector is made of; every one is an nn.Module class whose constructor takes numbers
ALLOWED_LAYERS = frozenset({"Conv", "DWConv", "C2f", "C3", "Bottleneck", "SPPF", "SPP", "Concat", "nn.Upsample",
                            "Detect"})
ALLOWED_WORDS = frozenset({"nc", "nearest", "bilinear"})  # string arguments Ultralytics resolves itself
_YAML_KEYS = frozenset({"nc", "reg_max", "depth_multiple", "width_multiple", "scales", "scale", "backbone", "head",
                        "ch", "channels"})


def architecture_from_yaml(model_yaml: Mapping) -> dict:
    """The architecture description of a YOLOv8 model yaml with its head made a ``Detect(nc=1, reg_max=26)``.

    Parameters
    ----------
    model_yaml : mapping
        ``model.yaml`` of an Ultralytics model, e.g. MobileSAMv2's segmentation model whose last
        layer is ``[[15, 18, 21], 1, "Segment", ["nc", 32, 256]]``.

    Returns
    -------
    dict
        Plain-typed description: ``yaml`` (layers ending in ``[from, 1, "Detect", ["nc"]]``,
        ``nc`` 1, ``reg_max`` 26), ``nc``, ``reg_max``, ``names``.
    """
    plain = json.loads(json.dumps(dict(model_yaml), default=str))  # tuples -> lists, no foreign objects
    plain = {key: value for key, value in plain.items() if key in _YAML_KEYS}
    head = plain.get("head")
    if not isinstance(head, list) or not head or not isinstance(head[-1], list) or len(head[-1]) != 4:
        raise CheckpointError(f"the model description has no usable head (head={str(head)[:80]})")
    plain["head"][-1] = [head[-1][0], 1, "Detect", ["nc"]]
    plain.update(nc=1, reg_max=REG_MAX)
    plain.pop("channels", None)
    architecture = {"yaml": plain, "nc": 1, "reg_max": REG_MAX, "names": {0: "object"}}
    check_architecture(architecture)
    return architecture


def check_architecture(architecture: object, source: str = "the architecture description") -> None:
    """Refuse descriptions that are not a plain one-class YOLOv8 detector (nothing here can run code).

    Raises
    ------
    CheckpointError
        Unknown keys or layers, non-literal arguments, another head, class count or DFL size.
    """
    def fail(problem: str):
        raise CheckpointError(f"{source} {problem}; expected {EXPECTED}")

    if not isinstance(architecture, Mapping) or not isinstance(architecture.get("yaml"), Mapping):
        fail("is not a dict with a 'yaml' model description")
    if architecture.get("nc") != 1 or architecture.get("reg_max") != REG_MAX:
        fail(f"has nc={architecture.get('nc')} and reg_max={architecture.get('reg_max')}, not 1 and {REG_MAX}")
    model_yaml = architecture["yaml"]
    unknown = sorted(set(map(str, model_yaml)) - _YAML_KEYS)
    if unknown:
        fail(f"has unknown keys {unknown}")
    if model_yaml.get("nc") != 1 or model_yaml.get("reg_max") != REG_MAX or model_yaml.get("ch", 3) != 3:
        fail("describes another class count, DFL size or input channel count")
    for key in ("depth_multiple", "width_multiple"):
        value = model_yaml.get(key, 1.0)
        if not isinstance(value, (int, float)) or not 0 < value <= 4:
            fail(f"has {key}={value!r}")
    if not _is_literal(model_yaml.get("scales", {})) or not isinstance(model_yaml.get("scale", ""), (str, type(None))):
        fail("has non-literal scales")
    layers = [*_layer_list(model_yaml.get("backbone"), fail), *_layer_list(model_yaml.get("head"), fail)]
    for index, (origin, repeats, module, args) in enumerate(layers):
        if module not in ALLOWED_LAYERS:
            fail(f"has layer {index} of type {module!r}; allowed: {', '.join(sorted(ALLOWED_LAYERS))}")
        origins = origin if isinstance(origin, list) else [origin]
        if not origins or not all(type(o) is int and -index - 1 <= o < index for o in origins):
            fail(f"has layer {index} taking input from {origin!r}")
        if type(repeats) is not int or not 1 <= repeats <= 64:
            fail(f"has layer {index} repeated {repeats!r} times")
        if not isinstance(args, list) or not all(_is_literal(a) for a in args):
            fail(f"has layer {index} with arguments {str(args)[:60]} (numbers and {sorted(ALLOWED_WORDS)} only)")
    if layers[-1][2:] != ["Detect", ["nc"]]:
        fail(f"ends in {layers[-1][2]} {layers[-1][3]}, not a Detect head")


def _layer_list(section: object, fail) -> list:
    if not isinstance(section, list) or not all(isinstance(layer, list) and len(layer) == 4 for layer in section):
        fail("has a backbone or head that is not a list of [from, repeats, module, args] layers")
    return section


def _is_literal(value: object) -> bool:
    if value is None or type(value) in (bool, int):
        return True
    if type(value) is float:
        return math.isfinite(value)
    if type(value) is str:
        return value in ALLOWED_WORDS or len(value) <= 2 and value.isalpha()  # words and scale keys such as 'n'
    if type(value) is list:
        return all(_is_literal(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and len(k) <= 2 and _is_literal(v) for k, v in value.items())
    return False


def build_detection_model(architecture: Mapping) -> nn.Module:
    """Build the unfused float32 ``DetectionModel`` an architecture description describes (random weights).

    Raises
    ------
    CheckpointError
        The description is refused by :func:`check_architecture` or Ultralytics cannot build it.
    """
    from ultralytics.nn.tasks import DetectionModel

    check_architecture(architecture)
    try:
        model = DetectionModel(copy.deepcopy(dict(architecture["yaml"])), ch=3, nc=1, verbose=False)
    except Exception as error:  # Ultralytics raises many types for inconsistent layer lists
        raise CheckpointError(f"the architecture description cannot be built ({type(error).__name__}: {error}); "
                              f"expected {EXPECTED}") from None
    model.names = {int(k): str(v) for k, v in dict(architecture.get("names") or {0: "object"}).items()}
    return model.float()


def detector_state(model: nn.Module, architecture: Mapping, *, inference: Mapping | None = None,
                   card: Mapping | None = None) -> dict:
    """The dict :func:`save_detector_state` writes: plain values and float32 tensors only."""
    state = {key: value.detach().to("cpu", copy=True).contiguous() for key, value in model.state_dict().items()}
    state = {key: value.float() if value.is_floating_point() else value for key, value in state.items()}
    description = json.loads(json.dumps({**dict(architecture), "names": None}))
    description["names"] = {int(k): str(v) for k, v in dict(getattr(model, "names", None) or {0: "object"}).items()}
    description["stride"] = [float(s) for s in model.stride]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": description,
        "state_dict": state,
        "inference": json.loads(json.dumps(dict(inference or {}))),
        "card": json.loads(json.dumps(dict(card or {}), default=str)),
    }


def save_detector_state(state: Mapping, path: str | os.PathLike) -> Path:
    """Write a detector dict from :func:`detector_state` atomically (``path.partial``, then renamed).

    Raises
    ------
    OutputError
        It cannot be written (no space, no permission, missing folder); nothing is left at `path`
        from this call and an existing file there is kept as it was.
    """
    path = Path(path)
    try:
        with atomic_write(path) as partial:
            torch.save(dict(state), partial)
    except RuntimeError as error:  # torch reports a full disk as RuntimeError from its zip writer
        raise OutputError(f"cannot write the detector {path}: {_os_reason(error)}; nothing was written") from None
    return path


def write_json_atomically(data: Mapping, path: str | os.PathLike) -> Path:
    """Write `data` as indented JSON through a temporary file (raises OutputError)."""
    path = Path(path)
    with atomic_write(path) as partial:
        partial.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def _os_reason(error: BaseException) -> str:
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(error):
        return "no space left on the device"
    return getattr(error, "strerror", None) or str(error).splitlines()[0][:200]


def read_detector_state(path: str | os.PathLike) -> dict:
    """Read and check a detector file with ``torch.load(weights_only=True)`` (no code can run).

    Returns
    -------
    dict
        The checked content (``architecture``, ``state_dict``, ``inference``, ``card``, ...).

    Raises
    ------
    CheckpointError
        The file is missing, unreadable, a pickle, or not this format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} {'is a directory' if path.is_dir() else 'does not exist'}; expected {EXPECTED}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for files that are not plain checkpoints
        pickled = isinstance(error, pickle.UnpicklingError)
        raise CheckpointError(
            f"{path} is {'a pickle with Python objects' if pickled else 'not a readable PyTorch file'}; "
            f"expected {EXPECTED}"
        ) from None
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is another kind of PyTorch file; expected {EXPECTED}")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {data.get('format_version')}; this version of "
                              f"napari-mobilesamv2 reads version {FORMAT_VERSION}: update napari-mobilesamv2")
    check_architecture(data.get("architecture"), f"{path}: the architecture description")
    if not isinstance(data.get("state_dict"), Mapping):
        raise CheckpointError(f"{path} has no state_dict; expected {EXPECTED}")
    return dict(data)


def is_detector_state(path: str | os.PathLike) -> bool:
    """True if `path` is a readable pickle-free detector file (checked without running any code)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint, a pickle, a folder, missing, ...: not this format
        return False
    return isinstance(data, Mapping) and data.get("format") == FORMAT


def trainable_from_state(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """The unfused float32 ``DetectionModel`` of a detector file, and its architecture description."""
    data = read_detector_state(path)
    model = build_detection_model(data["architecture"])
    load_strict(model, data["state_dict"], source=path, expected=EXPECTED)
    _check_stride(model, data["architecture"], path)
    return model, dict(data["architecture"])


def trainable_from_pickle(path: str | os.PathLike, *, trusted: bool) -> tuple[nn.Module, dict]:
    """The unfused float32 ``DetectionModel`` of an ``ObjectAwareModel.pt`` pickle and its architecture.

    Raises
    ------
    UntrustedWeightsError
        `trusted` is False (unpickling can run code).
    CheckpointError
        The file is not that format.
    """
    if not trusted:
        raise UntrustedWeightsError(
            f"{path} is a pickled detector checkpoint whose sha256 is not a known ObjectAwareModel.pt; "
            "loading a pickle can run arbitrary code. If you trust this file, pass trust_weights=True "
            "(or --trust-weights on the command line)"
        )
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise CheckpointError(f"{path} cannot be read ({error.strerror or error})") from None
    network = _pick_network(_unpickle(data, "cpu", path), path)
    network.model[-1] = _detect_head_from(network.model[-1], path)
    architecture = architecture_from_yaml(getattr(network, "yaml", None) or {})
    model = build_detection_model(architecture)
    weights = {key: value.float() if value.is_floating_point() else value
               for key, value in network.state_dict().items()}
    load_strict(model, weights, source=path, expected="MobileSAMv2's ObjectAwareModel.pt")
    model.names = {0: "object"}
    return model, architecture


def _check_stride(model: nn.Module, architecture: Mapping, path) -> None:
    stored = architecture.get("stride")
    if stored is not None and [float(s) for s in model.stride] != [float(s) for s in stored]:
        raise CheckpointError(f"{path} describes strides {stored} but its layers give {model.stride.tolist()}; "
                              f"expected {EXPECTED}")


def to_inference(model: nn.Module) -> ObjectAwareDetector:
    """A fused float32 eval-mode :class:`ObjectAwareDetector` from a copy of a trainable ``DetectionModel``.

    The BatchNorms are folded as ``load_object_aware_model`` folds them, so the same weights give the
    same boxes whichever file format they came from.
    """
    network = copy.deepcopy(model).float().cpu()
    network = _fuse_batch_norms(network).eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return ObjectAwareDetector(network).eval()


def load_detector_state(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> ObjectAwareDetector:
    """Load a pickle-free detector file as a fused float32 detector in eval mode.

    Reading uses ``torch.load(weights_only=True)`` and the architecture is checked against known
    layers, so no code from the file can run: such files need no trust prompt.

    Parameters
    ----------
    path : path-like
        A file written by :func:`napari_mobilesamv2.training.train_detector` or
        :func:`convert_detector`.
    map_location : str or torch.device
        Device of the returned detector.

    Returns
    -------
    ObjectAwareDetector
        The same type, layout and behaviour as :func:`napari_mobilesamv2.models.detector.load_object_aware_model`
        gives for the pickle.

    Raises
    ------
    CheckpointError
        The file is missing, unreadable, a pickle or another format, or its weights do not fit.
    """
    model, _ = trainable_from_state(path)
    return to_inference(model).to(map_location)


def convert_detector(source: str | os.PathLike, destination: str | os.PathLike, *, trusted: bool) -> Path:
    """Rewrite an ``ObjectAwareModel.pt`` pickle as a pickle-free detector file with the same boxes.

    Parameters
    ----------
    source : path-like
        The pickle (MobileSAMv2's ``ObjectAwareModel.pt`` format).
    destination : path-like
        The file to write (atomically).
    trusted : bool
        Whether `source` may be unpickled (its sha256 is known or the user trusts it).
    """
    model, architecture = trainable_from_pickle(source, trusted=trusted)
    card = {"converted_from": str(Path(source).resolve()), "format_note": "weights unchanged (fp16 -> fp32)"}
    return save_detector_state(detector_state(model, architecture, card=card), destination)
