"""Steps of long runs: the progress they report and how to drive them.

Long runs (a plane, a stack, the tiles of a large image) are generators that yield
a :class:`Progress` after every step and return their result, so a caller can show
progress and stop between any two steps by no longer iterating.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

Result = TypeVar("Result")
PlaneKey = tuple[int, ...]


@dataclass(frozen=True)
class Progress:
    """One finished step.

    Attributes
    ----------
    stage : str
        What was done: ``models``, ``embedding``, ``detecting``, ``decoding``,
        ``assembling``, ``plane`` (a plane is finished) or ``linking``.
    done, total : int
        Planes finished and planes in all (``decoding`` also reports boxes in
        `detail`).
    detail : str
        Human-readable, e.g. ``"decoding boxes 64 of 320"``.
    """

    stage: str
    done: int
    total: int
    detail: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


Steps = Generator[Progress, None, Result]


def run(steps: Steps[Result], on_progress: Callable[[Progress], Any] | None = None) -> Result:
    """Drive `steps` to the end; call `on_progress` with every :class:`Progress`; return the result."""
    while True:
        try:
            progress = next(steps)
        except StopIteration as finished:
            return finished.value
        if on_progress is not None:
            on_progress(progress)


def embed_cached(model, cache, image_rgb: np.ndarray, plane: PlaneKey = (), tile: tuple | None = None):
    """The embedding of a prepared image, from the on-disk `cache` when it holds it (else computed and kept).

    The key is the pixels' sha256, the encoder and its weights, the plane and the tile
    (see :func:`~napari_mobilesamv2.embedding_cache.embedding_key`); without a cache the
    embedding is computed.
    """
    if cache is None:
        return model.embed(image_rgb)
    from .embedding_cache import embedding_key

    key = embedding_key(image_rgb, encoder_name=model.encoder_name, weights_sha256=model.encoder_id, plane=plane,
                        tile=tile)
    return cache.get_or_compute(key, lambda: model.embed(image_rgb))
