"""A record of the finished tiles of a run, so that an interrupted run can continue.

A tiled run keeps, in a folder next to its output, what each finished tile gave:
the detector's boxes of the first pass and the masks of the second. Every file is
written whole or not at all, so a run stopped by Ctrl+C, a killed process or a
power cut leaves a record that holds only complete tiles. Run again with
``resume=True`` (``--resume``) and the finished tiles are read back instead of
computed: the result is identical to an uninterrupted run's. The record remembers
the image, the settings and the models it belongs to and refuses to continue with
others. The outputs are written only at the end of a run, after which the record is
removed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .decode.masks import MaskCrop
from .decode.prompted import DecodedMasks
from .errors import InputError, OutputError
from .io import atomic_write

SETTINGS_FILE = "run.json"
RECORD_VERSION = 1


def record_folder(output: str | Path) -> Path:
    """Where the record of a run writing `output` lives: ``OUTPUT.run`` next to it."""
    output = Path(output)
    return output.with_name(output.name + ".run")


class RunRecord:
    """Finished tiles of one run.

    Parameters
    ----------
    folder : path-like
        The record's folder (see :func:`record_folder`).
    identity : dict
        JSON-able description of the image, settings and models the run belongs to.
    resume : bool
        Continue from the tiles already in `folder`. Without it any earlier record is
        removed and the run starts over.

    Raises
    ------
    InputError
        `resume` is set and the record in `folder` belongs to another image, other settings
        or other models.
    OutputError
        The folder cannot be written.
    """

    def __init__(self, folder: str | Path, identity: dict[str, Any], *, resume: bool = False):
        self.folder = Path(folder)
        identity = {"version": RECORD_VERSION, **_plain(identity)}
        settings = self.folder / SETTINGS_FILE
        if resume and settings.is_file():
            _refuse_other_run(self.folder, _read_json(settings), identity)
            self.resumed_tiles = len(list(self.folder.glob("*.npz")))
            return
        self.resumed_tiles = 0
        self.discard()
        try:
            self.folder.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(f"cannot create the run record {self.folder}: {exc.strerror or exc}; "
                              "choose an output folder you can write to") from None
        with atomic_write(settings) as tmp:
            tmp.write_text(json.dumps(identity, indent=1, sort_keys=True))

    def boxes(self, plane: tuple[int, ...], tile: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The detector boxes and scores saved for a tile, or None."""
        data = self._read(plane, tile, "boxes")
        return None if data is None else (data["boxes"], data["scores"])

    def save_boxes(self, plane: tuple[int, ...], tile: int, boxes: np.ndarray, scores: np.ndarray) -> None:
        self._write(plane, tile, "boxes", boxes=np.asarray(boxes, np.float32), scores=np.asarray(scores, np.float32))

    def masks(self, plane: tuple[int, ...], tile: int) -> DecodedMasks | None:
        """The masks saved for a tile (image coordinates), or None."""
        data = self._read(plane, tile, "masks")
        if data is None:
            return None
        ends = np.cumsum(data["nbytes"])
        crops = [
            MaskCrop.from_packed(top, left, shape, data["bits"][end - size:end], area)
            for top, left, shape, size, end, area in zip(
                data["top"], data["left"], data["shape"], data["nbytes"], ends, data["area"])
        ]
        return DecodedMasks(crops, data["predicted_iou"], data["stability"], np.zeros(0))

    def save_masks(self, plane: tuple[int, ...], tile: int, masks: DecodedMasks) -> None:
        crops = masks.crops
        self._write(
            plane, tile, "masks",
            top=np.array([c.top for c in crops], np.int64), left=np.array([c.left for c in crops], np.int64),
            shape=np.array([c.shape for c in crops], np.int64).reshape(-1, 2),
            area=np.array([c.area for c in crops], np.int64),
            nbytes=np.array([c.packed.size for c in crops], np.int64),
            bits=np.concatenate([c.packed for c in crops] + [np.zeros(0, np.uint8)]),
            predicted_iou=np.asarray(masks.predicted_iou, np.float32),
            stability=np.asarray(masks.stability, np.float32),
        )

    def arrays(self, plane: tuple[int, ...], tile: int, kind: str) -> dict[str, np.ndarray] | None:
        """Arrays saved under `kind` for a tile (or a whole plane, tile 0), or None."""
        return self._read(plane, tile, kind)

    def save_arrays(self, plane: tuple[int, ...], tile: int, kind: str, **arrays: np.ndarray) -> None:
        """Keep named arrays under `kind` (a word) for a tile or a whole plane, written whole or not at all."""
        self._write(plane, tile, kind, **arrays)

    def discard(self) -> None:
        """Remove the record (after the outputs are complete, or to start over)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _path(self, plane: tuple[int, ...], tile: int, kind: str) -> Path:
        where = "-".join(map(str, plane)) or "0"
        return self.folder / f"{kind}-plane{where}-tile{tile:06d}.npz"

    def _read(self, plane, tile, kind) -> dict | None:
        path = self._path(plane, tile, kind)
        if not path.is_file():
            return None
        try:
            with np.load(path) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # damaged: computed again
            return None

    def _write(self, plane, tile, kind, **arrays) -> None:
        with atomic_write(self._path(plane, tile, kind)) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _refuse_other_run(folder: Path, saved: dict, identity: dict) -> None:
    differing = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
    if differing:
        raise InputError(
            f"the run record {folder} belongs to another run (its {', '.join(differing)} differ); "
            "run without --resume to start over"
        )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _plain(value: Any) -> Any:
    """`value` as JSON types (tuples become lists, numpy scalars numbers), as it reads back."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
