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

#: ``factory(encoder, device, trust_weights) -> SegmentationPipeline``; a factory that also takes
#: ``encoder_weights=``, ``decoder_weights=``, ``detector_weights=`` gets the files picked in the widget.
PipelineFactory = Callable[..., SegmentationPipeline]
#: (encoder, decoder, detector) weights files; ``None``: the registry file
WeightsFiles = tuple[str | None, str | None, str | None]
NO_FILES: WeightsFiles = (None, None, None)


def default_factory(
    encoder: str, device: str, trust_weights: bool, *, encoder_weights=None, decoder_weights=None,
    detector_weights=None,
) -> MobileSAMv2:
    """Build the pipeline from the given weights files, else the registry's (downloaded on first use)."""
    return MobileSAMv2.from_pretrained(
        encoder, device=device, trust_weights=trust_weights, encoder_weights=encoder_weights,
        decoder_weights=decoder_weights, detector_weights=detector_weights,
    )


_factory: PipelineFactory = default_factory
_pipelines: dict[tuple, SegmentationPipeline] = {}
_lock = threading.Lock()
_chosen: dict[str, WeightsFiles] = {}


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


def set_weights_files(encoder: str, files: WeightsFiles = NO_FILES) -> None:
    """Use these (encoder, decoder, detector) files for pipelines with `encoder` from now on.

    ``None`` entries mean the registry's files. The model section of the dock sets them.
    """
    with _lock:
        _chosen[encoder] = tuple(str(f) if f else None for f in files)


def weights_files(encoder: str) -> WeightsFiles:
    """The files chosen with :func:`set_weights_files` for `encoder` (``None``: registry files)."""
    with _lock:
        return _chosen.get(encoder, NO_FILES)


def is_loaded(encoder: str, device: str = "auto", files: WeightsFiles | None = None) -> bool:
    """Whether :func:`get_pipeline` has this pipeline ready (nothing to load)."""
    files = weights_files(encoder) if files is None else tuple(files)
    with _lock:
        return (encoder, device, files) in _pipelines


def get_pipeline(
    encoder: str, device: str = "auto", trust_weights: bool = False, files: WeightsFiles | None = None
) -> SegmentationPipeline:
    """The pipeline for (encoder, device, weights files), built by the current factory on first use.

    `files` are (encoder, decoder, detector) weights files; default: the ones chosen with
    :func:`set_weights_files` (``None`` entries: the registry's files).
    """
    files = weights_files(encoder) if files is None else tuple(files)
    key = (encoder, device, files)
    with _lock:
        if key not in _pipelines:
            if any(files):
                names = ("encoder_weights", "decoder_weights", "detector_weights")
                given = {name: path for name, path in zip(names, files) if path}
                _pipelines[key] = _factory(encoder, device, trust_weights, **given)
            else:
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

