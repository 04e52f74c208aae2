"""Adapters between napari layers and the core: planes in, labels, boxes and prompts out.

Axis conventions
----------------
A *plane* is the 2D slice the models see: two of the image layer's axes (the
ones displayed in the viewer). The other axes are *stack* axes (z, t, ...) except
an optional *channel* axis, which is read whole and fed to the model as colour.
Planes are indexed by a tuple with one integer per stack axis.

Output labels have the image layer's axes; a channel axis has length 1 there,
stretched (by its scale) over all channels so that the labels overlay every one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Points, Shapes

from ..decode.labels import merge_labels
from ..engine import stack_keys
from ..errors import InputError
from ..imaging import channels_last
from ..large_io import LazyImage, as_lazy
from ..options import ImageOptions

Plane = tuple[int, ...]


@dataclass(frozen=True)
class ImageView:
    """How to read planes of one image layer and where their labels go.

    `contrast_limits` is the layer's at the time the view was made, so that a run
    in a worker thread does not depend on later changes in the viewer.
    """

    layer: Image
    plane_axes: tuple[int, int]
    settings: ImageOptions = field(default_factory=ImageOptions)
    contrast_limits: tuple[float, float] = (0.0, 255.0)

    @property
    def data(self) -> Any:
        return self.layer.data[0] if self.layer.multiscale else self.layer.data

    @property
    def ndim(self) -> int:
        return self.layer.ndim

    @property
    def channel_axis(self) -> int | None:
        return self.settings.channel_axis

    @property
    def stack_axes(self) -> tuple[int, ...]:
        return tuple(a for a in range(self.ndim) if a not in self.plane_axes and a != self.channel_axis)

    @property
    def stack_shape(self) -> tuple[int, ...]:
        return tuple(int(self.data.shape[a]) for a in self.stack_axes)

    @property
    def labels_shape(self) -> tuple[int, ...]:
        shape = [int(n) for n in self.data.shape[: self.ndim]]
        if self.channel_axis is not None:
            shape[self.channel_axis] = 1
        return tuple(shape)

    @property
    def plane_shape(self) -> tuple[int, int]:
        """(H, W) of a plane: the sizes of the two plane axes."""
        rows, cols = self.plane_axes
        return int(self.data.shape[rows]), int(self.data.shape[cols])

    def planes(self) -> list[Plane]:
        """Every plane of the stack, in C order."""
        return stack_keys(self.stack_shape)

    def key(self, plane: Plane) -> tuple:
        """Index of `plane` into the layer data (channels and RGB kept whole)."""
        return self._key(plane, slice(None))

    def labels_key(self, plane: Plane) -> tuple:
        """Index of `plane` into the output labels."""
        return self._key(plane, 0)

    def _key(self, plane: Plane, channel_index) -> tuple:
        if len(plane) != len(self.stack_axes):
            raise InputError(f"a plane of this image needs {len(self.stack_axes)} index(es), got {plane}")
        index: list = [slice(None)] * self.ndim
        for axis, i in zip(self.stack_axes, plane):
            if not 0 <= i < self.data.shape[axis]:
                raise InputError(f"plane index {i} is outside axis {axis} of size {self.data.shape[axis]}")
            index[axis] = int(i)
        if self.channel_axis is not None:
            index[self.channel_axis] = channel_index
        return tuple(index)

    def read(self, plane: Plane) -> np.ndarray:
        """The pixels of one plane (only that plane is read from dask/zarr data)."""
        return np.asarray(self.data[self.key(plane)])

    def window_key(self, plane: Plane, rows: slice, cols: slice) -> tuple:
        """Index of the window ``[rows, cols]`` of `plane` into the layer data."""
        return self._with_window(self.key(plane), rows, cols)

    def labels_window_key(self, plane: Plane, rows: slice, cols: slice) -> tuple:
        """Index of the window ``[rows, cols]`` of `plane` into the output labels."""
        return self._with_window(self.labels_key(plane), rows, cols)

    def _with_window(self, key: tuple, rows: slice, cols: slice) -> tuple:
        index = list(key)
        index[self.plane_axes[0]], index[self.plane_axes[1]] = rows, cols
        return tuple(index)

    def lazy(self) -> LazyImage:
        """The layer's data (the full-resolution level of a multiscale layer), read only where sliced."""
        return as_lazy(self.data, has_channels=bool(self.layer.rgb))

    def read_window(self, plane: Plane, rows: slice, cols: slice) -> np.ndarray:
        """The pixels of one window of a plane, channels last: (h, w) or (h, w, C).

        Only the window is read from numpy, dask, zarr or multiscale data; `rows` and
        `cols` may have a step (a regular subsample).
        """
        pixels = self.lazy()[self.window_key(plane, rows, cols)]
        return channels_last(pixels, self.conversion().get("channel_axis"))

    def window_conversion(self) -> dict:
        """:meth:`conversion` for the channels-last pixels of :meth:`read_window`."""
        return {k: v for k, v in self.conversion().items() if k != "channel_axis"}

    def conversion(self) -> dict:
        """Keyword arguments of :func:`~napari_mobilesamv2.to_rgb_uint8` for a plane."""
        settings = self.settings
        conversion: dict[str, Any] = {"normalization": settings.normalization}
        if settings.normalization == "contrast_limits":
            conversion["contrast_limits"] = self.contrast_limits
        if self.channel_axis is not None:
            kept = sorted((*self.plane_axes, self.channel_axis))
            conversion["channel_axis"] = kept.index(self.channel_axis)
        if settings.channels is not None:
            conversion["channels"] = tuple(settings.channels)
        return conversion

    def cache_key(self, plane: Plane) -> tuple:
        """Identifies the model input of `plane` (layer, data, plane and conversion)."""
        conversion = tuple(sorted(self.conversion().items()))
        return (self.layer.unique_id, id(self.layer.data), self.plane_axes, tuple(plane), conversion)

    def describe(self, plane: Plane) -> str:
        """Readable plane position, e.g. ``"3"`` or ``"1, 3"``; empty for a 2D image."""
        return ", ".join(str(i) for i in plane)

    def labels_transform(self) -> dict[str, Any]:
        """Transform keywords for output layers (labels, boxes, prompts) that overlay the image."""
        layer = self.layer
        scale = np.array(layer.scale, dtype=float)
        translate = np.array(layer.translate, dtype=float)
        if self.channel_axis is not None:
            n = self.data.shape[self.channel_axis]
            translate[self.channel_axis] += scale[self.channel_axis] * (n - 1) / 2
            scale[self.channel_axis] *= n
        return {
            "scale": scale, "translate": translate, "rotate": np.array(layer.rotate), "shear": np.array(layer.shear),
            "affine": layer.affine.affine_matrix.copy(),
        }


def image_view(
    layer: Image, viewer=None, settings: ImageOptions | None = None, plane_axes: Sequence[int] | None = None
) -> ImageView:
    """An :class:`ImageView` whose plane is the one displayed in `viewer`.

    Without a viewer (or `plane_axes`), the plane is made of the layer's last two
    non-channel axes.
    """
    if not isinstance(layer, Image):
        raise InputError(f"{getattr(layer, 'name', layer)!r} is not an image layer")
    settings = settings or ImageOptions()
    channel_axis = settings.channel_axis
    if channel_axis is not None and not 0 <= channel_axis < layer.ndim:
        raise InputError(f"channel axis {channel_axis} does not exist in the {layer.ndim}D layer {layer.name!r}")
    if channel_axis is not None and layer.rgb:
        raise InputError(f"{layer.name!r} is an RGB layer: its colour axis is used, no channel axis is needed")
    if plane_axes is None:
        plane_axes = _displayed_axes(layer, viewer, channel_axis)
    plane_axes = tuple(sorted(int(a) for a in plane_axes))
    if len(plane_axes) != 2 or len(set(plane_axes)) != 2:
        raise InputError(f"a plane needs two different axes, got {plane_axes}")
    if channel_axis in plane_axes:
        raise InputError(
            f"axis {channel_axis} is displayed, so it cannot be the channel axis; "
            "pick a channel axis that has a slider"
        )
    limits = tuple(float(c) for c in layer.contrast_limits)
    view = ImageView(layer, plane_axes, settings, limits)  # type: ignore[arg-type]
    _check_channels(view)
    return view


def _check_channels(view: ImageView) -> None:
    """Refuse channel choices the image does not have, before any work starts."""
    chosen = view.settings.channels
    if chosen is None:
        return
    if view.channel_axis is not None:
        n = view.data.shape[view.channel_axis]
    else:
        n = view.data.shape[-1] if view.layer.rgb else 1
    missing = [c for c in chosen if not -n <= c < n]
    if missing or not 1 <= len(chosen) <= 3:
        raise InputError(
            f"channels {list(chosen)}: choose one to three of the {n} channel(s) of {view.layer.name!r}"
            + ("" if view.channel_axis is not None or view.layer.rgb else " (set the channel axis first)")
        )


def _displayed_axes(layer: Image, viewer, channel_axis: int | None) -> tuple[int, ...]:
    spatial = [a for a in range(layer.ndim) if a != channel_axis]
    if len(spatial) < 2:
        raise InputError(f"{layer.name!r} has fewer than two spatial axes")
    if viewer is None:
        return tuple(spatial[-2:])
    offset = viewer.dims.ndim - layer.ndim
    displayed = [a - offset for a in viewer.dims.displayed[-2:] if a - offset >= 0]
    return tuple(displayed) if len(displayed) == 2 else tuple(spatial[-2:])


def current_plane(view: ImageView, viewer) -> Plane:
    """The plane of `view` at the viewer's current position."""
    if viewer is None:
        return tuple(0 for _ in view.stack_axes)
    position = view.layer.world_to_data(viewer.dims.point)
    return tuple(
        int(np.clip(np.round(position[a]), 0, view.data.shape[a] - 1)) for a in view.stack_axes
    )


# -- labels output ---------------------------------------------------------------------------


def check_output(view: ImageView, labels: Labels | None) -> None:
    """Refuse an output labels layer that cannot hold this image's labels."""
    if labels is None:
        return
    if not isinstance(labels, Labels):
        raise InputError(f"{labels.name!r} is not a labels layer")
    if labels.multiscale or hasattr(labels.data, "dask"):
        raise InputError(
            f"the labels layer {labels.name!r} is read from a file (dask or multiscale data) and cannot be "
            "written here; choose 'new labels layer'"
        )
    if tuple(labels.data.shape) != view.labels_shape:
        raise InputError(
            f"the labels layer {labels.name!r} has shape {tuple(labels.data.shape)}, but labels for "
            f"{view.layer.name!r} need shape {view.labels_shape}; choose 'new labels layer' or a matching layer"
        )
    spatial = [a for a in range(view.ndim) if a != view.channel_axis]
    wanted = view.labels_transform()["scale"]
    if not np.allclose(np.asarray(labels.scale)[spatial], wanted[spatial]):
        raise InputError(
            f"the labels layer {labels.name!r} has scale {_rounded(labels.scale)}, but {view.layer.name!r} has "
            f"scale {_rounded(wanted)}, so its labels would not overlay the image; choose 'new labels layer' or a "
            "layer with the image's scale"
        )


def _rounded(values) -> tuple[float, ...]:
    return tuple(round(float(v), 6) for v in values)


def new_labels_data(view: ImageView) -> np.ndarray:
    """Zeros in the output shape (lazily allocated by the OS, so a big stack costs nothing yet)."""
    return np.zeros(view.labels_shape, dtype=np.int32)


def write_into_layer(layer: Labels, new: np.ndarray, key: tuple, policy: str) -> dict[int, int]:
    """Write `new` labels at `key` of `layer` as ONE undo step (Ctrl+Z restores exactly).

    Ids follow :func:`~napari_mobilesamv2.decode.labels.merge_labels`; for ``new_ids``
    and ``fill_background`` they start after the largest id in the whole layer, not
    only in the written region.

    Returns
    -------
    dict
        id in `new` -> id written into the layer.
    """
    return write_pieces_into_layer(layer, [(key, new)], policy)


def write_pieces_into_layer(layer: Labels, pieces: Sequence[tuple[tuple, np.ndarray]], policy: str) -> dict[int, int]:
    """:func:`write_into_layer` for labels in several disjoint regions ``(key, labels)``, one undo step."""
    layer_max = _max_id(layer)
    id_map: dict[int, int] = {}
    indices, values, dtypes = [], [], [layer.data.dtype]
    for key, new in pieces:
        region = np.asarray(layer.data[key])
        merged, piece_map = merge_into(region, new, policy, layer_max=layer_max)
        id_map.update(piece_map)
        changed = np.nonzero(merged != region)
        indices.append(_full_index(key, changed))
        values.append(merged[changed])
        dtypes.append(merged.dtype)
    wide = np.result_type(*dtypes)
    if wide != layer.data.dtype:
        # The ids do not fit the layer's dtype: widen it (its earlier history stays valid).
        layer.data = np.asarray(layer.data).astype(wide)
    if sum(v.size for v in values):
        index = tuple(np.concatenate(axis) for axis in zip(*indices))
        layer.data_setitem(index, np.concatenate(values).astype(wide))
    return id_map


def set_labels_exactly(layer: Labels, key: tuple, region: np.ndarray, where: np.ndarray) -> None:
    """Set ``layer.data[key]`` to `region` where `where` is True, ids as given, as one undo step."""
    changed = np.nonzero(where)
    values = np.asarray(region)[changed]
    if values.size and np.issubdtype(layer.data.dtype, np.integer) and values.max() > np.iinfo(layer.data.dtype).max:
        layer.data = np.asarray(layer.data).astype(np.result_type(layer.data.dtype, values.dtype))
    if changed[0].size:
        layer.data_setitem(_full_index(key, changed), values.astype(layer.data.dtype))


def merge_into(
    region: np.ndarray, new: np.ndarray, policy: str, layer_max: int | None = None
) -> tuple[np.ndarray, dict[int, int]]:
    """:func:`merge_labels`, with new ids counted after `layer_max` instead of ``region.max()``.

    ``overwrite`` replaces the objects the new ones touch: their pixels in `region` are
    cleared and the new objects get ids after the largest id (so a new object never
    merges with an existing label that happened to have its id).
    """
    if policy == "overwrite":
        shift = int(max(layer_max or 0, region.max(initial=0)))
        touched = np.unique(region[(new > 0) & (region > 0)])
        base = np.where(np.isin(region, touched), 0, region).astype(region.dtype) if touched.size else region
        shifted = np.where(new > 0, new.astype(np.int64) + shift, 0)
        merged, id_map = merge_labels(base, shifted, "overwrite")
        return merged, {i - shift: j for i, j in id_map.items()}
    region_max = int(region.max(initial=0))
    shift = 0 if policy == "overwrite" or layer_max is None else max(0, int(layer_max) - region_max)
    if shift:
        new = np.where(new > 0, new.astype(np.int64) + shift, 0)
    merged, id_map = merge_labels(region, new, policy)
    return merged, {i - shift: j for i, j in id_map.items()}


def _max_id(layer: Labels) -> int:
    return int(np.max(np.asarray(layer.data), initial=0))


def _full_index(key: tuple, region_index: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Turn indices inside ``data[key]`` into indices into ``data`` (slices may start anywhere)."""
    n = region_index[0].size
    region_axes = iter(region_index)
    full = []
    for k in key:
        if isinstance(k, (int, np.integer)):
            full.append(np.full(n, k, dtype=np.intp))
        else:
            full.append(next(region_axes).astype(np.intp) + (k.start or 0))
    full.extend(region_axes)  # axes after the key
    return tuple(full)


def label_counts(regions: Sequence[np.ndarray], top_id: int) -> np.ndarray:
    """Pixels of each label value 0..`top_id` (at least) in disjoint label regions."""
    counts = np.zeros(top_id + 1, np.int64)
    for region in regions:
        found = np.bincount(np.asarray(region).ravel().astype(np.int64), minlength=top_id + 1)
        if len(found) > len(counts):
            counts = np.pad(counts, (0, len(found) - len(counts)))
        counts[: len(found)] += found
    return counts


def object_features(
    table: dict[str, np.ndarray], id_map: dict[int, int], labels: np.ndarray | None = None, *,
    counts: np.ndarray | None = None,
) -> pd.DataFrame:
    """Rows of the labels layer's features for newly written, visible objects.

    ``index`` (napari's key from label value to row) and ``id`` hold the written id;
    ``area`` counts the object's pixels in `labels` after writing, or is read from
    `counts` (pixels per label value, see :func:`label_counts`).
    """
    ids = np.asarray(table["id"], dtype=np.int64)
    written = np.array([id_map.get(int(i), 0) for i in ids], dtype=np.int64)
    if counts is None:
        counts = label_counts([labels], int(written.max(initial=0)))
    counts = np.pad(counts, (0, max(0, int(written.max(initial=0)) + 1 - len(counts))))
    present = (written > 0) & (counts[written] > 0)  # objects hidden by others get no row
    slices = table.get("slice", np.full(len(ids), "", dtype=object))
    frame = pd.DataFrame({
        "index": written,
        "id": written,
        "score": _column(table, "score", len(ids)),
        "predicted_iou": _column(table, "predicted_iou", len(ids)),
        "stability": _column(table, "stability", len(ids)),
        "area": counts[written],
        "slice": np.asarray(slices, dtype=object),
    })
    if "n_planes" in table:
        frame["n_planes"] = np.asarray(table["n_planes"], np.int64)
    return frame[present].reset_index(drop=True)


def _column(table: dict, name: str, n: int) -> np.ndarray:
    return np.asarray(table[name], np.float64) if name in table else np.full(n, np.nan)


def add_features(layer: Labels, rows: pd.DataFrame) -> None:
    """Add rows to `layer.features`, replacing earlier rows of the same ids."""
    old = pd.DataFrame(layer.features)
    if len(old) and "index" not in old:
        old.insert(0, "index", np.arange(len(old)))  # napari's default: row i describes label i
    if len(old):
        old = old[~old["index"].isin(rows["index"])]
        rows = pd.concat([old, rows], ignore_index=True) if len(old) else rows
    layer.features = rows.sort_values("index", kind="stable").reset_index(drop=True)


# -- prompts and boxes -------------------------------------------------------------------------


def to_image_coords(layer, coords: np.ndarray, image: Image) -> np.ndarray:
    """Data coordinates of `layer` (N, D) -> data coordinates of `image` (N, image.ndim)."""
    coords = np.asarray(coords, dtype=float).reshape(-1, layer.ndim)
    if _same_frame(layer, image):
        return coords.copy()
    return np.array([image.world_to_data(layer.data_to_world(c)) for c in coords]).reshape(-1, image.ndim)


def from_image_coords(layer, coords: np.ndarray, image: Image) -> np.ndarray:
    """Data coordinates of `image` -> data coordinates of `layer`."""
    coords = np.asarray(coords, dtype=float).reshape(-1, image.ndim)
    if _same_frame(layer, image):
        return coords.copy()
    return np.array([layer.world_to_data(image.data_to_world(c)) for c in coords]).reshape(-1, layer.ndim)


def _same_frame(layer, image: Image) -> bool:
    if layer.ndim != image.ndim:
        return False
    transforms = ("scale", "translate", "rotate", "shear")
    return all(np.allclose(getattr(layer, t), getattr(image, t)) for t in transforms) and np.allclose(
        layer.affine.affine_matrix, image.affine.affine_matrix
    )


def _on_plane(view: ImageView, coords: np.ndarray, plane: Plane) -> np.ndarray:
    """Which rows of (N, ndim) image coordinates lie on `plane`."""
    on = np.ones(len(coords), dtype=bool)
    for axis, i in zip(view.stack_axes, plane):
        on &= np.round(coords[:, axis]) == i
    return on


def _plane_xy(view: ImageView, coords: np.ndarray) -> np.ndarray:
    """(N, 2) (x, y) pixel coordinates of image coordinates on the plane (x = column)."""
    rows, cols = view.plane_axes
    return np.stack([coords[:, cols], coords[:, rows]], axis=1)


@dataclass
class PointPrompts:
    """Points of one plane: (N, 2) (x, y), 1/0 labels, optional object groups, and
    the points' indices in their layer."""

    points: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None = None
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def points_on_plane(points: Points, view: ImageView, plane: Plane) -> PointPrompts:
    """The points of `points` lying on `plane`.

    A point is negative (background) when the layer has a ``positive`` feature that
    is False for it; all points are positive without that feature. An ``object``
    feature, when present, groups the points of one object.
    """
    coords = to_image_coords(points, points.data, view.layer)
    on = _on_plane(view, coords, plane)
    features = points.features
    positive = np.asarray(features["positive"], bool) if "positive" in features else np.ones(len(coords), bool)
    groups = np.asarray(features["object"])[on] if "object" in features else None
    xy = _inside_pixels(_plane_xy(view, coords[on]), view)
    return PointPrompts(xy, positive[on].astype(np.int64), groups, np.flatnonzero(on))


def _inside_pixels(xy: np.ndarray, view: ImageView) -> np.ndarray:
    """Clip points lying in the outer half of the edge pixels onto the pixel centres."""
    rows, cols = view.plane_axes
    size = np.array([view.data.shape[cols], view.data.shape[rows]], dtype=float)
    inside = (xy >= -0.5) & (xy < size - 0.5)
    return np.where(inside, np.clip(xy, 0, size - 1), xy)


REGION_SHAPES = ("rectangle", "ellipse", "polygon")


def shapes_to_boxes(shapes: Shapes, view: ImageView, plane: Plane) -> tuple[np.ndarray, np.ndarray]:
    """Bounding boxes (N, 4) x0, y0, x1, y1 of the shapes on `plane`, and their indices.

    Rectangles, ellipses and polygons count; lines and paths enclose no region and
    are ignored. napari puts pixel centres at integer coordinates, boxes use pixel
    edges, hence the half-pixel shift (the inverse of :func:`boxes_to_rectangles`).
    """
    boxes, kept = [], []
    for i, (vertices, kind) in enumerate(zip(shapes.data, shapes.shape_type)):
        if kind not in REGION_SHAPES:
            continue
        coords = to_image_coords(shapes, vertices, view.layer)
        if not _on_plane(view, coords, plane).all():
            continue
        xy = _plane_xy(view, coords)
        boxes.append([*(xy.min(0) + 0.5), *(xy.max(0) + 0.5)])
        kept.append(i)
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(kept, np.int64)


def boxes_to_rectangles(boxes_xyxy: np.ndarray, view: ImageView, plane: Plane) -> list[np.ndarray]:
    """napari rectangles (4 vertices in image data coordinates) for pixel-edge boxes."""
    rows, cols = view.plane_axes
    rectangles = []
    for x0, y0, x1, y1 in np.asarray(boxes_xyxy, np.float64).reshape(-1, 4) - 0.5:
        vertices = np.zeros((4, view.ndim))
        for axis, i in zip(view.stack_axes, plane):
            vertices[:, axis] = i
        if view.channel_axis is not None:
            vertices[:, view.channel_axis] = 0
        vertices[:, rows] = [y0, y0, y1, y1]
        vertices[:, cols] = [x0, x1, x1, x0]
        rectangles.append(vertices)
    return rectangles
