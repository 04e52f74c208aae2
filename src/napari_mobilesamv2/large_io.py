"""Large images a window at a time: lazy reading and out-of-core label writing.

Images of tens of thousands of pixels a side do not fit in memory, so they are
opened lazily and read one window at a time, and label images are written the
same way:

* :func:`open_image` opens a TIFF (also BigTIFF, OME-TIFF and pyramidal TIFF), a
  zarr array or an OME-Zarr image without reading its pixels and returns a
  :class:`LazyImage`; PNG, JPEG, BMP and other small formats are read whole but
  returned through the same interface. :func:`as_lazy` wraps arrays already in
  memory or lazy (numpy, dask, zarr) and napari-style multiscale lists.
* :func:`read_window` reads one rectangle of one plane.
* :class:`LabelsWriter` writes a label image window by window into a zarr array,
  an OME-Zarr image or a tiled, compressed TIFF, and moves it into place only
  when it is complete.
* :func:`open_labels_for_napari` opens a written label image as dask arrays that
  napari shows as a Labels layer without loading it.

Axis convention. An image has the axes ``(*stack, Y, X)`` or ``(*stack, Y, X, C)``:
any number of leading stack axes (z, time, channels stored first, ...), then the
rows and columns of a plane, then, if the last axis holds channels (RGB or a few
channels stored last), the channel axis. A plane is picked by one index per stack
axis; a window always returns every channel of the channel-last axis.

Reading and writing zarr (and compressed TIFF, which is read through tifffile's
zarr interface) needs the ``zarr`` package (version 3).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .errors import InputError, OutputError
from .io import TIFF_SUFFIXES, _first_line, check_output_path, read_image

BIGTIFF_SUFFIXES = (".btf", ".tf2", ".tf8")
ZARR_SUFFIX = ".zarr"
OME_ZARR_SUFFIX = ".ome.zarr"
DEFAULT_CHUNK = 1024
"""Side of the chunks of zarr label outputs (and of the scratch store of TIFF outputs)."""
DEFAULT_TILE = (256, 256)
"""Tile shape of TIFF label outputs."""
BIGTIFF_THRESHOLD = 2**31
"""Uncompressed bytes above which a TIFF output is written as BigTIFF (classic TIFF stops at 4 GiB)."""
TIFF_ZLIB_LEVEL = 1
"""zlib level of TIFF outputs: label images compress well at any level, and level 1 is several times faster than 6."""
NAPARI_PLANE_LIMIT = 4096
"""Largest side :func:`open_labels_for_napari` shows without a multiscale pyramid."""
_CHANNEL_LETTERS = "SC"  # tifffile calls samples of a pixel S, OME calls channels C
_OME_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


# --------------------------------------------------------------------------- reading


class LazyImage:
    """An image whose pixels are read only when sliced.

    ``image[key]`` reads the region that `key` selects (numpy indexing) and returns a
    numpy array; nothing else reads pixels. Use :func:`open_image` or :func:`as_lazy`
    to make one, and :meth:`close` (or a ``with`` block) to release the file.

    Attributes
    ----------
    shape : tuple of int
        Shape of the chosen resolution level, ``(*stack, Y, X)`` or ``(*stack, Y, X, C)``.
    dtype : numpy.dtype
        Pixel type.
    axes : str or None
        One upper-case letter per axis as the file names them (tifffile's and OME's
        letters, e.g. ``"ZYX"``, ``"YXS"``, ``"TCZYX"``); None where the source does not say.
    level : int
        The resolution level read (0 = full resolution).
    level_shapes : tuple of tuple of int
        Shape of every resolution level in the source, finest first.
    has_channels : bool
        Whether the last axis holds channels (C) rather than columns (X).
    source : str
        The path, or a short description of an in-memory source.
    """

    def __init__(
        self,
        array: Any,
        *,
        axes: str | None = None,
        level: int = 0,
        level_shapes: Sequence[Sequence[int]] | None = None,
        has_channels: bool | None = None,
        source: str = "array",
        closer: Callable[[], None] | None = None,
    ) -> None:
        self._array = array
        self.shape: tuple[int, ...] = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.axes = axes.upper() if axes and len(axes) == len(self.shape) else None
        self.level = int(level)
        self.level_shapes = tuple(tuple(int(n) for n in s) for s in level_shapes) if level_shapes else (self.shape,)
        self.source = source
        self._closer = closer
        if has_channels is None:
            has_channels = _infer_channels(self.shape, self.axes)
        self.has_channels = bool(has_channels)
        if len(self.shape) < 2 + self.has_channels:
            raise InputError(
                f"{source} has the shape {self.shape}; an image needs rows and columns"
                + (" besides the channel axis" if self.has_channels else "")
            )
        if 0 in self.shape:
            raise InputError(f"{source} holds no pixels (shape {self.shape}); it may be truncated or not an image")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def stack_shape(self) -> tuple[int, ...]:
        """Shape of the axes in front of (Y, X): one index per axis picks a plane."""
        return self.shape[: self.ndim - 2 - self.has_channels]

    @property
    def height(self) -> int:
        return self.shape[len(self.stack_shape)]

    @property
    def width(self) -> int:
        return self.shape[len(self.stack_shape) + 1]

    @property
    def n_levels(self) -> int:
        return len(self.level_shapes)

    @property
    def array(self) -> Any:
        """The underlying lazy array (zarr array, numpy memmap, dask or numpy array)."""
        return self._array

    def __getitem__(self, key: Any) -> np.ndarray:
        return _read(self._array, key)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        # reads every pixel: only for images known to be small
        pixels = _read(self._array, ...)
        return pixels if dtype is None else pixels.astype(dtype, copy=False)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return (
            f"LazyImage(shape={self.shape}, dtype={self.dtype}, axes={self.axes!r}, "
            f"level={self.level} of {self.n_levels}, source={self.source!r})"
        )

    def to_dask(self, chunks: Sequence[int] | None = None) -> Any:
        """The image as a dask array (for napari), read lazily chunk by chunk.

        Parameters
        ----------
        chunks : sequence of int, optional
            Dask chunk shape; by default the storage chunks, enlarged to at least
            1024 pixels along Y and X, one plane deep.
        """
        import dask.array as da

        if isinstance(self._array, da.Array):
            return self._array if chunks is None else self._array.rechunk(chunks)
        if chunks is None:
            chunks = _dask_chunks(self._array, len(self.stack_shape))
        return da.from_array(self._array, chunks=tuple(chunks), name=False, asarray=True)

    def close(self) -> None:
        """Release the file (the image cannot be read afterwards)."""
        if self._closer is not None:
            closer, self._closer = self._closer, None
            closer()

    def __enter__(self) -> LazyImage:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def open_image(
    path: str | os.PathLike,
    *,
    level: int | None = None,
    array_path: str | None = None,
    has_channels: bool | None = None,
) -> LazyImage:
    """Open an image file or store lazily: no pixels are read until it is sliced.

    Parameters
    ----------
    path : str or path-like
        A TIFF file (``.tif``, ``.tiff``, ``.ome.tif``, BigTIFF ``.btf``), a zarr
        array or group folder (``.zarr``, OME-Zarr), or a small format read whole
        (PNG, JPEG, BMP, ...).
    level : int, optional
        Resolution level of a pyramidal TIFF or OME-Zarr image, 0 (the default)
        being the full resolution.
    array_path : str, optional
        Path of the array (or OME-Zarr image group) inside a zarr group; needed for
        a group that holds several arrays and no OME multiscales metadata.
    has_channels : bool, optional
        Whether the last axis holds channels. By default the file's axes decide
        (``S`` or ``C`` last); without axes, a last axis of 2 to 4 entries in an image
        of 3 or more dimensions is read as channels.

    Returns
    -------
    LazyImage
        Close it (or use it in a ``with`` block) to release the file.

    Raises
    ------
    InputError
        The path does not exist or cannot be read, `level` does not exist (the
        message says how many levels there are), or `array_path` is missing (the
        message lists the arrays found).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; check the path and the file name")
    name = path.name.lower()
    if path.is_dir() or name.endswith(ZARR_SUFFIX):
        return _open_zarr(path, level, array_path, has_channels)
    if array_path is not None:
        raise InputError(f"array_path is for zarr groups; {path} is a single image: leave array_path out")
    if name.endswith(TIFF_SUFFIXES + BIGTIFF_SUFFIXES):
        return _open_tiff(path, level, has_channels)
    pixels = read_image(path)  # small formats: read whole, with io's messages
    _check_level(level, 1, path)
    return LazyImage(pixels, has_channels=has_channels, source=str(path))


def as_lazy(
    data: Any,
    level: int = 0,
    *,
    axes: str | None = None,
    has_channels: bool | None = None,
) -> LazyImage:
    """Wrap an array (numpy, dask, zarr, ...) or a multiscale list as a :class:`LazyImage`.

    Parameters
    ----------
    data : array-like, list of array-like or LazyImage
        One array, or napari's multiscale form: a list (or tuple) of arrays, finest
        first. A :class:`LazyImage` is returned as it is.
    level : int
        Which array of a multiscale list to read (0 = finest).
    axes : str, optional
        One letter per axis (e.g. ``"ZYX"``), when known.
    has_channels : bool, optional
        Whether the last axis holds channels; see :func:`open_image`.

    Raises
    ------
    InputError
        `data` is not array-like, the list is empty, or `level` does not exist.
    """
    if isinstance(data, LazyImage):
        if level not in (0, data.level):
            raise InputError(
                f"this image is already open at level {data.level}; open the source again with level={level}"
            )
        return data
    if isinstance(data, (list, tuple)):
        if not data:
            raise InputError("the multiscale list is empty; give at least the full-resolution array")
        for i, item in enumerate(data):
            _check_array_like(item, f"level {i} of the multiscale list")
        return _pick_level(data, level, "the multiscale list", axes, has_channels)
    _check_array_like(data, "the image")
    _check_level(level, 1, "the array")
    return LazyImage(data, axes=axes, has_channels=has_channels, source=type(data).__name__)


def read_window(
    image: LazyImage | Any,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
    plane: Sequence[int] = (),
) -> np.ndarray:
    """Read rows ``y0:y1`` and columns ``x0:x1`` of one plane, and nothing else.

    Parameters
    ----------
    image : LazyImage or array-like
        Axes ``(*stack, Y, X)`` or ``(*stack, Y, X, C)`` (see :attr:`LazyImage.has_channels`);
        anything else :func:`as_lazy` takes is wrapped first.
    y0, y1, x0, x1 : int
        The window, half-open, inside the plane: ``0 <= y0 < y1 <= height``, likewise for x.
    plane : sequence of int
        One index per stack axis (``image.stack_shape``), e.g. ``(z,)`` for a
        (Z, Y, X) stack or ``(t, z)`` for (T, Z, Y, X); empty for a single plane.

    Returns
    -------
    numpy.ndarray
        ``(y1 - y0, x1 - x0)``, or ``(y1 - y0, x1 - x0, C)`` with every channel.

    Raises
    ------
    InputError
        `plane` has the wrong number of indices or one out of range, or the window
        is empty or not inside the plane.
    """
    image = image if isinstance(image, LazyImage) else as_lazy(image)
    plane = tuple(int(i) for i in plane)
    stack = image.stack_shape
    if len(plane) != len(stack):
        raise InputError(
            f"plane needs one index per stack axis: the image of shape {image.shape}"
            f"{f' (axes {image.axes})' if image.axes else ''} has {len(stack)} stack "
            f"axis/axes of shape {stack}, so give {len(stack)} index/indices, not {len(plane)}"
        )
    for axis, (index, size) in enumerate(zip(plane, stack)):
        if not 0 <= index < size:
            raise InputError(f"plane index {index} of stack axis {axis} is out of range: that axis has {size} entries")
    y0, y1, x0, x1 = (int(v) for v in (y0, y1, x0, x1))
    if not (0 <= y0 < y1 <= image.height and 0 <= x0 < x1 <= image.width):
        raise InputError(
            f"the window rows {y0}:{y1}, columns {x0}:{x1} is empty or not inside the "
            f"{image.height} x {image.width} plane"
        )
    return image[plane + (slice(y0, y1), slice(x0, x1))]


def _read(array: Any, key: Any) -> np.ndarray:
    region = array[key]
    if hasattr(region, "compute"):  # dask
        region = region.compute()
    if isinstance(region, np.memmap):
        return np.array(region)  # a copy, not a view that keeps the file mapped
    return np.asarray(region)


def _pick_level(
    arrays: Sequence[Any], level: int | None, where: str, axes: str | None, has_channels: bool | None
) -> LazyImage:
    index = _check_level(level, len(arrays), where)
    return LazyImage(
        arrays[index],
        axes=axes,
        level=index,
        level_shapes=[a.shape for a in arrays],
        has_channels=has_channels,
        source=f"{where}, level {index}",
    )


def _infer_channels(shape: tuple[int, ...], axes: str | None) -> bool:
    if axes:
        return axes[-1] in _CHANNEL_LETTERS
    return len(shape) >= 3 and 2 <= shape[-1] <= 4


def _check_array_like(data: Any, what: str) -> None:
    if not all(hasattr(data, name) for name in ("shape", "dtype", "__getitem__")):
        raise InputError(f"{what} is a {type(data).__name__}, not an array; give a numpy, dask or zarr array")


def _check_level(level: int | None, n_levels: int, source: Any) -> int:
    if level is None:
        return 0
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, np.integer)) or not 0 <= level < n_levels:
        levels = "only level 0" if n_levels == 1 else f"levels 0 to {n_levels - 1}"
        raise InputError(
            f"level {level!r} does not exist in {source}: it has {n_levels} resolution "
            f"level{'s' if n_levels != 1 else ''} ({levels})"
        )
    return int(level)


def _dask_chunks(array: Any, n_stack: int) -> tuple[int, ...]:
    stored = getattr(array, "chunks", None)
    if not isinstance(stored, tuple) or len(stored) != array.ndim or not all(isinstance(c, int) for c in stored):
        stored = (1,) * array.ndim
    chunks = []
    for axis, size in enumerate(array.shape):
        if axis < n_stack:
            chunks.append(1)
        elif axis < n_stack + 2:
            chunks.append(min(size, max(stored[axis], DEFAULT_CHUNK)))
        else:
            chunks.append(size)
    return tuple(chunks)


def _open_tiff(path: Path, level: int | None, has_channels: bool | None) -> LazyImage:
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises several types for damaged files
        raise InputError(
            f"cannot read {path} as a TIFF ({type(exc).__name__}: {_first_line(exc)}); "
            "it may be truncated or not a TIFF; save it again as TIFF"
        ) from None
    try:
        series = tif.series[0]
        levels = series.levels
        index = _check_level(level, len(levels), path)
        chosen = levels[index]
        shapes = [s.shape for s in levels]
        if chosen.dataoffset is not None:  # uncompressed and contiguous: map the file
            array = tifffile.memmap(path, series=0, level=index, mode="r")
            tif.close()
            closer = None
        else:
            zarr = _import_zarr("read a compressed or tiled TIFF lazily")
            store = series.aszarr(level=index)
            array = zarr.open_array(store, mode="r")

            def closer() -> None:
                store.close()
                tif.close()

        return LazyImage(
            array,
            axes=chosen.axes,
            level=index,
            level_shapes=shapes,
            has_channels=has_channels,
            source=str(path),
            closer=closer,
        )
    except InputError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise InputError(
            f"cannot read the pixels of {path} ({type(exc).__name__}: {_first_line(exc)}); "
            "it may be truncated or use an unsupported layout; save it again as TIFF"
        ) from None


def _import_zarr(purpose: str) -> Any:
    try:
        import zarr
    except ImportError:
        raise InputError(f"the zarr package is needed to {purpose}: pip install 'zarr>=3'") from None
    return zarr


def _open_zarr(path: Path, level: int | None, array_path: str | None, has_channels: bool | None) -> LazyImage:
    zarr = _import_zarr("read zarr stores")
    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:  # zarr raises several types for folders that are not stores
        raise InputError(
            f"cannot read {path} as a zarr array or group ({type(exc).__name__}: {_first_line(exc)}); "
            "give a zarr folder (with zarr.json, .zarray or .zgroup) or an image file"
        ) from None
    where = str(path)
    if array_path is not None:
        node = _zarr_child(zarr, node, array_path, path)
        where = f"{path}/{array_path.strip('/')}"
    if isinstance(node, zarr.Group):
        node, where = _descend_bioformats2raw(zarr, node, where)
        multiscales = _ome_multiscales(node.attrs)
        if multiscales is not None:
            return _open_ome_level(node, multiscales, level, has_channels, where)
        node, where = _single_array(zarr, node, path, where)
    _check_level(level, 1, where)
    return LazyImage(node, axes=_dimension_letters(node), has_channels=has_channels, source=where)


def _zarr_child(zarr: Any, node: Any, array_path: str, path: Path) -> Any:
    if isinstance(node, zarr.Array):
        raise InputError(f"{path} is a single zarr array; array_path is for groups: leave it out")
    try:
        return node[array_path.strip("/")]
    except KeyError:
        found = _array_names(zarr, node)
        raise InputError(
            f"{path} has no array or group {array_path!r}; arrays found: "
            f"{', '.join(found) if found else 'none'}"
        ) from None


def _array_names(zarr: Any, group: Any) -> list[str]:
    return sorted(name for name, member in group.members(max_depth=None) if isinstance(member, zarr.Array))


def _descend_bioformats2raw(zarr: Any, group: Any, where: str) -> tuple[Any, str]:
    # bioformats2raw writes the images as groups 0, 1, ... under a top group without multiscales
    if "bioformats2raw.layout" in group.attrs and _ome_multiscales(group.attrs) is None and "0" in group:
        child = group["0"]
        if isinstance(child, zarr.Group):
            return child, f"{where}/0"
    return group, where


def _ome_multiscales(attrs: Any) -> dict[str, Any] | None:
    """The first multiscales entry of OME-Zarr v0.4 (top level) or v0.5 (under "ome") attrs."""
    ome = attrs.get("ome")
    entries = ome.get("multiscales") if isinstance(ome, dict) else attrs.get("multiscales")
    if isinstance(entries, list) and entries and isinstance(entries[0], dict) and entries[0].get("datasets"):
        return entries[0]
    return None


def _open_ome_level(
    group: Any, multiscales: dict[str, Any], level: int | None, has_channels: bool | None, where: str
) -> LazyImage:
    paths = [str(dataset["path"]) for dataset in multiscales["datasets"]]
    index = _check_level(level, len(paths), where)
    try:
        arrays = [group[p] for p in paths]
    except KeyError as exc:
        raise InputError(
            f"{where} lists the resolution level {exc} in its OME-Zarr metadata but has no such array; "
            "the store is incomplete: write it again"
        ) from None
    names = [axis["name"] if isinstance(axis, dict) else str(axis) for axis in multiscales.get("axes", [])]
    axes = "".join(names) if names and all(len(n) == 1 for n in names) else None
    return _pick_level(arrays, index, where, axes, has_channels)


def _single_array(zarr: Any, group: Any, path: Path, where: str) -> tuple[Any, str]:
    found = _array_names(zarr, group)
    if len(found) == 1:
        return group[found[0]], f"{where}/{found[0]}"
    if not found:
        raise InputError(f"{where} is a zarr group without arrays; give the folder of an image")
    raise InputError(
        f"{where} holds several arrays and no OME-Zarr multiscales metadata; choose one with "
        f"array_path (--array-path on the command line): {', '.join(found)}"
    )


def _dimension_letters(array: Any) -> str | None:
    names = getattr(array.metadata, "dimension_names", None)
    if names and all(isinstance(n, str) and len(n) == 1 for n in names):
        return "".join(names)
    return None


# --------------------------------------------------------------------------- writing


class LabelsWriter:
    """Write a label image window by window, and into place only when complete.

    The output format follows the name: ``.zarr`` gives a chunked zarr array (or an
    OME-Zarr image, see `ome`), ``.tif``/``.tiff`` a tiled, zlib-compressed TIFF
    (BigTIFF when it may exceed 4 GiB). Everything is written next to the output
    under the name ``OUTPUT.partial`` (a TIFF output also keeps its windows in the
    folder ``OUTPUT.partial.blocks`` until :meth:`commit` writes the file tile by
    tile), so an existing output is replaced only by :meth:`commit`. After a crash
    the previous output is still there, with ``.partial`` leftovers that the next
    writer for the same output removes. Memory use does not grow with the image.
    A name ending in ``.ome.tif`` or ``.ome.tiff`` gets OME-XML metadata.

    Windows aligned to the chunks are written fastest; windows written from several
    threads at once must not share a chunk (``chunks``; for TIFF outputs, bands of
    ``tile[0]`` rows).

    Use it in a ``with`` block: leaving it normally commits, an exception discards
    the new output and keeps the previous one.

    Parameters
    ----------
    path : str or path-like
        Output path ending in ``.zarr``, ``.ome.zarr``, ``.tif`` or ``.tiff``.
    shape : sequence of int
        Full shape of the label image: ``(H, W)`` or a stack such as ``(Z, H, W)``.
    dtype : numpy dtype
        Integer type of the labels (int32 by default).
    chunks : sequence of int, optional
        Zarr chunk shape; by default 1024 x 1024 in Y and X and one plane deep.
    ome : bool, optional
        Write an OME-Zarr image (a group whose array ``0`` holds the labels, with
        OME-Zarr 0.4 multiscales metadata) instead of a plain array; by default only
        for names ending in ``.ome.zarr``.
    axes : str, optional
        One letter per axis (``"yx"``, ``"zyx"``, ``"tzyx"``, ...), stored in the
        metadata; by default ``yx`` preceded by ``z`` and ``t``.
    tile : (int, int)
        TIFF tile shape, multiples of 16.

    Raises
    ------
    OutputError
        The folder does not exist or cannot be written, or the output exists and
        is not a file (TIFF) or zarr store (zarr) this writer may replace.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        shape: Sequence[int],
        *,
        dtype: Any = np.int32,
        chunks: Sequence[int] | None = None,
        ome: bool | None = None,
        axes: str | None = None,
        tile: tuple[int, int] = DEFAULT_TILE,
    ) -> None:
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        if len(self.shape) < 2 or min(self.shape) < 1:
            raise ValueError(f"a label image needs rows and columns, not the shape {self.shape}")
        if self.dtype.kind not in "iu":
            raise ValueError(f"labels are integers, not {self.dtype}")
        self.format = _output_format(self.path, ome)
        self.axes = _label_axes(axes, len(self.shape))
        self.chunks = _label_chunks(chunks, self.shape)
        self.tile = tuple(int(t) for t in tile)
        if len(self.tile) != 2 or any(t < 16 or t % 16 for t in self.tile):
            raise ValueError(f"TIFF tiles are multiples of 16 pixels, not {tile}")
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._blocks = self.path.with_name(self.path.name + ".partial.blocks")
        self._check_target()
        self._state = "open"
        with self._cleanly():
            _remove_leftovers(self.path)
            self._array = self._create()

    # public --------------------------------------------------------------------

    def write(self, window: Sequence[int | slice], block: np.ndarray) -> None:
        """Store `block` at `window` of the label image.

        Parameters
        ----------
        window : tuple of int or slice
            One entry per axis of the full shape, e.g. ``(slice(y0, y1), slice(x0, x1))``
            or ``(z, slice(y0, y1), slice(x0, x1))``; slices have step 1.
        block : numpy.ndarray
            Labels of the window's shape; any integer type whose values fit `dtype`.

        Raises
        ------
        OutputError
            Writing failed (e.g. the disk is full); the partial output is removed
            and the previous output kept.
        """
        self._require_open()
        window = tuple(window)
        expected = _window_shape(window, self.shape)
        block = np.asarray(block)
        if block.shape != expected:
            raise ValueError(f"the block has the shape {block.shape}, the window {window} needs {expected}")
        block = _as_labels(block, self.dtype)
        with self._cleanly():
            self._array[window] = block

    def read(self, window: Sequence[int | slice]) -> np.ndarray:
        """Labels written so far at `window` (0 where nothing was written)."""
        self._require_open()
        window = tuple(window)
        _window_shape(window, self.shape)
        with self._cleanly():
            return np.asarray(self._array[window])

    def commit(self) -> Path:
        """Finish the output and move it into place, replacing an existing one.

        Returns
        -------
        pathlib.Path
            The output path.

        Raises
        ------
        OutputError
            As :meth:`write`; an existing output is replaced only once the new one is complete.
        """
        self._require_open()
        with self._cleanly():
            if self.format == "tiff":
                self._write_tiff()
                os.replace(self._partial, self.path)
                shutil.rmtree(self._blocks)
            else:
                _replace_folder(self._partial, self.path)
        self._state = "committed"
        return self.path

    def abort(self) -> None:
        """Discard what was written; an existing output stays as it was."""
        if self._state == "open":
            self._state = "aborted"
            for leftover in (self._partial, self._blocks):
                _remove(leftover)

    def __enter__(self) -> LabelsWriter:
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.commit()

    # private -------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"this writer of {self.path} is {self._state}; open a new LabelsWriter")

    @contextlib.contextmanager
    def _cleanly(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            self.abort()
            raise OutputError(_describe_failure(self.path, exc)) from None

    def _check_target(self) -> None:
        if self.format == "tiff":
            check_output_path(self.path)
            return
        folder = self.path.parent
        if not folder.is_dir():
            problem = "is a file, not a folder" if folder.exists() else "does not exist"
            raise OutputError(
                f"the folder {folder} of the output {self.path} {problem}; "
                "create the folder or choose another output path"
            )
        if not os.access(folder, os.W_OK):
            raise OutputError(f"cannot write {self.path}: permission denied; choose a folder you can write to")
        if self.path.exists() and not _is_zarr_store(self.path):
            raise OutputError(
                f"the output {self.path} exists and is not a zarr store, so it is not replaced; "
                "choose another output path"
            )

    def _create(self) -> Any:
        zarr = _import_zarr("write zarr outputs")
        common = {"shape": self.shape, "dtype": self.dtype, "fill_value": 0, "overwrite": True}
        if self.format == "tiff":
            # one scratch chunk per band of tiles, so that each chunk is decoded once at commit
            band = (1,) * (len(self.shape) - 2) + (self.tile[0], self.tile[1] * max(1, DEFAULT_CHUNK // self.tile[1]))
            return zarr.create_array(store=self._blocks, chunks=_label_chunks(band, self.shape), **common)
        if self.format == "zarr":
            return zarr.create_array(
                store=self._partial, chunks=self.chunks, dimension_names=tuple(self.axes), **common
            )
        # OME-Zarr 0.4 is zarr format 2 with "/" between chunk indices
        group = zarr.open_group(self._partial, mode="w", zarr_format=2)
        group.attrs["multiscales"] = [_ome_metadata(self.axes, self.path)]
        return group.create_array(
            "0", chunks=self.chunks, chunk_key_encoding={"name": "v2", "separator": "/"}, **common
        )

    def _write_tiff(self) -> None:
        bigtiff = self.dtype.itemsize * math.prod(self.shape) > BIGTIFF_THRESHOLD
        workers = min(4, os.cpu_count() or 1)
        # tifffile buffers up to `buffersize` bytes of tiles for its threads (hundreds of MiB by default)
        buffersize = 4 * workers * self.dtype.itemsize * math.prod(self.tile)
        ome = self.path.name.lower().endswith((".ome.tif", ".ome.tiff"))  # tifffile can't tell from the temporary name
        with tifffile.TiffWriter(self._partial, bigtiff=bigtiff, ome=ome) as tiff:
            tiff.write(
                _tiles(self._array, self.tile),
                shape=self.shape,
                dtype=self.dtype,
                tile=self.tile,
                compression="zlib",
                compressionargs={"level": TIFF_ZLIB_LEVEL},
                maxworkers=workers,
                buffersize=buffersize,
                photometric="minisblack",
                metadata={"axes": self.axes.upper()},
            )


def open_labels_for_napari(path: str | os.PathLike, *, multiscale: bool | None = None) -> Any:
    """Open a label image lazily for a napari Labels layer.

    Parameters
    ----------
    path : str or path-like
        A label image written by :class:`LabelsWriter` (or any image
        :func:`open_image` reads).
    multiscale : bool, optional
        Return a pyramid (a list of dask arrays, finest first), which napari shows
        without reading the whole image. By default a pyramid is returned when the
        file holds several resolution levels or a plane is larger than
        :data:`NAPARI_PLANE_LIMIT` on a side; coarser levels it does not hold are
        taken by keeping every 2nd, 4th, ... pixel (labels are never blended).

    Returns
    -------
    dask.array.Array or list of dask.array.Array
        Read chunk by chunk as napari displays it.

    Raises
    ------
    InputError
        The path does not exist or cannot be read.
    """
    first = open_image(path, has_channels=False)
    if multiscale is False:
        return first.to_dask()
    levels = [first.to_dask()]
    for index in range(1, first.n_levels):
        levels.append(open_image(path, level=index, has_channels=False).to_dask())
    if len(levels) == 1 and max(first.height, first.width) > NAPARI_PLANE_LIMIT:
        step = 2
        while max(first.height, first.width) / (step / 2) > NAPARI_PLANE_LIMIT:
            coarse = LazyImage(_EveryNth(first.array, step), has_channels=False, source=f"{path}, every {step}th pixel")
            levels.append(coarse.to_dask())
            step *= 2
    if multiscale is None and len(levels) == 1:
        return levels[0]
    return levels


class _EveryNth:
    """Every `step`-th row and column of an array, read on demand: a coarse level of a label pyramid.

    Slicing it reads only the pixels kept (a strided read of the source), unlike a
    strided dask view, which reads whole source chunks into memory first.
    """

    def __init__(self, array: Any, step: int) -> None:
        self._array = array
        self._step = step
        *stack, height, width = array.shape
        self.shape = (*stack, -(-height // step), -(-width // step))
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        *stack, rows, cols = key
        if not all(isinstance(k, slice) for k in (rows, cols)):
            raise IndexError("rows and columns of a pyramid level are read with slices")
        source = []
        for index, size in zip((rows, cols), self.shape[-2:]):
            start, stop, step = index.indices(size)
            source.append(slice(start * self._step, stop * self._step, step * self._step))
        return np.asarray(self._array[tuple(stack) + tuple(source)])


def _output_format(path: Path, ome: bool | None) -> str:
    name = path.name.lower()
    if name.endswith(ZARR_SUFFIX):
        if ome is None:
            ome = name.endswith(OME_ZARR_SUFFIX)
        return "ome-zarr" if ome else "zarr"
    if name.endswith(TIFF_SUFFIXES + BIGTIFF_SUFFIXES):
        if ome:
            raise OutputError(f"OME-Zarr output needs a name ending in .zarr, not {path.name}")
        return "tiff"
    raise OutputError(f"cannot tell the output format of {path}: end its name with .zarr, .ome.zarr, .tif or .tiff")


def _label_axes(axes: str | None, ndim: int) -> str:
    if axes is None:
        if ndim > 4:
            raise ValueError(f"give the axes of a {ndim}-dimensional label image, e.g. axes='tczyx'")
        return "tzyx"[-ndim:]
    axes = axes.lower()
    if len(axes) != ndim or len(set(axes)) != ndim:
        raise ValueError(f"axes {axes!r} must name each of the {ndim} axes once")
    return axes


def _label_chunks(chunks: Sequence[int] | None, shape: tuple[int, ...]) -> tuple[int, ...]:
    if chunks is None:
        chunks = (1,) * (len(shape) - 2) + (DEFAULT_CHUNK, DEFAULT_CHUNK)
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != len(shape) or min(chunks) < 1:
        raise ValueError(f"chunks {chunks} must give a positive size for each of the {len(shape)} axes")
    return tuple(min(c, n) for c, n in zip(chunks, shape))


def _ome_metadata(axes: str, path: Path) -> dict[str, Any]:
    suffix = OME_ZARR_SUFFIX if path.name.lower().endswith(OME_ZARR_SUFFIX) else ZARR_SUFFIX
    return {
        "version": "0.4",
        "name": path.name[: -len(suffix)],
        "axes": [{"name": a, **({"type": _OME_AXIS_TYPES[a]} if a in _OME_AXIS_TYPES else {})} for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * len(axes)}]}],
    }


def _window_shape(window: tuple[int | slice, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(window) != len(shape):
        raise ValueError(f"the window {window} needs one entry per axis of the shape {shape}")
    out = []
    for index, size in zip(window, shape):
        if isinstance(index, slice):
            start, stop, step = index.indices(size)
            if step != 1 or (index.start is not None and not 0 <= index.start <= size) or (
                index.stop is not None and not 0 <= index.stop <= size
            ):
                raise ValueError(f"the window {window} is not inside the shape {shape} (or has a step)")
            out.append(max(0, stop - start))
        elif isinstance(index, (int, np.integer)) and 0 <= index < size:
            continue
        else:
            raise ValueError(f"the window {window} is not inside the shape {shape}")
    return tuple(out)


def _as_labels(block: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if block.dtype.kind not in "iub":
        raise ValueError(f"labels are integers, not {block.dtype}")
    if block.size and not np.can_cast(block.dtype, dtype, casting="safe"):
        info = np.iinfo(dtype)
        low, high = int(block.min()), int(block.max())
        if low < info.min or high > info.max:
            raise ValueError(f"labels {low}..{high} do not fit {dtype}; open the writer with a wider dtype")
    return block.astype(dtype, copy=False)


def _tiles(array: Any, tile: tuple[int, ...]) -> Iterator[np.ndarray]:
    """Tiles of every plane in TIFF order (rows of tiles, left to right), one band of chunks at a time."""
    tile_h, tile_w = tile
    height, width = array.shape[-2:]
    band_w = tile_w * max(1, array.chunks[-1] // tile_w)
    for plane in np.ndindex(*array.shape[:-2]):
        for y in range(0, height, tile_h):
            for x0 in range(0, width, band_w):
                band = np.asarray(array[plane + (slice(y, y + tile_h), slice(x0, x0 + band_w))])
                for x in range(0, band.shape[1], tile_w):
                    yield band[:, x : x + tile_w]


def _describe_failure(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        problem = "the disk is full; free some space or write to another disk"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        problem = "permission denied; choose a folder you can write to"
    else:
        problem = f"{exc.strerror or _first_line(exc)}"
    return f"cannot write {path}: {problem}; nothing was written (an existing output is kept)"


def _is_zarr_store(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray"))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_leftovers(path: Path) -> None:
    """Remove what an interrupted writer of `path` left; restore an output moved aside mid-commit."""
    for suffix in (".partial", ".partial.blocks"):
        _remove(path.with_name(path.name + suffix))
    previous = path.with_name(path.name + ".previous")
    if _is_zarr_store(previous):
        if path.exists():
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(previous, path)


def _replace_folder(new: Path, target: Path) -> None:
    """Move the folder `new` onto `target`; an existing `target` is removed only once `new` is in place."""
    previous = target.with_name(target.name + ".previous")
    if target.exists():
        os.replace(target, previous)  # a folder cannot be renamed over a non-empty one
    try:
        os.replace(new, target)
    except OSError:
        if previous.exists():
            os.replace(previous, target)
        raise
    shutil.rmtree(previous, ignore_errors=True)
