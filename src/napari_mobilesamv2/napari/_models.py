"""Pipelines and image embeddings kept between runs of the napari widgets.

Building a :class:`~napari_mobilesamv2.MobileSAMv2` loads (and may download)
weights, so pipelines are built lazily, in the worker thread, once per
(encoder, device). Embeddings are the expensive part of a run, so the last few are
kept: refining prompts or decoding edited boxes on the same plane only runs the
mask decoder.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from ..embedding import ImageEmbedding
from ..pipeline import MobileSAMv2
from ..protocols import SegmentationPipeline
from ._qt_env import forget_opencv_qt_paths

#: ``factory(encoder, device, trust_weights) -> SegmentationPipeline``
PipelineFactory = Callable[[str, str, bool], SegmentationPipeline]


def default_factory(encoder: str, device: str, trust_weights: bool) -> MobileSAMv2:
    """Build the pipeline from the registry weights (downloaded on first use)."""
    return MobileSAMv2.from_pretrained(encoder, device=device, trust_weights=trust_weights)


_factory: PipelineFactory = default_factory
_pipelines: dict[tuple[str, str], SegmentationPipeline] = {}
_lock = threading.Lock()


def set_pipeline_factory(factory: PipelineFactory | None) -> None:
    """Choose how the widgets build pipelines; ``None`` restores the default.

    Use it to run the widgets on your own weights or, in tests, on small models::

        set_pipeline_factory(lambda encoder, device, trust_weights: my_pipeline)

    Cached pipelines and embeddings are dropped.
    """
    global _factory
    with _lock:
        _factory = default_factory if factory is None else factory
        _pipelines.clear()
    EMBEDDINGS.clear()


def get_pipeline(encoder: str, device: str = "auto", trust_weights: bool = False) -> SegmentationPipeline:
    """The pipeline for (encoder, device), built by the current factory on first use."""
    key = (encoder, device)
    with _lock:
        if key not in _pipelines:
            _pipelines[key] = _factory(encoder, device, trust_weights)
            forget_opencv_qt_paths()  # building the detector imports cv2
        return _pipelines[key]


class EmbeddingCache:
    """A small thread-safe LRU of image embeddings (about 4 MB each)."""

    def __init__(self, size: int = 8):
        self.size = size
        self._items: OrderedDict[Hashable, ImageEmbedding] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get_or_compute(self, key: Hashable, compute: Callable[[], ImageEmbedding]) -> ImageEmbedding:
        """The cached embedding for `key`, computing and storing it when missing."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        embedding = compute()  # outside the lock: this is the slow part
        with self._lock:
            self._items[key] = embedding
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return embedding

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


EMBEDDINGS = EmbeddingCache()

