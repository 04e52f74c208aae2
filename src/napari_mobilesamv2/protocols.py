"""What the plane engine and the napari side need of a segmentation pipeline.

:class:`~napari_mobilesamv2.MobileSAMv2` is the pipeline; anything with the same
methods (same parameters and defaults) can stand in for it, e.g. a classical
segmenter for tests and demonstrations, or your own models::

    from napari_mobilesamv2.napari import set_pipeline_factory

    set_pipeline_factory(lambda encoder, device, trust_weights: my_pipeline)
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from .options import BORDER_SNAP, MAX_DETECTIONS

if TYPE_CHECKING:
    from .decode.prompted import DecodedMasks, ObjectPrompt
    from .embedding_cache import EmbeddingCache
    from .embedding import ImageEmbedding
    from .options import EverythingOptions
    from .results import Segmentation


@runtime_checkable
class SegmentationPipeline(Protocol):
    """The methods of :class:`~napari_mobilesamv2.MobileSAMv2` that front ends call.

    See :class:`~napari_mobilesamv2.MobileSAMv2` for what each one does.

    Attributes
    ----------
    encoder_name : str
        Name of the image encoder, shown in progress reports.
    """

    encoder_name: str

    def prepare_image(self, image: np.ndarray, **conversion) -> np.ndarray:
        """Any supported image plane as (H, W, 3) uint8 RGB."""
        ...

    def embed(self, image_rgb: np.ndarray) -> ImageEmbedding:
        """Image embedding of a prepared (H, W, 3) uint8 image."""
        ...

    @property
    def encoder_id(self) -> str:
        """Identifies the image encoder's weights (keys cached embeddings)."""
        ...

    def detect(
        self, image_rgb: np.ndarray, *, conf: float = 0.4, iou: float = 0.9, imgsz: int = 1024,
        max_det: int = MAX_DETECTIONS, border_threshold: float = BORDER_SNAP,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) xyxy box prompts and their (N,) scores, best first."""
        ...

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
        """Every object of one image plane."""
        ...

    def decode_boxes(
        self, embedding: ImageEmbedding, boxes_xyxy: np.ndarray, options: EverythingOptions | None = None
    ) -> DecodedMasks:
        """One mask per box on an embedded image, in box order, nothing filtered."""
        ...

    def segment_everything_steps(
        self,
        image: np.ndarray,
        options: EverythingOptions,
        *,
        embedding: ImageEmbedding | None = None,
        boxes_xyxy: np.ndarray | None = None,
        **conversion,
    ) -> Generator[tuple[str, str], None, Segmentation]:
        """:meth:`segment_everything` as a generator of ``(stage, detail)`` steps returning the result."""
        ...

    def segment_prompts(
        self,
        image: np.ndarray,
        objects: list[ObjectPrompt],
        *,
        embedding: ImageEmbedding | None = None,
        **conversion,
    ) -> Segmentation:
        """One mask per object prompt, ids in prompt order."""
        ...

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
        """The objects marked by points and boxes."""
        ...
