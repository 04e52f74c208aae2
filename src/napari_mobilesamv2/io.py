"""Reading images and writing label images for the CLI and scripts."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from .errors import InputError, OutputError

TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file (TIFF via tifffile, other formats via scikit-image)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory; give an image file (the command line also takes folders)")
    if not path.is_file():
        raise InputError(f"{path} does not exist; check the path and the file name")
    try:
        if path.name.lower().endswith(TIFF_SUFFIXES):
            image = tifffile.imread(path)
        else:
            import skimage.io

            image = np.asarray(skimage.io.imread(path))
    except Exception as exc:  # every reader has its own exception types
        raise InputError(
            f"cannot read {path} as an image ({type(exc).__name__}: {_first_line(exc)}); "
            "it may be truncated or not an image; save it again as TIFF or PNG"
        ) from None
    if image.size == 0:
        raise InputError(
            f"cannot read {path} as an image: it holds no pixels (shape {image.shape}); "
            "it may be truncated or not an image; save it again as TIFF or PNG"
        )
    return image


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else "no details"


def check_output_path(path: str | os.PathLike, inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Refuse output paths that would overwrite an input or cannot be written.

    Raises
    ------
    OutputError
        The path is an input, a folder, in a folder that does not exist, or not writable.
    """
    path = Path(path)
    for given in inputs:
        if Path(given).exists() and path.exists() and path.resolve() == Path(given).resolve():
            raise OutputError(f"the output {path} is the input image; choose another file name")
    if path.is_dir() and path.suffix.lower() != ".zarr":
        raise OutputError(f"the output {path} is a directory; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        problem = "is a file, not a folder" if folder.exists() else "does not exist"
        raise OutputError(
            f"the folder {folder} of the output {path} {problem}; create the folder or choose another output path"
        )
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"cannot write {path}: permission denied; choose a folder you can write to")
    return path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Write a file completely or not at all.

    Yields a temporary path next to `path`; when the block ends without an error
    the temporary file is renamed onto `path` (an atomic step on one file system).
    On any error the temporary file is removed and an existing file at `path` is
    left as it was.

    Raises
    ------
    OutputError
        The file cannot be written (no permission, disk full, ...).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}; nothing was written") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write a label image as a compressed TIFF, atomically (no half-written file on failure).

    Raises
    ------
    OutputError
        The file cannot be written (e.g. the disk is full); an existing file at `path`
        is left as it was.
    """
    with atomic_write(path) as tmp:
        tifffile.imwrite(tmp, labels, compression="zlib", metadata={"axes": "YX"} if labels.ndim == 2 else None)
