"""Training data for the detector: image/label-image pairs -> boxes -> an Ultralytics YOLO dataset folder.

Each label image marks every object with its own id (0 is background); one object gives one box,
the smallest axis-aligned rectangle holding all pixels of that id. Images are mapped to 8-bit RGB
exactly as for segmentation (:func:`napari_mobilesamv2.imaging.to_rgb_uint8`).

The dataset images are stored so that Ultralytics' loader hands the network the same channel order
as the inference path (:func:`napari_mobilesamv2.prompts.object_aware.detect_objects`), which feeds
the RGB array with its channels reversed, as MobileSAMv2's official code does.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from ..errors import InputError, OutputError
from ..imaging import to_rgb_uint8
from ..io import read_image

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
MIN_IMAGES = 2  # one to learn from, one held out
MIN_OBJECTS = 10
CLASS_NAME = "object"
_LISTED = 5

Source = str | os.PathLike | Sequence[np.ndarray]


@dataclass
class AnnotatedImage:
    """One image of the dataset as written for training.

    Attributes
    ----------
    name : str
        File name (or ``image_000`` ... for in-memory arrays).
    path : pathlib.Path
        The 8-bit PNG in the dataset folder; ``cv2.imread(path)`` returns the RGB array.
    shape : tuple of int
        (height, width) in pixels.
    boxes : numpy.ndarray
        (N, 4) float32 boxes (x0, y0, x1, y1) in pixel-edge coordinates: an object covering
        columns 3..7 has x0 = 3 and x1 = 8.
    labels_path : pathlib.Path, optional
        The label image as a ``.npy`` file (written for the held-out images, to tune the mask
        filters on).
    """

    name: str
    path: Path
    shape: tuple[int, int]
    boxes: np.ndarray
    labels_path: Path | None = None

    def read_rgb(self) -> np.ndarray:
        """The (H, W, 3) uint8 RGB image the detector sees."""
        image = cv2.imread(str(self.path), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"cannot read back the training image {self.path}; was the temporary folder removed?")
        return image

    def read_labels(self) -> np.ndarray:
        """The (H, W) integer label image of the objects."""
        if self.labels_path is None:
            raise InputError(f"the label image of {self.name} was not kept; only held-out images keep theirs")
        try:
            return np.load(self.labels_path, allow_pickle=False)
        except OSError:
            raise InputError(f"cannot read back the label image {self.labels_path}; was the temporary folder "
                             "removed?") from None


@dataclass
class YoloDataset:
    """An Ultralytics detection dataset written by :func:`write_yolo_dataset`.

    Attributes
    ----------
    folder : pathlib.Path
        Root holding ``images/{train,val}``, ``labels/{train,val}`` and ``data.yaml``.
    data_yaml : pathlib.Path
        The dataset description Ultralytics reads.
    train, val : list of AnnotatedImage
        The training images and the held-out validation images.
    """

    folder: Path
    data_yaml: Path
    train: list[AnnotatedImage] = field(default_factory=list)
    val: list[AnnotatedImage] = field(default_factory=list)

    @property
    def n_objects(self) -> tuple[int, int]:
        """(training, validation) object counts."""
        return sum(len(a.boxes) for a in self.train), sum(len(a.boxes) for a in self.val)

    def data_dict(self) -> dict:
        """What ``ultralytics.data.utils.check_det_dataset`` would return for ``data.yaml`` (no downloads)."""
        return {
            "path": self.folder,
            "train": str(self.folder / "images" / "train"),
            "val": str(self.folder / "images" / "val"),
            "nc": 1,
            "names": {0: CLASS_NAME},
            "channels": 3,
            "yaml_file": str(self.data_yaml),
        }


def boxes_from_labels(labels: np.ndarray) -> np.ndarray:
    """Bounding box of every object of a label image, in id order.

    Parameters
    ----------
    labels : numpy.ndarray
        (H, W) non-negative integer label image; 0 is background, every other value one object.

    Returns
    -------
    numpy.ndarray
        (N, 4) float32 boxes (x0, y0, x1, y1) in pixel-edge coordinates (x1, y1 exclusive), one per
        id present, sorted by id.

    Examples
    --------
    >>> labels = np.zeros((6, 8), np.uint16)
    >>> labels[1:3, 2:5] = 7
    >>> boxes_from_labels(labels)
    array([[2., 1., 5., 3.]], dtype=float32)
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"a label image must be a 2D integer array, not {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise InputError("label images must not have negative values; 0 is background, objects are 1, 2, ...")
    ids, compact = np.unique(labels, return_inverse=True)  # compact ids keep find_objects' list short
    compact = compact.reshape(labels.shape) + (0 if ids[0] == 0 else 1)
    slices = [s for s in ndimage.find_objects(compact) if s is not None]
    boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in slices]
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def yolo_lines(boxes: np.ndarray, shape: tuple[int, int]) -> list[str]:
    """YOLO label lines ``0 cx cy w h`` (normalised to the image size) of xyxy pixel-edge boxes."""
    height, width = shape
    lines = []
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64):
        centre_x, centre_y = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
        lines.append(f"0 {centre_x:.6f} {centre_y:.6f} {(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}")
    return lines


def split_indices(n: int, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of `n` items into (train, val) index arrays, each sorted.

    At least one item is held out and at least one kept for training.
    """
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    if n < MIN_IMAGES:
        raise InputError(
            f"{n} annotated image(s) given; at least {MIN_IMAGES} are needed (one is held out to pick the best epoch)"
        )
    n_val = min(max(1, int(round(n * val_fraction))), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def pair_files(images: str | os.PathLike, labels: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Pair the image files of two folders by file name.

    Raises
    ------
    InputError
        A folder is missing or has no images, or files do not pair up (the first few are listed).
    """
    folders = {"images": Path(images), "labels": Path(labels)}
    for role, folder in folders.items():
        if not folder.is_dir():
            raise InputError(f"the {role} folder {folder} does not exist or is not a folder")
    if folders["images"].resolve() == folders["labels"].resolve():
        raise InputError(f"images and labels are both in {folders['images']}; "
                         "give two folders with the same file names")
    names = {role: {p.name: p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)}
             for role, folder in folders.items()}
    if not names["images"]:
        raise InputError(f"the images folder {folders['images']} has no {'/'.join(IMAGE_SUFFIXES)} files")
    no_label = sorted(set(names["images"]) - set(names["labels"]))
    no_image = sorted(set(names["labels"]) - set(names["images"]))
    if no_label or no_image:
        problems = []
        if no_label:
            problems.append(f"{len(no_label)} image(s) without a label image of the same name in "
                            f"{folders['labels']}: {_listed(no_label)}")
        if no_image:
            problems.append(f"{len(no_image)} label image(s) without an image of the same name in "
                            f"{folders['images']}: {_listed(no_image)}")
        raise InputError("image and label files do not pair up: " + "; ".join(problems)
                         + "; each label image needs its image's file name")
    return [(names["images"][n], names["labels"][n]) for n in sorted(names["images"])]


def label_plane(labels: np.ndarray, name: str) -> np.ndarray:
    """A label image as a 2D integer array; RGB(A) label images of equal channels or colour-coded ids are accepted."""
    labels = np.asarray(labels)
    if labels.ndim == 3 and labels.shape[-1] in (3, 4):
        colours = labels[..., :3]
        if (colours == colours[..., :1]).all():
            labels = colours[..., 0]
        else:  # one colour per object, black is background
            packed = (colours.astype(np.int64) * np.array([1 << 32, 1 << 16, 1], np.int64)).sum(-1)
            _, labels = np.unique(packed, return_inverse=True)
            labels = labels.reshape(colours.shape[:2]) + (0 if (packed == 0).any() else 1)
    if labels.ndim != 2:
        raise InputError(f"the label image {name} has shape {labels.shape}; a 2D label image (Y, X) is needed")
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise InputError(f"the label image {name} has non-integer values; save it with integer object ids")
        labels = labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"the label image {name} has dtype {labels.dtype}; save it with integer object ids")
    if labels.size and labels.min() < 0:
        raise InputError(f"the label image {name} has negative values; 0 is background, objects are 1, 2, ...")
    return labels


def write_yolo_dataset(
    images: Source,
    labels: Source,
    folder: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    normalization: str = "auto",
    channel_axis: int | None = None,
) -> YoloDataset:
    """Read image/label-image pairs and write them as an Ultralytics YOLO detection dataset.

    Parameters
    ----------
    images, labels : path-like or sequence of numpy.ndarray
        Two folders whose label images carry their image's file name, or two equally long
        sequences of arrays (images as accepted by :func:`~napari_mobilesamv2.imaging.to_rgb_uint8`,
        (H, W) integer label images).
    folder : path-like
        Empty or new folder to write into (``images/``, ``labels/``, ``data.yaml``).
    val_fraction : float
        Share of the images held out for validation (rounded, at least one image).
    seed : int
        Seed of the split.
    normalization : str
        Intensity mapping to 8 bit (see :mod:`napari_mobilesamv2.imaging`).
    channel_axis : int, optional
        Axis of the channels of the images, when it cannot be guessed.

    Returns
    -------
    YoloDataset

    Raises
    ------
    InputError
        Unpaired files, label images of another shape than their image, empty label images, too
        few images or objects, unreadable files.
    OutputError
        The dataset cannot be written (e.g. the disk is full).
    """
    sources = _sources(images, labels, normalization, channel_axis)
    _, val_index = split_indices(len(sources), val_fraction, seed)
    held_out = set(val_index.tolist())
    boxes = _read_all_boxes(sources)
    folder = Path(folder)
    dataset = YoloDataset(folder, folder / "data.yaml")
    mismatched = []
    for index, (name, read_rgb, read_labels) in enumerate(sources):
        split = "val" if index in held_out else "train"
        rgb = read_rgb()
        label_shape = boxes[index][1]
        if rgb.shape[:2] != label_shape:
            mismatched.append(f"{name} ({label_shape[0]}x{label_shape[1]} label image, "
                              f"{rgb.shape[0]}x{rgb.shape[1]} image)")
            continue
        annotated = AnnotatedImage(name, folder / "images" / split / f"{index:05d}.png", rgb.shape[:2], boxes[index][0])
        _write_pair(annotated, rgb)
        if split == "val":
            annotated.labels_path = _write_labels(folder / "instances" / f"{index:05d}.npy", read_labels())
        (dataset.val if split == "val" else dataset.train).append(annotated)
    if mismatched:
        raise InputError(f"{len(mismatched)} label image(s) differ in size from their image: {_listed(mismatched)}; "
                         "each label image must have its image's height and width")
    _write_text(dataset.data_yaml, f"path: {folder.resolve()}\ntrain: images/train\nval: images/val\n"
                                   f"nc: 1\nnames:\n  0: {CLASS_NAME}\n")
    return dataset


def _sources(
    images: Source, labels: Source, normalization: str, channel_axis: int | None
) -> list[tuple[str, Callable[[], np.ndarray], Callable[[], np.ndarray]]]:
    """(name, read RGB image, read label plane) per pair; nothing is read yet."""

    def from_file(path: Path, convert):
        return lambda: convert(read_image(path), path.name)

    def from_array(array: np.ndarray, name: str, convert):
        return lambda: convert(array, name)

    def rgb(image: np.ndarray, name: str) -> np.ndarray:
        try:
            return to_rgb_uint8(image, channel_axis=channel_axis, normalization=normalization)
        except InputError as error:
            raise InputError(f"image {name}: {error}") from None

    if isinstance(images, (str, os.PathLike)) != isinstance(labels, (str, os.PathLike)):
        raise InputError("give images and labels both as folders or both as lists of arrays")
    if isinstance(images, (str, os.PathLike)):
        pairs = pair_files(images, labels)
        return [(i.name, from_file(i, rgb), from_file(lab, label_plane)) for i, lab in pairs]
    if len(images) != len(labels):
        raise InputError(f"{len(images)} images but {len(labels)} label images; give one label image per image")
    names = [f"image_{i:03d}" for i in range(len(images))]
    return [(n, from_array(i, n, rgb), from_array(lab, n, label_plane)) for n, i, lab in zip(names, images, labels)]


def _read_all_boxes(sources) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Boxes and (H, W) of every label image; empty label images and too few objects are refused."""
    found, empty = [], []
    for name, _, read_labels in sources:
        plane = read_labels()
        boxes = boxes_from_labels(plane)
        if len(boxes) == 0:
            empty.append(name)
        found.append((boxes, plane.shape))
    if empty:
        raise InputError(f"{len(empty)} label image(s) have no objects: {_listed(empty)}; "
                         "label at least one object in each or leave those pairs out")
    total = sum(len(boxes) for boxes, _ in found)
    if total < MIN_OBJECTS:
        raise InputError(f"the label images hold {total} object(s); at least {MIN_OBJECTS} are needed to train "
                         "the detector: label more objects or add images")
    return found


def _write_pair(annotated: AnnotatedImage, rgb: np.ndarray) -> None:
    label_path = annotated.path.parents[2] / "labels" / annotated.path.parent.name / (annotated.path.stem + ".txt")
    for path in (annotated.path, label_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    # written as-is: cv2 takes the array for BGR, so Ultralytics' BGR->RGB flip yields the reversed
    # channels the inference path feeds
    if not cv2.imwrite(str(annotated.path), rgb):
        raise _write_error(annotated.path)
    _write_text(label_path, "\n".join(yolo_lines(annotated.boxes, annotated.shape)) + "\n")


def _write_labels(path: Path, labels: np.ndarray) -> Path:
    """Keep a held-out label image (outside ``images/`` and ``labels/``, which Ultralytics reads)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.ascontiguousarray(labels), allow_pickle=False)
    except OSError as error:
        raise _write_error(path, error) from None
    return path


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        raise _write_error(path, error) from None


def _write_error(path: Path, error: OSError | None = None) -> OutputError:
    if error is None or error.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"cannot write the training data {path}: no space left on the device (or not writable); "
                           "free some space or choose another work folder")
    return OutputError(f"cannot write the training data {path}: {error.strerror or error}")


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown + (f" and {len(items) - _LISTED} more" if len(items) > _LISTED else "")
