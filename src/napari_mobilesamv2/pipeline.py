"""The headless MobileSAMv2 pipeline: one object that segments everything or anything.

Stages, each in its own package: ``prompts`` (object-aware boxes from the
detector, or the grid baseline), ``embedding`` (image encoder), ``decode``
(prompt-guided mask decoding and label assembly).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .decode.labels import assemble_labels
from .decode.masks import MaskCrop
from .decode.prompted import DecodedMasks, ObjectPrompt, decode_boxes, decode_object_prompts
from .devices import CpuFallback
from .embedding import ImageEmbedding, embed_image
from .errors import InputError, UntrustedWeightsWarning, WeightsUnavailableError
from .imaging import to_rgb_uint8
from .models import build as model_build
from .models import download as weights
from .models.registry import DECODER_FILE, DEFAULT_ENCODER, DETECTOR_FILE, ENCODER_FILES

log = logging.getLogger(__name__)

STRATEGIES = ("object-aware", "grid")
MAX_IMGSZ = 4096  # detector input side; memory grows with its square


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; explicit names are checked."""
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


@dataclass
class Segmentation:
    """Objects found in one image plane.

    Attributes
    ----------
    labels : numpy.ndarray
        (H, W) int32 label image; object ``k`` (0-based) has id ``k + 1``.
    crops : list of MaskCrop
        Each object's full binary mask (overlaps not resolved).
    boxes_xyxy : numpy.ndarray
        (N, 4) float32 prompt box of each object (the detector's box for object-aware,
        the mask's box for grid and point prompts), image pixels.
    score : numpy.ndarray
        (N,) float32 detector confidence (NaN where no detector was involved).
    predicted_iou, stability : numpy.ndarray
        (N,) float32 decoder quality estimates.
    visible_area : numpy.ndarray
        (N,) int64 pixels of each object visible in `labels`.
    """

    labels: np.ndarray
    crops: list[MaskCrop]
    boxes_xyxy: np.ndarray
    score: np.ndarray
    predicted_iou: np.ndarray
    stability: np.ndarray
    visible_area: np.ndarray
    strategy: str = "object-aware"

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def ids(self) -> np.ndarray:
        return np.arange(1, len(self.crops) + 1, dtype=np.int32)

    @property
    def area(self) -> np.ndarray:
        return np.array([c.area for c in self.crops], dtype=np.int64)

    def table(self) -> dict[str, np.ndarray]:
        """Per-object columns: id, box, detector score, predicted IoU, stability, areas."""
        boxes = self.boxes_xyxy.reshape(-1, 4)
        return {
            "id": self.ids, "x0": boxes[:, 0], "y0": boxes[:, 1], "x1": boxes[:, 2], "y1": boxes[:, 3],
            "score": self.score, "predicted_iou": self.predicted_iou, "stability": self.stability,
            "area": self.area, "visible_area": self.visible_area,
        }


def build_segmentation(
    decoded: DecodedMasks, boxes_xyxy: np.ndarray, scores: np.ndarray, shape: tuple[int, int], strategy: str
) -> Segmentation:
    """Assemble labels and the object table from decoded masks."""
    labels, visible = assemble_labels(decoded.crops, shape)
    return Segmentation(
        labels, decoded.crops, np.asarray(boxes_xyxy, np.float32).reshape(-1, 4),
        np.asarray(scores, np.float32), decoded.predicted_iou, decoded.stability, visible, strategy,
    )


def filter_objects(
    decoded: DecodedMasks, keep: np.ndarray
) -> DecodedMasks:
    """Keep the objects where the bool array `keep` is True, in order."""
    index = np.flatnonzero(keep)
    return DecodedMasks(
        [decoded.crops[i] for i in index], decoded.predicted_iou[index], decoded.stability[index],
        decoded.low_res_logits[torch.as_tensor(index, dtype=torch.long)],
    )


class MobileSAMv2:
    """MobileSAMv2: object-aware "segment everything" and prompted "segment anything".

    Parameters
    ----------
    encoder : str
        ``efficientvit_l2`` (default), ``tiny_vit``, ``vit_h``, ``vit_l`` or ``vit_b``.
    encoder_weights, decoder_weights, detector_weights : path-like, optional
        Files you already have. Missing ones come from the registry (downloaded and
        verified into the cache, see :mod:`napari_mobilesamv2.models.download`).
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    trust_weights : bool
        Allow unpickling a detector file whose sha256 is not the known one.
    download : bool
        Allow downloads of missing registry files.

    Examples
    --------
    >>> model = MobileSAMv2("efficientvit_l2")                    # doctest: +SKIP
    >>> result = model.segment_everything(image)                  # doctest: +SKIP
    >>> result.labels.max(), result.table()["score"][:3]          # doctest: +SKIP
    """

    def __init__(
        self,
        encoder: str = DEFAULT_ENCODER,
        *,
        encoder_weights: str | os.PathLike | None = None,
        decoder_weights: str | os.PathLike | None = None,
        detector_weights: str | os.PathLike | None = None,
        device: str = "auto",
        trust_weights: bool = False,
        download: bool = True,
        load_detector: bool = True,
    ):
        if encoder not in ENCODER_FILES:
            raise InputError(f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODER_FILES)}")
        device = resolve_device(device)
        paths = _resolve_weights(encoder, encoder_weights, decoder_weights, detector_weights if load_detector else "",
                                 download)
        # The detector first: an untrusted pickle is refused before anything is loaded.
        detector = _load_detector(paths["detector"], trust_weights) if load_detector else None
        image_encoder = model_build.load_image_encoder(encoder, paths["encoder"])
        prompt_encoder, mask_decoder = model_build.load_prompt_decoder(paths["decoder"])
        self._setup(image_encoder, prompt_encoder, mask_decoder, detector, device, encoder)

    @classmethod
    def from_modules(
        cls,
        image_encoder: torch.nn.Module,
        prompt_encoder: torch.nn.Module,
        mask_decoder: torch.nn.Module,
        detector: torch.nn.Module | None = None,
        *,
        device: str = "cpu",
        encoder_name: str = "custom",
    ) -> "MobileSAMv2":
        """Assemble a pipeline from modules already built (tests, custom models)."""
        self = cls.__new__(cls)
        self._setup(image_encoder, prompt_encoder, mask_decoder, detector, resolve_device(device), encoder_name)
        return self

    def _setup(self, image_encoder, prompt_encoder, mask_decoder, detector, device, encoder_name):
        self._steps = CpuFallback()
        self.device = device
        self.encoder_name = encoder_name
        self.image_encoder = image_encoder.to(device).eval()
        self.prompt_encoder = prompt_encoder.to(device).eval()
        self.mask_decoder = mask_decoder.to(device).eval()
        self.detector = detector.to(device).eval() if detector is not None else None

    # -- stages ---------------------------------------------------------------------------
    def prepare_image(self, image: np.ndarray, **conversion) -> np.ndarray:
        """Convert any supported image plane to (H, W, 3) uint8 RGB (see :func:`to_rgb_uint8`)."""
        image = np.asarray(image)
        if image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3 and not conversion:
            from .imaging import check_plane_shape

            check_plane_shape(*image.shape[:2])
            return np.ascontiguousarray(image)
        return to_rgb_uint8(image, **conversion)

    def embed(self, image_rgb: np.ndarray) -> ImageEmbedding:
        """Image embedding of a prepared (H, W, 3) uint8 image."""
        return self._steps.run("image encoder", self.device, lambda encoder, _: embed_image(encoder, image_rgb),
                               self.image_encoder)

    def detect(
        self, image_rgb: np.ndarray, *, conf: float = 0.4, iou: float = 0.9, imgsz: int = 1024, max_det: int = 300
    ) -> tuple[np.ndarray, np.ndarray]:
        """Object-aware box prompts: (N, 4) xyxy image-pixel boxes and (N,) scores, best first."""
        if self.detector is None:
            raise InputError("this pipeline was built without the object-aware detector")
        _check_fraction("conf", conf)
        _check_fraction("iou", iou)
        if not 32 <= imgsz <= MAX_IMGSZ or imgsz % 32:
            raise InputError(f"imgsz must be a multiple of 32 from 32 to {MAX_IMGSZ} (default 1024), not {imgsz}")
        from .prompts.object_aware import detect_objects

        return self._steps.run(
            "detector", self.device,
            lambda detector, device: detect_objects(
                detector, image_rgb, imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, device=device
            ),
            self.detector,
        )

    # -- segment everything ---------------------------------------------------------------------
    def segment_everything(
        self,
        image: np.ndarray,
        *,
        strategy: str = "object-aware",
        conf: float = 0.4,
        iou: float = 0.9,
        imgsz: int = 1024,
        max_det: int = 300,
        max_prompts: int = 320,
        batch_size: int | None = None,
        points_per_side: int = 32,
        min_predicted_iou: float | None = None,
        min_stability: float | None = None,
        min_area: int | None = None,
        embedding: ImageEmbedding | None = None,
        boxes_xyxy: np.ndarray | None = None,
        **conversion,
    ) -> Segmentation:
        """Find every object in one image plane.

        With ``strategy="object-aware"`` (MobileSAMv2) the detector's boxes (NMS'd,
        best first, at most `max_prompts`) prompt the decoder, one mask each, in
        detector order; nothing is filtered unless a ``min_*`` filter is given.
        ``strategy="grid"`` runs SAM's grid search with `points_per_side`² points.
        Passing `boxes_xyxy` skips the detector (e.g. boxes the user edited).
        """
        if strategy not in STRATEGIES:
            raise InputError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch_size must be at least 1, not {batch_size}")
        image_rgb = self.prepare_image(image, **conversion)
        shape = image_rgb.shape[:2]
        if boxes_xyxy is None and image_rgb.min() == image_rgb.max():
            log.warning("the image has the same value everywhere after conversion to 8 bit: no objects to find "
                        "(check the plane, the channels and the normalization)")
            return _empty_segmentation(shape, strategy)
        embedding = embedding if embedding is not None else self.embed(image_rgb)
        if strategy == "grid":
            return self._segment_grid(embedding, image_rgb, points_per_side)
        if boxes_xyxy is None:
            if max_prompts < 1:
                raise InputError(f"max_prompts must be at least 1, not {max_prompts}")
            boxes_xyxy, scores = self.detect(image_rgb, conf=conf, iou=iou, imgsz=imgsz, max_det=max_det)
            boxes_xyxy, scores = boxes_xyxy[:max_prompts], scores[:max_prompts]
        else:
            boxes_xyxy = _check_boxes(boxes_xyxy, shape)
            scores = np.full(len(boxes_xyxy), np.nan, np.float32)
        decoded = self._steps.run(
            "mask decoder", self.device,
            lambda pe, md, device: decode_boxes(pe, md, embedding.to(device), boxes_xyxy, batch_size),
            self.prompt_encoder, self.mask_decoder,
        )
        keep = _quality_filter(decoded, min_predicted_iou, min_stability, min_area)
        if not keep.all():
            decoded, boxes_xyxy, scores = filter_objects(decoded, keep), boxes_xyxy[keep], scores[keep]
        return build_segmentation(decoded, boxes_xyxy, scores, shape, "object-aware")

    def _segment_grid(self, embedding: ImageEmbedding, image_rgb: np.ndarray, points_per_side: int) -> Segmentation:
        from .prompts.grid import grid_everything

        if points_per_side < 1:
            raise InputError(f"points_per_side must be at least 1, not {points_per_side}")
        found = grid_everything(
            self.prompt_encoder, self.mask_decoder, embedding, image_rgb, points_per_side=points_per_side
        )
        decoded = DecodedMasks(found["crops"], found["predicted_iou"], found["stability"], torch.zeros(0))
        scores = np.full(len(found["crops"]), np.nan, np.float32)
        return build_segmentation(decoded, found["boxes_xyxy"], scores, image_rgb.shape[:2], "grid")

    # -- segment anything ---------------------------------------------------------------------
    def segment_prompts(
        self,
        image: np.ndarray,
        objects: list[ObjectPrompt],
        *,
        embedding: ImageEmbedding | None = None,
        **conversion,
    ) -> Segmentation:
        """One mask per :class:`ObjectPrompt` (points and/or a box), ids in prompt order."""
        image_rgb = self.prepare_image(image, **conversion)
        shape = image_rgb.shape[:2]
        objects = [_check_object(o, shape) for o in objects]
        embedding = embedding if embedding is not None else self.embed(image_rgb)
        decoded = self._steps.run(
            "mask decoder", self.device,
            lambda pe, md, device: decode_object_prompts(pe, md, embedding.to(device), objects),
            self.prompt_encoder, self.mask_decoder,
        )
        boxes = np.array([_prompt_box(o, c) for o, c in zip(objects, decoded.crops)], np.float32).reshape(-1, 4)
        return build_segmentation(decoded, boxes, np.full(len(objects), np.nan, np.float32), shape, "prompts")

    def segment_anything(
        self,
        image: np.ndarray,
        *,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        point_groups: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        embedding: ImageEmbedding | None = None,
        **conversion,
    ) -> Segmentation:
        """Segment the objects pointed at: one per box and one per positive-point group.

        See :func:`objects_from_prompts` for how points and boxes form objects.
        """
        objects = objects_from_prompts(points, point_labels, point_groups, boxes)
        if not objects:
            raise InputError("no prompts: give at least one positive point or one box")
        return self.segment_prompts(image, objects, embedding=embedding, **conversion)


def objects_from_prompts(
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    point_groups: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
) -> list[ObjectPrompt]:
    """Group point and box prompts into objects.

    * Each box is one object.
    * Without `point_groups`, each positive point (label 1) is one object and every
      negative point (label 0) is shared by all point objects.
    * With `point_groups` (one integer per point), the points of a group form one
      object; a group needs at least one positive point.
    """
    objects: list[ObjectPrompt] = []
    if points is not None and len(points):
        points = _coordinates(points, 2, "points", "x, y")
        labels = np.ones(len(points), np.int64) if point_labels is None else np.asarray(point_labels, np.int64)
        if labels.shape != (len(points),) or not np.isin(labels, (0, 1)).all():
            raise InputError("point_labels must hold one 0 (background) or 1 (object) per point")
        if point_groups is None:
            negative = points[labels == 0]
            for p in points[labels == 1]:
                pts = np.concatenate([p[None], negative])
                objects.append(ObjectPrompt(pts, np.r_[1, np.zeros(len(negative), np.int64)]))
        else:
            groups = np.asarray(point_groups).reshape(-1)
            if groups.shape != (len(points),):
                raise InputError("point_groups must hold one group id per point")
            for g in dict.fromkeys(groups.tolist()):
                member = groups == g
                if labels[member].max() == 1:
                    objects.append(ObjectPrompt(points[member], labels[member]))
    if boxes is not None:
        for box in _coordinates(boxes, 4, "boxes", "x0, y0, x1, y1"):
            objects.append(ObjectPrompt(box=box))
    return objects


def _resolve_weights(encoder, encoder_weights, decoder_weights, detector_weights, allow_download) -> dict:
    wanted = {"encoder": (encoder_weights, ENCODER_FILES[encoder]), "decoder": (decoder_weights, DECODER_FILE)}
    if detector_weights != "":
        wanted["detector"] = (detector_weights, DETECTOR_FILE)
    paths, missing = {}, []
    for slot, (given, registry_name) in wanted.items():
        if given is not None:
            if not os.path.isfile(given):
                raise InputError(f"{slot} weights {given} do not exist (or are not a file)")
            paths[slot] = given
            continue
        try:
            paths[slot] = weights.fetch(registry_name, download=allow_download)
        except WeightsUnavailableError:
            missing.append(registry_name)
    if missing:
        raise WeightsUnavailableError(weights.missing_message(missing))
    return paths


def _load_detector(path: str | os.PathLike, trust_weights: bool) -> torch.nn.Module:
    """Unpickle the detector only if its sha256 is known or the user trusts it (with a warning)."""
    known = weights.is_known_file(DETECTOR_FILE, path)
    if trust_weights and not known:
        warnings.warn(UntrustedWeightsWarning(
            f"loading {path} although its sha256 is not the known {DETECTOR_FILE}'s, because you trust it: "
            "a pickle can run arbitrary code, so use only files from a source you trust"
        ), stacklevel=3)
    return model_build.load_detector(path, trusted=known or trust_weights)


def _empty_segmentation(shape: tuple[int, int], strategy: str) -> Segmentation:
    empty = np.zeros(0, np.float32)
    return Segmentation(np.zeros(shape, np.int32), [], np.zeros((0, 4), np.float32), empty, empty, empty,
                        np.zeros(0, np.int64), strategy)


def _coordinates(values, width: int, what: str, layout: str) -> np.ndarray:
    """`values` as an (N, `width`) float32 array of finite numbers, else a clear InputError."""
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numbers ({layout}), not {values!r:.60}") from None
    if array.size % width:
        raise InputError(f"{what} need {width} numbers each ({layout}); got an array of shape {array.shape}")
    array = array.reshape(-1, width)
    if not np.isfinite(array).all():
        raise InputError(f"{what} must be finite numbers ({layout}); found NaN or infinity")
    return array


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise InputError(f"{name} must be between 0 and 1, not {value}")


def _check_boxes(boxes: np.ndarray, shape: tuple[int, int], *, warn: bool = True) -> np.ndarray:
    """Clip boxes to the image, order their corners, drop the empty ones (with a warning)."""
    boxes = _coordinates(boxes, 4, "boxes", "x0, y0, x1, y1")
    h, w = shape
    x = np.sort(np.clip(boxes[:, [0, 2]], 0, w), axis=1)
    y = np.sort(np.clip(boxes[:, [1, 3]], 0, h), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    empty = (boxes[:, 2] - boxes[:, 0] < 1) | (boxes[:, 3] - boxes[:, 1] < 1)
    if empty.any() and warn:
        log.warning("ignoring %d box(es) with no area inside the %dx%d (width x height) image", int(empty.sum()), w, h)
    return boxes[~empty]


def _check_object(obj: ObjectPrompt, shape: tuple[int, int]) -> ObjectPrompt:
    h, w = shape
    points = _coordinates(obj.points, 2, "points", "x, y")
    inside = (points[:, 0] >= 0) & (points[:, 0] < w) & (points[:, 1] >= 0) & (points[:, 1] < h)
    if not inside.all():
        raise InputError(f"{int((~inside).sum())} point(s) lie outside the {w}x{h} (width x height) image")
    box = None
    if obj.box is not None:
        checked = _check_boxes(obj.box, shape, warn=False)
        if len(checked) == 0:
            box = ", ".join(f"{v:g}" for v in np.asarray(obj.box, np.float64).reshape(-1))
            raise InputError(f"the box ({box}) has no area inside the {w}x{h} (width x height) image")
        box = checked[0]
    return ObjectPrompt(points, np.asarray(obj.labels, np.int64).reshape(-1), box)


def _prompt_box(obj: ObjectPrompt, crop: MaskCrop) -> np.ndarray:
    return np.asarray(obj.box if obj.box is not None else crop.bbox_xyxy, np.float32)


def _quality_filter(decoded: DecodedMasks, min_iou, min_stability, min_area) -> np.ndarray:
    keep = np.ones(len(decoded), dtype=bool)
    if min_iou is not None:
        keep &= decoded.predicted_iou >= min_iou
    if min_stability is not None:
        keep &= decoded.stability >= min_stability
    if min_area is not None:
        keep &= np.array([c.area for c in decoded.crops], dtype=np.int64) >= min_area
    return keep
