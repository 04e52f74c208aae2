"""Reading images and writing label images for the CLI and scripts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from .errors import InputError

TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file (TIFF via tifffile, other formats via scikit-image)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory; give an image file")
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    try:
        if path.name.lower().endswith(TIFF_SUFFIXES):
            return tifffile.imread(path)
        import skimage.io

        return np.asarray(skimage.io.imread(path))
    except Exception as exc:  # every reader has its own exception types
        raise InputError(f"cannot read {path} as an image ({type(exc).__name__}: {exc})") from None


def check_output_path(path: str | os.PathLike, inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Refuse output paths that would overwrite an input or cannot be written."""
    path = Path(path)
    for given in inputs:
        if Path(given).exists() and path.exists() and path.resolve() == Path(given).resolve():
            raise InputError(f"the output {path} is the input image; choose another file name")
    if path.is_dir():
        raise InputError(f"the output {path} is a directory; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"the folder {folder} of the output {path} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"cannot write {path}: permission denied")
    return path


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write a label image as a compressed TIFF, atomically (no half-written file on failure)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        tifffile.imwrite(tmp, labels, compression="zlib", metadata={"axes": "YX" if labels.ndim == 2 else None})
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
