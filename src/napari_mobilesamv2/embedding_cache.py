"""An on-disk cache of image embeddings, keyed by pixels, encoder weights and geometry.

The image encoder is the expensive step of a run; the cache keeps its output so that a
second run on the same image (or tile, or plane of a stack) with the same encoder
weights reads it back instead. Entries live in a zarr (format 3) group in one folder:
one float32 array per entry, named by the sha256 of its key, with the full key, the
sizes and a sha256 of the stored bytes in the array's attributes.

An entry is written under a temporary name and renamed into place once its data and
its completion marker are on disk, so a process killed mid-write never leaves an entry
that reads as valid. Entries that do not match their key, or whose bytes changed, are
reported with a warning, removed, and computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from .embedding import ImageEmbedding
from .errors import InputError, OutputError

FORMAT_VERSION = 1
_ROOT_MARKER = "napari_mobilesamv2_embedding_cache"
_TMP_PREFIX = "tmp-"
_STALE_TMP_SECONDS = 3600.0
_CHANNEL_CHUNK = 64

# One lock per folder, shared by every EmbeddingCache of that folder in this process.
_FOLDER_LOCKS: dict[str, threading.RLock] = {}
_FOLDER_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class EmbeddingKey:
    """What an embedding depends on; two equal keys give bitwise equal embeddings.

    Attributes
    ----------
    pixels_sha256 : str
        sha256 of the (H, W, 3) uint8 pixels the encoder sees, C order.
    image_shape : tuple of int
        (H, W) of those pixels.
    encoder_name : str
        Name of the image encoder (e.g. ``"tiny_vit"``).
    weights_sha256 : str
        sha256 of the encoder's weights file, or :func:`module_fingerprint` of the module.
    plane : tuple of int
        Index of the plane in a stack (``()`` for a single image).
    tile : tuple of int or None
        (y0, x0, y1, x1) of the tile in the plane, or None for the whole plane.
    format_version : int
        Version of the cache's entry format.
    """

    pixels_sha256: str
    image_shape: tuple[int, int]
    encoder_name: str
    weights_sha256: str
    plane: tuple[int, ...] = ()
    tile: tuple[int, int, int, int] | None = None
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        """The canonical JSON text of the key (sorted keys, no spaces)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        """sha256 hex digest of :meth:`to_json`: the entry's name in the cache."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()


def embedding_key(
    image_rgb: np.ndarray,
    *,
    encoder_name: str,
    weights_sha256: str,
    plane: tuple[int, ...] = (),
    tile: tuple[int, int, int, int] | None = None,
) -> EmbeddingKey:
    """The cache key of the embedding of `image_rgb` by an encoder.

    Parameters
    ----------
    image_rgb : (H, W, 3) uint8 ndarray
        The pixels the encoder sees (the tile itself when `tile` is given).
    encoder_name : str
        Name of the image encoder.
    weights_sha256 : str
        sha256 of the encoder's weights file, or :func:`module_fingerprint` of the
        encoder module when it was not loaded from a file.
    plane : tuple of int, optional
        Index of the plane in a stack; ``()`` for a single image.
    tile : tuple of 4 int, optional
        (y0, x0, y1, x1) of the tile within the plane; None for the whole plane.

    Returns
    -------
    EmbeddingKey

    Raises
    ------
    InputError
        The image is not (H, W, 3) uint8, or a name, plane or tile is malformed.
    """
    image_rgb = np.asarray(image_rgb)
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise InputError(
            f"the embedding key needs an (H, W, 3) uint8 image, got shape {image_rgb.shape} and dtype "
            f"{image_rgb.dtype}; convert the image to 8-bit RGB first"
        )
    if not encoder_name or not isinstance(encoder_name, str):
        raise InputError("the embedding key needs the encoder's name, a non-empty string")
    if not weights_sha256 or not isinstance(weights_sha256, str):
        raise InputError("the embedding key needs the weights' sha256 (or module_fingerprint), a non-empty string")
    return EmbeddingKey(
        pixels_sha256=hashlib.sha256(np.ascontiguousarray(image_rgb).data).hexdigest(),
        image_shape=(int(image_rgb.shape[0]), int(image_rgb.shape[1])),
        encoder_name=encoder_name,
        weights_sha256=weights_sha256,
        plane=_checked_plane(plane),
        tile=_checked_tile(tile),
    )


def _checked_plane(plane: tuple[int, ...]) -> tuple[int, ...]:
    values = tuple(plane)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in values):
        raise InputError(f"the plane index must be a tuple of non-negative integers, got {plane!r}")
    return tuple(int(v) for v in values)


def _checked_tile(tile: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
    if tile is None:
        return None
    values = tuple(tile)
    integers = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
    if len(values) != 4 or not integers or not (0 <= values[0] < values[2] and 0 <= values[1] < values[3]):
        raise InputError(f"the tile must be (y0, x0, y1, x1) integers with 0 <= y0 < y1 and 0 <= x0 < x1, got {tile!r}")
    return tuple(int(v) for v in values)


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a module's state dict.

    Stands in for the weights file's sha256 when an encoder was built from modules
    rather than loaded from a file: any change of a parameter or buffer changes it.

    Parameters
    ----------
    module : torch.nn.Module

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            header = f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n"
            digest.update(header.encode("utf-8"))
            flat = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


class EmbeddingCache:
    """Image embeddings stored in a zarr group in `folder`, one entry per :class:`EmbeddingKey`.

    Safe to use from several threads (a lock per folder guards store access); an
    embedding being computed by :meth:`get_or_compute` does not hold the lock.

    Parameters
    ----------
    folder : str or os.PathLike
        The cache folder; created if missing. It must be new, empty, or a folder this
        class created before.

    Raises
    ------
    OutputError
        The folder cannot be created or written, or it holds files that are not a cache.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()
        with _FOLDER_LOCKS_GUARD:
            self._lock = _FOLDER_LOCKS.setdefault(str(self.folder.resolve()), threading.RLock())
        with self._lock:
            self._root = _open_root(self.folder)
            self._remove_stale_temporaries()

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.folder)!r})"

    def __contains__(self, key: EmbeddingKey) -> bool:
        """Whether a complete entry of that name is present (its bytes are checked on :meth:`get`)."""
        with self._lock:
            try:
                meta = json.loads((self.folder / key.digest / "zarr.json").read_text("utf-8"))
            except (OSError, ValueError):
                return False
            return isinstance(meta, dict) and meta.get("attributes", {}).get("complete") is True

    def get(self, key: EmbeddingKey) -> ImageEmbedding | None:
        """The cached embedding of `key` (features on the CPU), or None when absent.

        An entry that fails a check (another key, changed or missing bytes, wrong
        shape or dtype, no completion marker) is reported with a ``UserWarning``,
        removed, and None is returned.
        """
        with self._lock:
            if not (self.folder / key.digest).exists():
                return None
            try:
                return self._read_entry(key)
            except _CorruptEntry as exc:
                self._discard(key.digest, str(exc))
                return None

    def put(self, key: EmbeddingKey, embedding: ImageEmbedding) -> None:
        """Store `embedding` under `key`, replacing any entry of that key.

        Raises
        ------
        InputError
            The features are not a float32 (1, C, h, w) tensor, or the original size is
            not the key's image shape.
        OutputError
            The entry cannot be written (e.g. the disk is full); nothing is left behind.
        """
        data = _features_array(embedding)
        if tuple(embedding.original_size) != tuple(key.image_shape):
            raise InputError(
                f"the embedding's original size {tuple(embedding.original_size)} is not the key's image shape "
                f"{tuple(key.image_shape)}; make the key from the image that was embedded"
            )
        attributes = {
            "key": json.loads(key.to_json()),
            "input_size": [int(v) for v in embedding.input_size],
            "original_size": [int(v) for v in embedding.original_size],
            "shape": list(data.shape),
            "dtype": "float32",
            "sha256": hashlib.sha256(data.data).hexdigest(),
        }
        with self._lock:
            self._write_entry(key.digest, data, attributes)

    def get_or_compute(self, key: EmbeddingKey, compute: Callable[[], ImageEmbedding]) -> ImageEmbedding:
        """The cached embedding of `key`, or ``compute()`` stored under `key` and returned.

        A cached embedding has its features on the CPU; a computed one is returned as
        `compute` gave it.
        """
        cached = self.get(key)
        if cached is not None:
            return cached
        embedding = compute()
        self.put(key, embedding)
        return embedding

    def clear(self) -> None:
        """Remove every entry (and leftover temporary entries) from the folder."""
        with self._lock:
            for path in self._entry_paths():
                shutil.rmtree(path, ignore_errors=True)

    def size_bytes(self) -> int:
        """Bytes of all files in the cache folder."""
        with self._lock:
            total = 0
            for dirpath, _, filenames in os.walk(self.folder):
                for name in filenames:
                    try:
                        total += os.stat(os.path.join(dirpath, name)).st_size
                    except OSError:  # removed by another process meanwhile
                        pass
            return total

    def _entry_paths(self) -> list[Path]:
        return [p for p in self.folder.iterdir() if p.is_dir() and _is_entry_name(p.name)]

    def _remove_stale_temporaries(self) -> None:
        # Temporaries younger than this may belong to another process still writing.
        now = time.time()
        for path in self._entry_paths():
            try:
                stale = path.name.startswith(_TMP_PREFIX) and now - path.stat().st_mtime > _STALE_TMP_SECONDS
            except OSError:  # removed by its writer meanwhile
                continue
            if stale:
                shutil.rmtree(path, ignore_errors=True)

    def _read_entry(self, key: EmbeddingKey) -> ImageEmbedding:
        try:
            array = zarr.open_array(self._root.store, path=key.digest, mode="r")
            attrs = dict(array.attrs)
        except Exception as exc:  # zarr raises many types for unreadable metadata
            raise _CorruptEntry(f"has unreadable metadata ({type(exc).__name__})") from None
        _check_attributes(attrs, key, array)
        try:
            data = np.ascontiguousarray(array[...], dtype=np.float32)
        except Exception as exc:  # truncated or unreadable chunks
            raise _CorruptEntry(f"has unreadable data ({type(exc).__name__})") from None
        if hashlib.sha256(data.data).hexdigest() != attrs["sha256"]:
            raise _CorruptEntry("has data whose sha256 is not the one recorded (changed or missing chunks)")
        return ImageEmbedding(
            torch.from_numpy(data),
            (int(attrs["input_size"][0]), int(attrs["input_size"][1])),
            (int(attrs["original_size"][0]), int(attrs["original_size"][1])),
        )

    def _write_entry(self, name: str, data: np.ndarray, attributes: dict) -> None:
        tmp_name = f"{_TMP_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            array = self._root.create_array(
                tmp_name,
                shape=data.shape,
                chunks=(1, min(_CHANNEL_CHUNK, data.shape[1]), data.shape[2], data.shape[3]),
                dtype="float32",
                compressors=None,
                fill_value=float("nan"),
                attributes=attributes,
            )
            array[...] = data
            # The marker goes last: an entry without it was not finished.
            array.attrs.update({"complete": True})
            final = self.folder / name
            if final.exists():
                shutil.rmtree(final)
            os.rename(self.folder / tmp_name, final)
        except OSError as exc:
            raise OutputError(
                f"cannot write an embedding to the cache folder {self.folder}: {exc.strerror or exc}; "
                "free some space or choose another cache folder"
            ) from None
        finally:
            shutil.rmtree(self.folder / tmp_name, ignore_errors=True)

    def _discard(self, name: str, problem: str) -> None:
        warnings.warn(
            f"embedding cache {self.folder}: entry {name} {problem}; removed it, the embedding is computed again",
            UserWarning,
            stacklevel=3,
        )
        shutil.rmtree(self.folder / name, ignore_errors=True)


class _CorruptEntry(Exception):
    """An entry that must not be used; the message says what is wrong."""


def _is_entry_name(name: str) -> bool:
    if name.startswith(_TMP_PREFIX):
        return True
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _open_root(folder: Path) -> zarr.Group:
    """Create or open the cache's root group, refusing folders that hold other things."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create the embedding cache folder {folder}: {exc.strerror or exc}; choose another folder"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot write to the embedding cache folder {folder}: permission denied; choose another folder"
        )
    meta_path = folder / "zarr.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text("utf-8"))
        except (OSError, ValueError):
            meta = None
        if not isinstance(meta, dict) or _ROOT_MARKER not in meta.get("attributes", {}):
            raise OutputError(
                f"{folder} is a zarr store but not an embedding cache; choose another folder (an empty or new one)"
            )
    elif any(folder.iterdir()):
        raise OutputError(f"{folder} holds other files and is not an embedding cache; choose an empty or new folder")
    try:
        return zarr.open_group(str(folder), mode="a", zarr_format=3, attributes={_ROOT_MARKER: FORMAT_VERSION})
    except OSError as exc:
        raise OutputError(
            f"cannot write to the embedding cache folder {folder}: {exc.strerror or exc}; choose another folder"
        ) from None


def _features_array(embedding: ImageEmbedding) -> np.ndarray:
    features = embedding.features
    if features.dtype != torch.float32 or features.ndim != 4 or features.shape[0] != 1:
        raise InputError(
            f"the embedding cache stores (1, C, h, w) float32 features, got {tuple(features.shape)} "
            f"{features.dtype}; convert the features with .float() first"
        )
    return np.ascontiguousarray(features.detach().to("cpu").numpy(), dtype=np.float32)


def _check_attributes(attrs: dict, key: EmbeddingKey, array: zarr.Array) -> None:
    """Raise _CorruptEntry naming the first way the entry's attributes do not fit `key`."""
    if attrs.get("complete") is not True:
        raise _CorruptEntry("has no completion marker (its writing was interrupted)")
    needed = ("key", "input_size", "original_size", "shape", "dtype", "sha256")
    missing = [name for name in needed if name not in attrs]
    if missing:
        raise _CorruptEntry(f"lacks the attributes {', '.join(missing)}")
    if json.dumps(attrs["key"], sort_keys=True, separators=(",", ":")) != key.to_json():
        raise _CorruptEntry("was written for another image or model (its key does not match)")
    if tuple(array.shape) != tuple(attrs["shape"]) or len(array.shape) != 4 or array.shape[0] != 1:
        raise _CorruptEntry(f"has shape {tuple(array.shape)}, not the recorded {tuple(attrs['shape'])}")
    if array.dtype != np.float32 or attrs["dtype"] != "float32":
        raise _CorruptEntry(f"has dtype {array.dtype}, not float32")
    if list(attrs["original_size"]) != list(key.image_shape):
        raise _CorruptEntry(f"has original size {attrs['original_size']}, not the key's {list(key.image_shape)}")
    sizes = [attrs["input_size"], attrs["original_size"]]
    if not all(isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) and v > 0 for v in s) for s in sizes):
        raise _CorruptEntry("has malformed input or original sizes")
