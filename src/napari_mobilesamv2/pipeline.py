"""The headless MobileSAMv2 pipeline: one object that segments everything or anything.

Stages, each in its own package: ``prompts`` (object-aware boxes from the
detector, the grid baseline, prompts a user gives), ``embedding`` (image encoder),
``decode`` (prompt-guided mask decoding and label assembly). Weights files are found
and loaded by :mod:`napari_mobilesamv2.models`; results are
:class:`~napari_mobilesamv2.results.Segmentation`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Generator
from typing import TYPE_CHECKING

import numpy as np
import torch

from .decode.batching import default_chunk
from .decode.prompted import (
    DecodedMasks,
    ObjectPrompt,
    decode_boxes,
    decode_boxes_in_groups,
    decode_object_prompts,
)
from .devices import CpuFallback, resolve_device
from .embedding import ImageEmbedding, embed_image
from .engine import embed_cached, run, segment_planes
from .errors import InputError
from .imaging import to_rgb_uint8
from .models import build as model_build
from .models import weights
from .models.download import sha256_of
from .models.registry import DEFAULT_ENCODER
from .options import BORDER_SNAP, MAX_DETECTIONS, EverythingOptions
from .prompts.user import check_boxes, check_object, objects_from_prompts, prompt_box
from .results import Segmentation, build_segmentation, empty_segmentation, filter_objects, quality_mask

if TYPE_CHECKING:
    from .embedding_cache import EmbeddingCache

log = logging.getLogger(__name__)

# Decoder batches per progress step on a CPU: 8 batches of 4 boxes take about a second.
BATCHES_PER_STEP = 8



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
        self._encoder_id: str | None = None
        self._encoder_file: str | os.PathLike | None = None
        self._model_id: str | None = None
        self.image_encoder = image_encoder.to(self.device).eval()
        self.prompt_encoder = prompt_encoder.to(self.device).eval()
        self.mask_decoder = mask_decoder.to(self.device).eval()
        self.detector = detector.to(self.device).eval() if detector is not None else None
        #: Inference settings (``imgsz``, ``conf``, ``iou`` and the ``min_*`` mask filters that are on)
        #: stored in a fine-tuned detector file; empty otherwise. Informational: they are not applied.
        self.detector_settings: dict = {}

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
            Allow unpickling a detector file whose sha256 is not the known one. Pickle-free
            detector files (written by :func:`napari_mobilesamv2.training.train_detector`) need
            no trust; their stored inference settings are in :attr:`detector_settings`.
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
        detector, settings = None, {}
        if load_detector:
            detector, settings = _load_detector_file(files["detector"], trust_weights=trust_weights,
                                                     cached=detector_weights is None)
        image_encoder = model_build.load_image_encoder(encoder, files["encoder"])
        prompt_encoder, mask_decoder = model_build.load_prompt_decoder(files["decoder"])
        model = cls(image_encoder, prompt_encoder, mask_decoder, detector, device=device, encoder_name=encoder)
        model._encoder_file = files["encoder"]
        model.detector_settings = settings
        return model

    @property
    def model_id(self) -> str:
        """sha256 over the weights of all modules: identifies the models a saved run used."""
        if self._model_id is None:
            from .embedding_cache import module_fingerprint

            parts = [self.encoder_id] + [module_fingerprint(m) for m in (self.prompt_encoder, self.mask_decoder)]
            if self.detector is not None:
                parts.append(module_fingerprint(self.detector))
            self._model_id = hashlib.sha256(" ".join(parts).encode()).hexdigest()
        return self._model_id

    @property
    def encoder_id(self) -> str:
        """sha256 of the image encoder's weights file (or of its parameters): keys cached embeddings."""
        if self._encoder_id is None and self._encoder_file is not None:
            self._encoder_id = sha256_of(self._encoder_file)
        if self._encoder_id is None:
            from .embedding_cache import module_fingerprint

            self._encoder_id = module_fingerprint(self.image_encoder)
        return self._encoder_id

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
        self, image_rgb: np.ndarray, *, conf: float = 0.4, iou: float = 0.9, imgsz: int = 1024,
        max_det: int = MAX_DETECTIONS, border_threshold: float = BORDER_SNAP,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Object-aware box prompts: (N, 4) xyxy image-pixel boxes and (N,) scores, best first.

        `conf`, `iou` and `imgsz` are checked as the :class:`EverythingOptions` of the same names;
        box sides within `border_threshold` network pixels of the image border are snapped onto it.
        """
        if self.detector is None:
            raise InputError("this pipeline was built without the object-aware detector")
        EverythingOptions(conf=conf, iou=iou, imgsz=imgsz)  # checks the values
        from .prompts.object_aware import detect_objects

        return self._steps.run(
            "detector", self.device,
            lambda detector, device: detect_objects(
                detector, image_rgb, imgsz=imgsz, conf=conf, iou=iou, max_det=max_det,
                border_threshold=border_threshold, device=device,
            ),
            self.detector,
        )

    # -- segment everything ---------------------------------------------------------------------
    def segment_everything(
        self,
        image: np.ndarray,
        options: EverythingOptions | None = None,
        *,
        embedding: ImageEmbedding | None = None,
        boxes_xyxy: np.ndarray | None = None,
        embeddings: EmbeddingCache | None = None,
        **settings,
    ) -> Segmentation:
        """Find every object in one image plane.

        With ``strategy="object-aware"`` (MobileSAMv2) the detector's boxes (NMS'd,
        best first, at most `max_prompts`) prompt the decoder, one mask each, in
        detector order; nothing is filtered unless a ``min_*`` filter is given.
        ``strategy="grid"`` runs SAM's grid search with `points_per_side`² points.

        Parameters
        ----------
        image : numpy.ndarray
            One plane: grey, RGB or multi-channel, any dtype (see :func:`to_rgb_uint8`).
        options : EverythingOptions, optional
            The settings; default ``EverythingOptions()``.
        embedding : ImageEmbedding, optional
            The plane's embedding, when already computed.
        boxes_xyxy : numpy.ndarray, optional
            (N, 4) box prompts to decode instead of the detector's (e.g. edited boxes).
        embeddings : EmbeddingCache, optional
            On-disk cache of embeddings (:class:`~napari_mobilesamv2.embedding_cache.EmbeddingCache`):
            reused when it holds this image's, else computed and kept.
        **settings
            Settings of :class:`EverythingOptions` (they override `options`), and the
            image conversion keywords of :func:`to_rgb_uint8` (``normalization``,
            ``channel_axis``, ``channels``, ...). With ``tile`` set and a plane larger than
            a tile, the plane is segmented tile by tile (:mod:`napari_mobilesamv2.tiled`).
        """
        options, conversion = _split_settings(options, settings)
        embedding_of = None
        if embedding is not None:
            def embedding_of(key, pixels):
                return embedding
        elif embeddings is not None:
            def embedding_of(key, pixels):
                return embed_cached(self, embeddings, self.prepare_image(pixels, **conversion), key)

        found, = run(segment_planes(self, [()], lambda _: image, options, conversion, embedding_of=embedding_of,
                                    boxes_xyxy=boxes_xyxy, embeddings=embeddings))
        return found

    def segment_everything_steps(
        self,
        image: np.ndarray,
        options: EverythingOptions,
        *,
        embedding: ImageEmbedding | None = None,
        boxes_xyxy: np.ndarray | None = None,
        **conversion,
    ) -> Generator[tuple[str, str], None, Segmentation]:
        """:meth:`segment_everything` as a generator: yields ``(stage, detail)`` after each step.

        The steps are: embedding, detecting, decoding (one step per group of box batches, so a
        caller can stop within about a second on a CPU) and assembling. Returns the
        :class:`Segmentation`.
        """
        if boxes_xyxy is not None and options.strategy != "object-aware":
            raise InputError("box prompts are decoded with the object-aware strategy; choose strategy='object-aware'")
        image_rgb = self.prepare_image(image, **conversion)
        shape = image_rgb.shape[:2]
        if boxes_xyxy is None and image_rgb.min() == image_rgb.max():
            log.warning("the image has the same value everywhere after conversion to 8 bit: no objects to find "
                        "(check the plane, the channels and the normalization)")
            return empty_segmentation(shape, options.strategy)
        if embedding is None:
            embedding = self.embed(image_rgb)
            yield "embedding", "image embedded"
        if options.strategy == "grid":
            result = self._segment_grid(embedding, image_rgb, options)
            yield "decoding", f"{len(result)} grid masks"
            return result
        if boxes_xyxy is None:
            boxes_xyxy, scores = self.detect(image_rgb, conf=options.conf, iou=options.iou, imgsz=options.imgsz)
            boxes_xyxy, scores = boxes_xyxy[:options.max_prompts], scores[:options.max_prompts]
            yield "detecting", f"{len(boxes_xyxy)} boxes"
        else:
            boxes_xyxy = check_boxes(boxes_xyxy, shape)
            scores = np.full(len(boxes_xyxy), np.nan, np.float32)
        decoded = yield from self._decode_box_steps(embedding, boxes_xyxy, options)
        keep = quality_mask(decoded, options.min_predicted_iou, options.min_stability, options.min_area)
        if not keep.all():
            decoded, boxes_xyxy, scores = filter_objects(decoded, keep), boxes_xyxy[keep], scores[keep]
        result = build_segmentation(decoded, boxes_xyxy, scores, shape, "object-aware")
        yield "assembling", f"{len(result)} objects"
        return result

    def decode_boxes(
        self, embedding: ImageEmbedding, boxes_xyxy: np.ndarray, options: EverythingOptions | None = None
    ) -> DecodedMasks:
        """One mask per box (image pixels of the embedded image), in box order; nothing is filtered."""
        boxes_xyxy = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
        return run(self._decode_box_steps(embedding, boxes_xyxy, options or EverythingOptions()))

    def _decode_box_steps(
        self, embedding: ImageEmbedding, boxes_xyxy: np.ndarray, options: EverythingOptions
    ) -> Generator[tuple[str, str], None, DecodedMasks]:
        """Decode boxes; on a CPU in groups of whole batches (results as one call's), one step per group."""
        if self.device.type != "cpu":  # a GPU takes all boxes in one batch; MPS may fall back to the CPU
            decoded = self._steps.run(
                "mask decoder", self.device,
                lambda pe, md, device: decode_boxes(pe, md, embedding.to(device), boxes_xyxy, options.batch_size,
                                                    options.exact),
                self.prompt_encoder, self.mask_decoder,
            )
            yield "decoding", f"decoding boxes {len(boxes_xyxy)} of {len(boxes_xyxy)}"
            return decoded
        batch = options.batch_size or default_chunk(self.device)
        groups = decode_boxes_in_groups(self.prompt_encoder, self.mask_decoder, embedding, boxes_xyxy,
                                        batch * BATCHES_PER_STEP, batch, options.exact)
        while True:
            try:
                done = next(groups)
            except StopIteration as finished:
                return finished.value
            yield "decoding", f"decoding boxes {done} of {len(boxes_xyxy)}"

    def _segment_grid(self, embedding: ImageEmbedding, image_rgb: np.ndarray, options: EverythingOptions) -> Segmentation:
        from .prompts.grid import GRID_DEFAULTS, grid_everything

        found = grid_everything(
            self.prompt_encoder, self.mask_decoder, embedding, image_rgb, points_per_side=options.points_per_side,
            points_per_batch=options.batch_size or GRID_DEFAULTS["points_per_batch"],
            pred_iou_thresh=_or_default(options.min_predicted_iou, GRID_DEFAULTS["pred_iou_thresh"]),
            stability_score_thresh=_or_default(options.min_stability, GRID_DEFAULTS["stability_score_thresh"]),
        )
        decoded = DecodedMasks(found["crops"], found["predicted_iou"], found["stability"], torch.zeros(0))
        boxes, scores = found["boxes_xyxy"], np.full(len(found["crops"]), np.nan, np.float32)
        if options.min_area is not None:
            keep = quality_mask(decoded, min_area=options.min_area)
            decoded, boxes, scores = DecodedMasks(
                [c for c, k in zip(decoded.crops, keep) if k], decoded.predicted_iou[keep], decoded.stability[keep],
                torch.zeros(0),
            ), boxes[keep], scores[keep]
        return build_segmentation(decoded, boxes, scores, image_rgb.shape[:2], "grid")

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




def _or_default(value: float | None, default: float) -> float:
    return default if value is None else value


def _split_settings(options: EverythingOptions | None, settings: dict) -> tuple[EverythingOptions, dict]:
    """`options` with the keyword settings applied, and the remaining (image conversion) keywords."""
    names = {f.name for f in dataclasses.fields(EverythingOptions)}
    changes = {k: v for k, v in settings.items() if k in names}
    conversion = {k: v for k, v in settings.items() if k not in names}
    options = options if options is not None else EverythingOptions()
    return (options.replace(**changes) if changes else options), conversion


def _load_detector_file(path: str | os.PathLike, *, trust_weights: bool, cached: bool) -> tuple[torch.nn.Module, dict]:
    """The detector of `path` and the inference settings it stores.

    A pickle-free detector file (written by ``train_detector``) is read with
    ``weights_only=True`` and cannot run code: it needs no trust. Pickles (the registry's
    ``ObjectAwareModel.pt`` format) go through the sha256 / trust policy of
    :func:`~napari_mobilesamv2.models.weights.load_checked_detector`.
    """
    from .training import is_detector_state, load_detector_state, read_detector_state

    if cached or not is_detector_state(path):
        return weights.load_checked_detector(path, trust_weights=trust_weights, cached=cached), {}
    stored = read_detector_state(path).get("inference") or {}
    settings = {key: stored[key] for key in ("imgsz", "conf", "iou", "min_predicted_iou", "min_stability", "min_area")
                if type(stored.get(key)) in (int, float)}
    return load_detector_state(path), settings
