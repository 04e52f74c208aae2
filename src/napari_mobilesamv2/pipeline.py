"""The headless MobileSAMv2 pipeline: one object that segments everything or anything.

Stages, each in its own package: ``prompts`` (object-aware boxes from the
detector, the grid baseline, prompts a user gives), ``embedding`` (image encoder),
``decode`` (prompt-guided mask decoding and label assembly). Weights files are found
and loaded by :mod:`napari_mobilesamv2.models`; results are
:class:`~napari_mobilesamv2.results.Segmentation`.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from .decode.prompted import DecodedMasks, ObjectPrompt, decode_boxes, decode_object_prompts
from .devices import CpuFallback, resolve_device
from .embedding import ImageEmbedding, embed_image
from .errors import InputError
from .imaging import to_rgb_uint8
from .models import build as model_build
from .models import weights
from .models.registry import DEFAULT_ENCODER
from .prompts.user import check_boxes, check_fraction, check_object, objects_from_prompts, prompt_box
from .results import Segmentation, build_segmentation, empty_segmentation, filter_objects, quality_mask

log = logging.getLogger(__name__)

STRATEGIES = ("object-aware", "grid")
MAX_IMGSZ = 4096  # detector input side; memory grows with its square


class MobileSAMv2:
    """MobileSAMv2: object-aware "segment everything" and prompted "segment anything".

    Built from modules; :meth:`from_pretrained` builds one from the weights files.

    Parameters
    ----------
    image_encoder : torch.nn.Module
        Maps a (1, 3, 1024, 1024) normalized image to a (1, 256, 64, 64) embedding.
    prompt_encoder, mask_decoder : torch.nn.Module
        SAM's prompt encoder and mask decoder.
    detector : torch.nn.Module, optional
        The object-aware box detector (see
        :func:`napari_mobilesamv2.models.detector.load_object_aware_model`); without it
        only prompts, user boxes and the grid strategy work.
    device : str or torch.device
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; the modules are moved there.
    encoder_name : str
        Name of the image encoder, for reports.

    Examples
    --------
    >>> model = MobileSAMv2.from_pretrained("efficientvit_l2")    # doctest: +SKIP
    >>> result = model.segment_everything(image)                  # doctest: +SKIP
    >>> result.labels.max(), result.table()["score"][:3]          # doctest: +SKIP
    """

    def __init__(
        self,
        image_encoder: torch.nn.Module,
        prompt_encoder: torch.nn.Module,
        mask_decoder: torch.nn.Module,
        detector: torch.nn.Module | None = None,
        *,
        device: str | torch.device = "cpu",
        encoder_name: str = "custom",
    ):
        self._steps = CpuFallback()
        self.device = resolve_device(device)
        self.encoder_name = encoder_name
        self.image_encoder = image_encoder.to(self.device).eval()
        self.prompt_encoder = prompt_encoder.to(self.device).eval()
        self.mask_decoder = mask_decoder.to(self.device).eval()
        self.detector = detector.to(self.device).eval() if detector is not None else None

    @classmethod
    def from_pretrained(
        cls,
        encoder: str = DEFAULT_ENCODER,
        *,
        encoder_weights: str | os.PathLike | None = None,
        decoder_weights: str | os.PathLike | None = None,
        detector_weights: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        trust_weights: bool = False,
        download: bool = True,
        load_detector: bool = True,
    ) -> MobileSAMv2:
        """Build the pipeline from weights files: yours, or the registry's (downloaded and verified).

        Parameters
        ----------
        encoder : str
            ``efficientvit_l2`` (default), ``tiny_vit``, ``vit_h``, ``vit_l`` or ``vit_b``.
        encoder_weights, decoder_weights, detector_weights : path-like, optional
            Files you already have. Missing ones come from the registry (downloaded and
            verified into the cache, see :mod:`napari_mobilesamv2.models.download`).
        device : str or torch.device
            ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        trust_weights : bool
            Allow unpickling a detector file whose sha256 is not the known one.
        download : bool
            Allow downloads of missing registry files.
        load_detector : bool
            Load the object-aware detector (not needed for prompts or the grid strategy).

        Returns
        -------
        MobileSAMv2

        Raises
        ------
        InputError
            Unknown encoder or device, or a given file does not exist.
        WeightsUnavailableError
            Registry files are missing and cannot be downloaded.
        IntegrityError
            A cached file does not have its sha256.
        UntrustedWeightsError
            The detector's sha256 is unknown and `trust_weights` is False (nothing was loaded).
        CheckpointError
            A file is not the checkpoint its slot needs.
        """
        slots = weights.pipeline_slots(encoder, encoder_weights, decoder_weights, detector_weights,
                                       with_detector=load_detector)
        device = resolve_device(device)
        files = weights.resolve_files(slots, download_missing=download)
        # The detector first: an untrusted pickle is refused before anything is loaded.
        detector = None
        if load_detector:
            detector = weights.load_checked_detector(files["detector"], trust_weights=trust_weights,
                                                     cached=detector_weights is None)
        image_encoder = model_build.load_image_encoder(encoder, files["encoder"])
        prompt_encoder, mask_decoder = model_build.load_prompt_decoder(files["decoder"])
        return cls(image_encoder, prompt_encoder, mask_decoder, detector, device=device, encoder_name=encoder)

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
        check_fraction("conf", conf)
        check_fraction("iou", iou)
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
            return empty_segmentation(shape, strategy)
        embedding = embedding if embedding is not None else self.embed(image_rgb)
        if strategy == "grid":
            return self._segment_grid(embedding, image_rgb, points_per_side)
        if boxes_xyxy is None:
            if max_prompts < 1:
                raise InputError(f"max_prompts must be at least 1, not {max_prompts}")
            boxes_xyxy, scores = self.detect(image_rgb, conf=conf, iou=iou, imgsz=imgsz, max_det=max_det)
            boxes_xyxy, scores = boxes_xyxy[:max_prompts], scores[:max_prompts]
        else:
            boxes_xyxy = check_boxes(boxes_xyxy, shape)
            scores = np.full(len(boxes_xyxy), np.nan, np.float32)
        decoded = self._steps.run(
            "mask decoder", self.device,
            lambda pe, md, device: decode_boxes(pe, md, embedding.to(device), boxes_xyxy, batch_size),
            self.prompt_encoder, self.mask_decoder,
        )
        keep = quality_mask(decoded, min_predicted_iou, min_stability, min_area)
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
        objects = [check_object(o, shape) for o in objects]
        embedding = embedding if embedding is not None else self.embed(image_rgb)
        decoded = self._steps.run(
            "mask decoder", self.device,
            lambda pe, md, device: decode_object_prompts(pe, md, embedding.to(device), objects),
            self.prompt_encoder, self.mask_decoder,
        )
        boxes = np.array([prompt_box(o, c) for o, c in zip(objects, decoded.crops)], np.float32).reshape(-1, 4)
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
