"""Load MobileSAMv2's object-aware detector (``ObjectAwareModel.pt``) with the current Ultralytics.

The file is a checkpoint pickled by Ultralytics 8.0.120's trainer: a dict whose ``ema`` (or
``model``) entry is a fp16 ``SegmentationModel`` of a single-class YOLOv8 whose head MobileSAMv2
patched (DFL with 26 bins instead of 16; no mask prototype module). Its module paths from the
8.0.x layout (``ultralytics.yolo.*``) are mapped to the current ones while unpickling, and the
patched ``Segment`` head becomes a current ``Detect`` head sharing the same box and class
branches: the mask coefficients are never used by MobileSAMv2.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError

REG_MAX = 26  # DFL bins of MobileSAMv2's head (stock YOLOv8: 16)

EXPECTED_FORMAT = (
    "a MobileSAMv2 ObjectAwareModel.pt: an Ultralytics 8.0.x YOLOv8 segmentation training checkpoint "
    "(a dict with an 'ema' or 'model' SegmentationModel) with one class and a patched head with "
    f"reg_max={REG_MAX} DFL bins and no mask prototypes"
)

# Ultralytics 8.0.x package layout -> current layout, for unpickling
_LEGACY_MODULES = {
    "ultralytics.yolo.utils": "ultralytics.utils",
    "ultralytics.yolo.cfg": "ultralytics.cfg",
    "ultralytics.yolo.data": "ultralytics.data",
    "ultralytics.yolo.engine": "ultralytics.engine",
    "ultralytics.yolo.v8": "ultralytics.models.yolo",
}


class ObjectAwareDetector(nn.Module):
    """The converted detector: ``forward`` returns only the decoded predictions.

    Parameters
    ----------
    detection_model : ultralytics.nn.tasks.DetectionModel
        Fused network in eval mode whose last layer is a ``Detect(nc=1, reg_max=26)`` head.
    """

    def __init__(self, detection_model: nn.Module):
        super().__init__()
        self.detection_model = detection_model

    @property
    def stride(self) -> torch.Tensor:
        """Strides of the detection levels, e.g. ``tensor([8., 16., 32.])``."""
        return self.detection_model.stride

    @property
    def names(self) -> dict[int, str]:
        """Class names of the checkpoint (one class)."""
        return self.detection_model.names

    @property
    def head(self) -> nn.Module:
        """The current-Ultralytics ``Detect`` head."""
        return self.detection_model.model[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw predictions of a (B, 3, H, W) float batch in [0, 1].

        Returns
        -------
        torch.Tensor
            (B, 4 + nc, A): box centre x, centre y, width, height in network-input pixels, then
            the class scores (after sigmoid), for every anchor A of all levels.
        """
        predictions = self.detection_model(x)
        return predictions[0] if isinstance(predictions, (tuple, list)) else predictions


def load_object_aware_model(
    checkpoint: bytes | str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    source: str | os.PathLike | None = None,
) -> nn.Module:
    """Load ``ObjectAwareModel.pt`` as a fused float32 detector in eval mode.

    **This unpickles the file** (``torch.load(weights_only=False)``), which can run arbitrary
    code: call it only for bytes whose origin was verified (known sha256 or explicit user trust).
    To check and load the same bytes, read the file once, hash those bytes and pass them here.

    Parameters
    ----------
    checkpoint : bytes, str or os.PathLike
        The checkpoint written by Ultralytics 8.0.120 (MobileSAMv2's ``ObjectAwareModel.pt``): its
        bytes, or its path (then read once, into memory, before unpickling).
    map_location : str or torch.device, optional
        Where ``torch.load`` puts the tensors (default ``"cpu"``).
    source : str or os.PathLike, optional
        Name of the file in error messages (default: the path, or ``"the detector bytes"``).

    Returns
    -------
    ObjectAwareDetector
        Module with ``.stride`` and ``.names``; ``model(x)`` maps a (B, 3, H, W) float tensor in
        [0, 1] to the (B, 4 + nc, A) predictions, boxes as xywh in network-input pixels.

    Raises
    ------
    CheckpointError
        The bytes are not readable as such a checkpoint (corrupt, another format, a plain state
        dict, a stock YOLOv8 head, ...).
    FileNotFoundError
        `checkpoint` is a path that does not exist.
    """
    if isinstance(checkpoint, (bytes, bytearray, memoryview)):
        data = bytes(checkpoint)
        source = "the detector bytes" if source is None else source
    else:
        data = Path(checkpoint).read_bytes()
        source = checkpoint if source is None else source
    network = _pick_network(_unpickle(data, map_location, source), source)
    network.model[-1] = _detect_head_from(network.model[-1], source)
    network = _fuse_batch_norms(network.float()).eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return ObjectAwareDetector(network).eval()


def _fuse_batch_norms(network: nn.Module) -> nn.Module:
    """Fold every ``Conv``'s BatchNorm into its convolution with 8.0.120's arithmetic.

    Current Ultralytics folds with ``rsqrt`` and another operation order; on the same weights
    that moves boxes by up to ~1e-3 px. Folding like 8.0.120 (divide by ``sqrt(var + eps)``)
    keeps the detector's output identical to the official code's on the CPU.
    """
    from ultralytics.nn.modules.conv import Conv

    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, Conv) and isinstance(getattr(module, "bn", None), nn.BatchNorm2d):
                conv, bn = module.conv, module.bn
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                shift = bn.bias - bn.weight * bn.running_mean / torch.sqrt(bn.running_var + bn.eps)
                bias = shift if conv.bias is None else scale * conv.bias + shift
                conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
                conv.bias = nn.Parameter(bias, requires_grad=False)
                del module.bn
                module.forward = module.forward_fuse
    return network


def _unpickle(data: bytes, map_location: str | torch.device, source: str | os.PathLike) -> object:
    from ultralytics.nn.tasks import temporary_modules

    try:
        with temporary_modules(modules=_LEGACY_MODULES):
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as error:  # pickle and zip errors come in many types; all mean "not this format"
        raise CheckpointError(
            f"{os.fspath(source)} cannot be read as a detector checkpoint ({type(error).__name__}: {error}); "
            f"expected {EXPECTED_FORMAT}"
        ) from error


def _pick_network(checkpoint: object, source: str | os.PathLike) -> nn.Module:
    from ultralytics.nn.tasks import DetectionModel

    if isinstance(checkpoint, dict):
        network = checkpoint.get("ema") or checkpoint.get("model")  # what 8.0.120 loads: EMA weights first
        found = f"a dict with keys {sorted(map(str, checkpoint))[:8]}"
    else:
        network, found = None, f"a {type(checkpoint).__name__}"
    if not isinstance(network, DetectionModel):
        raise CheckpointError(f"{os.fspath(source)} holds {found}, not a YOLOv8 model; expected {EXPECTED_FORMAT}")
    return network


def _detect_head_from(segment: nn.Module, source: str | os.PathLike) -> nn.Module:
    """A current ``Detect`` head that reuses the box (cv2) and class (cv3) branches of `segment`."""
    from ultralytics.nn.modules.head import Detect

    try:
        box_channels = [branch[-1].out_channels for branch in segment.cv2]
        class_channels = [branch[-1].out_channels for branch in segment.cv3]
        input_channels = [branch[0].conv.in_channels for branch in segment.cv2]
    except (AttributeError, IndexError, TypeError) as error:
        raise CheckpointError(
            f"{os.fspath(source)} ends in a {type(segment).__name__}, not a YOLOv8 detection head; "
            f"expected {EXPECTED_FORMAT}"
        ) from error
    bins, classes = sorted({c // 4 for c in box_channels}), sorted(set(class_channels))
    if bins != [REG_MAX] or classes != [1] or getattr(segment, "reg_max", None) != REG_MAX:
        raise CheckpointError(
            f"{os.fspath(source)} has a head with {'/'.join(map(str, bins)) or 'no'} DFL bins and "
            f"{'/'.join(map(str, classes)) or 'no'} class(es); expected {EXPECTED_FORMAT}"
        )
    head = Detect(nc=1, reg_max=REG_MAX, ch=tuple(input_channels))
    head.cv2, head.cv3 = segment.cv2, segment.cv3  # the mask-coefficient branch (cv4) is dropped
    head.f, head.i, head.type = segment.f, segment.i, segment.type
    head.stride = segment.stride.clone()
    head.np = sum(parameter.numel() for parameter in head.parameters())
    return head.to(next(segment.cv2.parameters()).device)
