"""One image file in, its output files out: the unit of work of the command line and of cluster runs.

:class:`PlaneRun` segments everything in one image file (tile by tile when it is
larger than a tile) and writes its label image and proposals; :func:`write_stack_outputs`
writes those of a linked stack. The command line runs them in its own process, and
:mod:`napari_mobilesamv2.cluster` runs the same code on dask workers, so both give
the same files.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MobileSAMv2Error
from .imaging import MAX_PIXELS
from .options import LARGE_IMAGE_TILE, EverythingOptions, ImageOptions
from .steps import Steps, run

# Labels of large images are painted and written in windows of this many pixels a side.
PAINT_WINDOW = 2048

Driver = Callable[[Steps], Any]


class PlaneRun:
    """Segment everything in one image file and write its outputs (tiled for large images).

    Parameters
    ----------
    model : SegmentationPipeline
        The pipeline.
    path : pathlib.Path
        The image file (or zarr store).
    labels_path, proposals_path : pathlib.Path or None
        Outputs to write.
    image_id : int
        ``image_id`` of the proposals.
    embeddings : EmbeddingCache, optional
        On-disk embedding cache.
    resume : bool
        Continue a tiled run from its record.
    drive : callable, optional
        ``drive(steps)`` runs engine steps to their end and returns the result (e.g. with a
        progress bar); default :func:`~napari_mobilesamv2.steps.run`.
    """

    def __init__(self, model, path: Path, labels_path, proposals_path, image_id: int, embeddings, resume: bool,
                 drive: Driver = run):
        self.model, self.path, self.image_id = model, Path(path), image_id
        self.labels_path, self.proposals_path = labels_path, proposals_path
        self.embeddings, self.resume, self.drive = embeddings, resume, drive

    def segment(self, options: EverythingOptions, image_options: ImageOptions) -> int:
        """Segment the file, write the outputs and return the number of objects."""
        from .large_io import open_image

        options, tiled = self.plan(options)
        if tiled:
            return self.tiled(open_image(self.path), options, image_options.conversion())
        return self.whole(options, image_options.conversion())

    def plan(self, options: EverythingOptions) -> tuple[EverythingOptions, bool]:
        """The options this file is segmented with and whether it is segmented tile by tile.

        An image with more pixels than one untiled run holds gets tiles of
        `LARGE_IMAGE_TILE` pixels when no tile was chosen (with a warning).
        """
        lazy = open_plane(self.path)
        if lazy is not None and options.tile is None and lazy.height * lazy.width > MAX_PIXELS \
                and options.strategy == "object-aware":
            warnings.warn(f"{self.path} has {lazy.height}x{lazy.width} pixels, more than one untiled run holds: "
                          f"segmenting it in tiles of {LARGE_IMAGE_TILE} px (set --tile to choose)", UserWarning,
                          stacklevel=1)
            options = options.replace(tile=LARGE_IMAGE_TILE)
        tiled = options.tile is not None and options.strategy == "object-aware"
        return options, lazy is not None and tiled and max(lazy.height, lazy.width) > options.tile

    def whole(self, options: EverythingOptions, conversion: dict) -> int:
        """Segment the file as one plane (planes larger than a tile are tiled in memory)."""
        from . import engine

        image = read_whole(self.path)
        embedding_of = None
        if self.embeddings is not None:
            def embedding_of(key, pixels):
                rgb = self.model.prepare_image(pixels, **conversion)
                return engine.embed_cached(self.model, self.embeddings, rgb, key)

        result, = self.drive(engine.segment_planes(self.model, [()], lambda _: image, options, conversion,
                                                   embedding_of=embedding_of))
        self.write(result)
        return len(result)

    def record(self, lazy, options: EverythingOptions, conversion: dict, model_id: str):
        """The run record of a tiled run of this file (see :class:`~napari_mobilesamv2.resume.RunRecord`)."""
        from .resume import RunRecord, record_folder

        identity = {"image": file_identity(self.path, lazy), "options": options.to_dict(), "conversion": conversion,
                    "models": model_id}
        return RunRecord(record_folder(self.labels_path or self.proposals_path), identity, resume=self.resume)

    def tiled(self, lazy, options: EverythingOptions, conversion: dict) -> int:
        """Segment the file tile by tile, keeping finished tiles in the run record."""
        from .tiled import segment_tiled_steps

        shape = (lazy.height, lazy.width)
        record = self.record(lazy, options, conversion, self.model.model_id)
        with lazy:
            result = self.drive(segment_tiled_steps(
                self.model, shape, lambda rows, cols: lazy[rows, cols], options, conversion,
                embeddings=self.embeddings, record=record,
            ))
        self.write(result)
        record.discard()
        return len(result)

    def write(self, result) -> None:
        """Write the label image and the proposals of `result`."""
        from .export import coco_results, write_json

        if self.labels_path is not None:
            write_label_image(self.labels_path, result)
        if self.proposals_path is not None:
            write_json(self.proposals_path, coco_results(result, image_id=self.image_id))


def write_stack_outputs(
    found, labels_path: Path | None, proposals_path: Path | None, tracks_path: Path | None = None,
) -> None:
    """Linked labels of a stack (nD), one proposal list (``image_id`` = flat plane index) and,
    for a time series, the tracks table (CSV, see :mod:`napari_mobilesamv2.tracks`)."""
    from .export import stack_coco_results, write_json
    from .io import write_labels

    if labels_path is not None:
        write_labels(labels_path, found.link.labels)
    if proposals_path is not None:
        write_json(proposals_path, stack_coco_results(found.link, found.planes))
    if tracks_path is not None:
        from .stack import linked_table
        from .tracks import tracks_table, write_tracks_csv

        scores = linked_table(found.link, [plane.table() for plane in found.planes])["score"]
        write_tracks_csv(tracks_path, tracks_table(found.link.labels, scores))


def write_label_image(path: Path, result) -> None:
    """Labels of a result into a TIFF or zarr file; a tiled result window by window, atomically."""
    from .io import write_labels
    from .large_io import LabelsWriter

    labels = getattr(result, "labels", None)
    if labels is not None and Path(path).suffix.lower() != ".zarr":
        write_labels(path, labels)
        return
    height, width = result.shape
    with LabelsWriter(path, (height, width)) as writer:
        for y0 in range(0, height, PAINT_WINDOW):
            for x0 in range(0, width, PAINT_WINDOW):
                rows, cols = slice(y0, min(height, y0 + PAINT_WINDOW)), slice(x0, min(width, x0 + PAINT_WINDOW))
                block = labels[rows, cols] if labels is not None else result.paint(rows, cols)[0]
                writer.write((rows, cols), block)


def read_whole(path: Path) -> np.ndarray:
    """All pixels of an image file or zarr store."""
    from .io import read_image
    from .large_io import open_image

    if Path(path).suffix.lower() != ".zarr":
        return read_image(path)
    with open_image(path) as lazy:
        return np.asarray(lazy)


def open_plane(path: Path):
    """The image opened lazily when it is one 2D plane (grey or with channels), else None."""
    from .large_io import open_image

    try:
        lazy = open_image(path)
    except (MobileSAMv2Error, OSError, ValueError):
        return None  # read whole later, with the usual messages
    with lazy:
        plane = len(lazy.shape) == 2 + bool(lazy.has_channels)
    return lazy if plane else None


def file_identity(path: Path, lazy) -> dict:
    """What identifies an input file in a run record: path, shape, dtype, size and modification time."""
    stat = path.stat()
    return {"path": str(path.resolve()), "shape": list(lazy.shape), "dtype": str(lazy.dtype),
            "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
