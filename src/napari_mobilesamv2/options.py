"""Every setting of the pipeline, written once: its default, range, choices and help.

The command line, the napari widgets and the Python API read their defaults,
ranges, choices and help texts from the dataclasses here:

* :class:`EverythingOptions` -- how "segment everything" finds objects;
* :class:`ImageOptions` -- how an image plane becomes the models' 8-bit RGB input;
* :class:`ModelOptions` -- which models run where;
* :class:`PropagationOptions` -- how a prompted object is followed through a stack.

Each field carries an :class:`OptionSpec` in its metadata. The dataclasses check
their values when made, so a bad value fails before any model runs, with a
message that names the setting and its allowed values.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError
from .imaging import NORMALIZATIONS
from .models.registry import DEFAULT_ENCODER, ENCODERS

STRATEGIES = ("object-aware", "grid")
DEVICES = ("auto", "cpu", "cuda", "mps")
MAX_IMGSZ = 4096  # detector input side; memory grows with its square
MAX_DETECTIONS = 300  # boxes the detector keeps after NMS (Ultralytics' default, as in MobileSAMv2)
EMBEDDINGS_FOLDER_HELP = ("keep image embeddings in this folder and reuse them in later runs of the same images "
                          "and models (one written by another model or for other pixels is recomputed, never used)")
LARGE_IMAGE_TILE = 1024  # tile side used when an image too large for one pass is tiled without a chosen `tile`
BORDER_SNAP = 20.0  # box sides this close (network pixels) to the image border are snapped onto it, as officially


@dataclass(frozen=True)
class OptionSpec:
    """What one setting means and which values it takes.

    Attributes
    ----------
    help : str
        One line for ``--help``, tooltips and the docs (without the default).
    group : str
        Section it belongs to: ``strategy``, ``detector``, ``decoder``, ``grid``,
        ``filters``, ``stack``, ``tiling``, ``propagation``, ``image`` or ``model``.
    minimum, maximum : float, optional
        Allowed range, inclusive (``minimum_exclusive`` makes the lower end exclusive).
    choices : tuple, optional
        Allowed values.
    strategies : tuple of str
        Strategies the setting applies to; with another strategy a changed value
        is reported (see :meth:`EverythingOptions.check_strategy`).
    multiple_of : int, optional
        The value must be a multiple of this.
    unset : str, optional
        For settings whose default is ``None``: what ``None`` means (e.g. ``"off"``).
    """

    help: str
    group: str
    minimum: float | None = None
    maximum: float | None = None
    minimum_exclusive: bool = False
    choices: tuple | None = None
    strategies: tuple[str, ...] = STRATEGIES
    multiple_of: int | None = None
    unset: str | None = None


def option(default: Any, help: str, group: str, **spec: Any) -> Any:
    """A dataclass field holding `default` and its :class:`OptionSpec`."""
    return field(default=default, metadata={"spec": OptionSpec(help, group, **spec)})


@dataclass(frozen=True)
class OptionInfo:
    """One setting as front ends need it: name, type, default and spec."""

    name: str
    type: type
    default: Any
    spec: OptionSpec

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. ``--max-prompts``."""
        return "--" + self.name.replace("_", "-")

    @property
    def optional(self) -> bool:
        return self.default is None

    def describe_default(self) -> str:
        """The default as users read it (``0.4``, ``object-aware``, ``off``)."""
        if self.default is None:
            return self.spec.unset or "none"
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        return str(self.default)

    def help_with_default(self) -> str:
        """Help text followed by the default, e.g. for ``--help`` and tooltips."""
        return f"{self.spec.help} (default: {self.describe_default()})"


_TYPES = {"str": str, "float": float, "int": int, "bool": bool}


def options_of(cls: type) -> tuple[OptionInfo, ...]:
    """The settings of an options dataclass, in field order."""
    infos = []
    for f in dataclasses.fields(cls):
        if "spec" not in f.metadata:
            continue
        type_name = str(f.type).split("|")[0].strip()
        infos.append(OptionInfo(f.name, _TYPES.get(type_name, object), f.default, f.metadata["spec"]))
    return tuple(infos)


def option_info(cls: type, name: str) -> OptionInfo:
    """The :class:`OptionInfo` of setting `name` of `cls`."""
    for info in options_of(cls):
        if info.name == name:
            return info
    raise KeyError(name)


class _Checked:
    """Mixin: check every field against its spec after ``__init__``; ``replace`` and ``from_dict``."""

    def __post_init__(self) -> None:
        for info in options_of(type(self)):
            value = getattr(self, info.name)
            checked = _check_value(info, value)
            if checked is not value:
                object.__setattr__(self, info.name, checked)

    def replace(self, **changes: Any):
        """A copy with some settings changed (checked like the constructor's)."""
        _refuse_unknown(type(self), changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        """Build from a mapping, refusing names that are not settings of this class."""
        _refuse_unknown(cls, values)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def changed(self) -> dict[str, Any]:
        """The settings that differ from their defaults."""
        return {i.name: getattr(self, i.name) for i in options_of(type(self)) if getattr(self, i.name) != i.default}


def _refuse_unknown(cls: type, values: dict[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(
            f"unknown setting(s) {', '.join(map(repr, unknown))}; known settings: {', '.join(sorted(known))}"
        )


def _check_value(info: OptionInfo, value: Any) -> Any:
    """`value` converted to the setting's type, or an InputError naming the allowed values."""
    spec, name = info.spec, info.name
    if value is None:
        if info.optional:
            return None
        raise InputError(f"{name} needs a value ({spec.help})")
    if spec.choices is not None:
        if value not in spec.choices:
            raise InputError(f"{name} must be one of {', '.join(map(str, spec.choices))}, not {value!r}")
        return value
    if info.type is bool:
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise InputError(f"{name} must be True or False, not {value!r}")
        return bool(value)
    if info.type in (int, float):
        return _check_number(info, value)
    return value


def _check_number(info: OptionInfo, value: Any) -> int | float:
    spec, name = info.spec, info.name
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, not {value!r}") from None
    if info.type is int:
        if not math.isfinite(number) or number != int(number):
            raise InputError(f"{name} must be a whole number, not {value!r}")
        number = int(number)
    if spec.multiple_of is not None:
        if not (spec.minimum <= number <= spec.maximum) or number % spec.multiple_of:
            raise InputError(
                f"{name} must be a multiple of {spec.multiple_of} from {spec.minimum:g} to {spec.maximum:g} "
                f"(default {info.describe_default()}), not {value}"
            )
        return number
    low_ok = spec.minimum is None or (number > spec.minimum if spec.minimum_exclusive else number >= spec.minimum)
    high_ok = spec.maximum is None or number <= spec.maximum
    if not (low_ok and high_ok) or math.isnan(number):
        raise InputError(f"{name} must be {_describe_range(spec)}, not {value}")
    return number


def _describe_range(spec: OptionSpec) -> str:
    if spec.minimum is not None and spec.maximum is not None:
        if spec.minimum_exclusive:
            return f"above {spec.minimum:g} and at most {spec.maximum:g}"
        return f"between {spec.minimum:g} and {spec.maximum:g}"
    if spec.minimum is not None:
        return f"above {spec.minimum:g}" if spec.minimum_exclusive else f"at least {spec.minimum:g}"
    return f"at most {spec.maximum:g}"


@dataclass(frozen=True)
class EverythingOptions(_Checked):
    """How "segment everything" finds the objects of a plane (and links them through a stack).

    Every field's default, range and help text is in its :class:`OptionSpec`
    (``options_of(EverythingOptions)``); the command line and the napari widget
    are built from them.
    """

    strategy: str = option(
        "object-aware", "object-aware: the detector's boxes prompt the mask decoder (MobileSAMv2); "
        "grid: SAM's grid of point prompts (the slower baseline)", "strategy", choices=STRATEGIES,
    )
    conf: float = option(
        0.4, "detector confidence threshold: lower it to find fainter objects", "detector",
        minimum=0.0, maximum=1.0, strategies=("object-aware",),
    )
    iou: float = option(
        0.9, "IoU above which the detector's non-maximum suppression drops the weaker of two boxes", "detector",
        minimum=0.0, maximum=1.0, strategies=("object-aware",),
    )
    imgsz: int = option(
        1024, "detector input size in pixels (longer side)", "detector",
        minimum=32, maximum=MAX_IMGSZ, multiple_of=32, strategies=("object-aware",),
    )
    max_prompts: int = option(
        320, "decode at most this many detector boxes per plane, best scores first", "detector",
        minimum=1, strategies=("object-aware",),
    )
    points_per_side: int = option(
        32, "grid strategy: points per side of the prompt grid (N x N points, 3 masks each)", "grid",
        minimum=1, maximum=256, strategies=("grid",),
    )
    batch_size: int | None = option(
        None, "prompts decoded at once: boxes (object-aware), points (grid); halved on GPU out-of-memory",
        "decoder", minimum=1, unset="4 boxes on CPU, 320 on GPU, 64 grid points",
    )
    exact: bool = option(
        False, "use the bitwise-exact decoder (segment-anything's arithmetic order, about 1.7x slower)",
        "decoder", strategies=("object-aware",),
    )
    min_predicted_iou: float | None = option(
        None, "drop masks whose predicted IoU is below this", "filters",
        minimum=-1.0, maximum=2.0, unset="off; grid: 0.88",
    )
    min_stability: float | None = option(
        None, "drop masks whose stability score is below this", "filters",
        minimum=0.0, maximum=1.0, unset="off; grid: 0.95",
    )
    min_area: int | None = option(
        None, "drop masks with fewer pixels than this", "filters", minimum=0, maximum=2**62, unset="off",
    )
    link_iou: float = option(
        0.5, "stacks: least mask IoU for objects of neighbouring planes to share an id", "stack",
        minimum=0.0, maximum=1.0, minimum_exclusive=True,
    )
    fill_gaps: bool = option(
        True, "stacks: an object found on the planes before and after a plane but missed on it is decoded "
        "there from its neighbours' boxes", "stack",
    )
    tile: int | None = option(
        None, "segment the image in square tiles of this many pixels at native resolution, for images larger "
        "than one view (max_prompts then applies per tile)", "tiling", minimum=256, maximum=65536,
        unset="no tiling", strategies=("object-aware",),
    )
    overlap: int = option(
        128, "pixels shared by neighbouring tiles; at least the size of the largest objects", "tiling",
        minimum=0, maximum=32767, strategies=("object-aware",),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tile is not None:
            from .tiling import check_tiling

            check_tiling(self.tile, self.overlap)

    def not_applying(self) -> list[str]:
        """Settings changed from their default that the chosen strategy does not use."""
        return [
            info.name for info in options_of(type(self))
            if self.strategy not in info.spec.strategies and getattr(self, info.name) != info.default
        ]

    def check_strategy(self) -> None:
        """Warn about settings the chosen strategy ignores (they are never silently dropped)."""
        unused = self.not_applying()
        if unused:
            warnings.warn(
                f"{', '.join(unused)} {'has' if len(unused) == 1 else 'have'} no effect with strategy "
                f"{self.strategy!r}; {'it applies' if len(unused) == 1 else 'they apply'} to "
                f"{_strategies_of(unused)} only", UserWarning, stacklevel=2,
            )


def _strategies_of(names: list[str]) -> str:
    found = {s for n in names for s in option_info(EverythingOptions, n).spec.strategies}
    return " and ".join(sorted(found))


@dataclass(frozen=True)
class ImageOptions(_Checked):
    """How a plane becomes the models' (H, W, 3) uint8 RGB input (see :mod:`napari_mobilesamv2.imaging`)."""

    normalization: str = option(
        "auto", "how intensities map to 8 bit: auto (uint8 as is, other dtypes by the 1st/99.8th percentiles), "
        "percentile, minmax, contrast_limits (napari: the layer's), none", "image", choices=NORMALIZATIONS,
    )
    channel_axis: int | None = option(
        None, "axis of the image that holds channels (not needed for grey or RGB images)", "image",
        minimum=-64, maximum=64, unset="none",
    )
    channels: tuple[int, ...] | None = option(
        None, "up to three channels of the channel axis that feed R, G, B, e.g. 0,2", "image", unset="all (at most 3)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.channels is not None:
            try:
                channels = tuple(int(c) for c in self.channels)
            except (TypeError, ValueError):
                raise InputError(f"channels must be integers such as 0,2, not {self.channels!r}") from None
            object.__setattr__(self, "channels", channels)

    def conversion(self) -> dict[str, Any]:
        """Keywords of :func:`~napari_mobilesamv2.imaging.to_rgb_uint8` (only those set)."""
        found: dict[str, Any] = {"normalization": self.normalization}
        if self.channel_axis is not None:
            found["channel_axis"] = self.channel_axis
        if self.channels is not None:
            found["channels"] = self.channels
        return found


@dataclass(frozen=True)
class ModelOptions(_Checked):
    """Which image encoder runs, on which device, and whether an unknown detector file may be unpickled."""

    encoder: str = option(
        DEFAULT_ENCODER, "image encoder: efficientvit_l2 (MobileSAMv2's default), tiny_vit (MobileSAM, fastest on "
        "a CPU), vit_h (best, slowest), vit_l, vit_b", "model", choices=ENCODERS,
    )
    device: str = option("auto", "where the models run: auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N, mps",
                         "model")
    trust_weights: bool = option(
        False, "allow loading a detector file whose sha256 is not the published one (it is a pickle, "
        "which can run code)", "model",
    )


NEXT_PROMPTS = ("box", "box+point", "box+mask")
#: Help text of the "through the stack" choice of segment anything (CLI flag, napari checkbox).
THROUGH_STACK_HELP = (
    "follow each prompted object from its plane to the next ones along the stack axis, in both directions, "
    "until the predicted IoU or the overlap with the previous plane falls below its threshold"
)


@dataclass(frozen=True)
class PropagationOptions(_Checked):
    """How a prompted object is followed from plane to plane through a stack.

    The mask found on one plane prompts the decoder on the next; the object stops where
    the decoder's predicted IoU or the overlap with the previous plane's mask falls
    below its threshold, or at the end of the stack.
    """

    next_prompt: str = option(
        "box", "what the mask on one plane gives the decoder on the next: box (its bounding box), box+point "
        "(and its innermost pixel as an object point), box+mask (and the mask as the decoder's mask input)",
        "propagation", choices=NEXT_PROMPTS,
    )
    stop_iou: float = option(
        0.5, "stop following an object when the decoder's predicted IoU of its mask falls below this",
        "propagation", minimum=-1.0, maximum=2.0,
    )
    stop_overlap: float = option(
        0.3, "stop following an object when the IoU of its mask with its mask on the previous plane falls "
        "below this", "propagation", minimum=0.0, maximum=1.0,
    )


def iter_specs(*classes: type) -> Iterator[OptionInfo]:
    """The settings of several options classes, in order."""
    for cls in classes:
        yield from options_of(cls)
