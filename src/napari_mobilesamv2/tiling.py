"""Building blocks of tiled "segment everything" for images too large to segment in one piece.

The image is cut into overlapping square tiles (:func:`tile_grid`). Each tile is
embedded and run through the object-aware detector at native resolution; the
boxes of all tiles are merged into one list in image coordinates
(:func:`merge_tile_boxes`); each kept box is decoded on the embedding of a tile
that holds it whole (:func:`owner_tile`), and the masks are moved back to image
coordinates (:func:`shift_crop`) and painted with the usual rule (largest first),
window by window if the label image does not fit in memory (:func:`paint_window`).

Coordinates: boxes are ``(x0, y0, x1, y1)`` floats whose end is exclusive in the
pixel-edge sense (a box covering pixel columns 10..19 is ``x0=10, x1=20``), as the
detector returns them. Tiles and windows are integer ``[y0, y1) x [x0, x1)`` ranges.

An object at most ``overlap`` pixels high and wide lies whole inside at least one
tile: choose the overlap at least as large as the largest objects.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .decode.labels import paint_order
from .decode.masks import MaskCrop, crop_to_content
from .errors import InputError

TILE_MIN = 256
CUT_MARGIN = 2.0
PAIR_BUDGET = 1_000_000  # candidate box pairs examined at once when searching for overlaps


class TileEdges(NamedTuple):
    """One bool per side of a tile, in box order (left, top, right, bottom)."""

    left: bool
    top: bool
    right: bool
    bottom: bool


@dataclass(frozen=True)
class Tile:
    """A rectangle ``[y0, y1) x [x0, x1)`` of the image, in pixels.

    Attributes
    ----------
    index : int
        Position in the row-major grid (``row * n_cols + col``).
    row, col : int
        Position of the tile in the grid.
    y0, x0, y1, x1 : int
        First and one-past-last pixel row and column.
    """

    index: int
    row: int
    col: int
    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices that cut the tile out of the image: ``image[tile.slices]``."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def box_xyxy(self) -> np.ndarray:
        """(4,) float64 ``(x0, y0, x1, y1)`` of the tile in image coordinates."""
        return np.array([self.x0, self.y0, self.x1, self.y1], dtype=np.float64)

    def interior_edges(self, image_shape: tuple[int, ...]) -> TileEdges:
        """Which sides of the tile lie strictly inside the image (not on the image border).

        Parameters
        ----------
        image_shape : tuple of int
            (H, W, ...) of the image.

        Returns
        -------
        TileEdges
            ``(left, top, right, bottom)``: True where the image continues beyond that side.
        """
        height, width = int(image_shape[0]), int(image_shape[1])
        return TileEdges(self.x0 > 0, self.y0 > 0, self.x1 < width, self.y1 < height)


@dataclass
class MergedBoxes:
    """Boxes of all tiles after merging, in image coordinates.

    Rows are sorted by decreasing `score`; equal scores keep the order of their
    source (tile index, then position in that tile's detector output). With one tile
    covering the image, the rows are the detector's boxes in the detector's order.

    Attributes
    ----------
    boxes_xyxy : numpy.ndarray
        (N, 4) float32 boxes in image pixels.
    score : numpy.ndarray
        (N,) float32 detector scores.
    tile : numpy.ndarray
        (N,) int64 ``Tile.index`` of the tile whose detector found the box (for a
        box joined from pieces: the tile of its best-scored piece).
    source : numpy.ndarray
        (N,) int64 row of the box in that tile's detector output.
    cut : numpy.ndarray
        (N,) bool; True when no tile saw the object whole: every view of it touched a
        tile side inside the image (an object larger than the overlap).
    pieces : numpy.ndarray
        (N,) int64 number of tile boxes joined into this box (1 for most boxes; more
        for an object larger than the overlap seen cut in several tiles).
    """

    boxes_xyxy: np.ndarray
    score: np.ndarray
    tile: np.ndarray
    source: np.ndarray
    cut: np.ndarray
    pieces: np.ndarray

    def __len__(self) -> int:
        return int(self.score.shape[0])


def check_tiling(tile: int, overlap: int) -> tuple[int, int]:
    """Validate a tile size and overlap.

    Parameters
    ----------
    tile : int
        Side of the square tiles in pixels, at least :data:`TILE_MIN`.
    overlap : int
        Pixels shared by neighbouring tiles: ``0 <= overlap < tile / 2``.

    Returns
    -------
    tile, overlap : int
        The values as Python ints.

    Raises
    ------
    InputError
        When a value is not a whole number or is out of range.
    """
    tile, overlap = _whole_number("tile", tile), _whole_number("overlap", overlap)
    if tile < TILE_MIN:
        raise InputError(
            f"tile must be at least {TILE_MIN} px (got {tile}); use a larger tile, or segment the image "
            "without tiling"
        )
    if overlap < 0 or 2 * overlap >= tile:
        raise InputError(
            f"overlap must be from 0 to {(tile - 1) // 2} px, less than half the tile of {tile} px "
            f"(got {overlap}); make it at least as large as the objects"
        )
    return tile, overlap


def _whole_number(name: str, value) -> int:
    if isinstance(value, bool):
        raise InputError(f"{name} must be a whole number of pixels, not {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise InputError(f"{name} must be a whole number of pixels, not {value!r}") from None


def _axis_starts(length: int, tile: int, stride: int) -> list[int]:
    """First pixel of each tile along one axis; the last tile ends at `length`."""
    if tile >= length:
        return [0]
    return [*range(0, length - tile, stride), length - tile]


def tile_grid(shape: tuple[int, ...], tile: int, overlap: int) -> list[Tile]:
    """Overlapping square tiles that cover an image.

    Tiles are `tile` x `tile` pixels, placed every ``tile - overlap`` pixels; the last
    row and column of tiles is moved back so it ends exactly at the image edge, so no
    tile is smaller than `tile` (neighbours there share more than `overlap`). Along an
    axis shorter than `tile`, the tiles span the whole axis. An image no larger than
    one tile gives one tile covering it.

    Parameters
    ----------
    shape : tuple of int
        (H, W, ...) of the image.
    tile : int
        Side of the tiles in pixels (see :func:`check_tiling`).
    overlap : int
        Pixels shared by neighbouring tiles.

    Returns
    -------
    list of Tile
        In row-major order; ``tiles[k].index == k``.

    Examples
    --------
    >>> [(t.y0, t.x0, t.y1, t.x1) for t in tile_grid((300, 700), 256, 32)][:3]
    [(0, 0, 256, 256), (0, 224, 256, 480), (0, 444, 256, 700)]
    >>> [t.y0 for t in tile_grid((300, 700), 256, 32)]
    [0, 0, 0, 44, 44, 44]
    """
    tile, overlap = check_tiling(tile, overlap)
    if len(shape) < 2 or min(shape[:2]) < 1:
        raise InputError(f"cannot tile an image of shape {tuple(shape)}; it needs at least 1x1 pixels")
    height, width = int(shape[0]), int(shape[1])
    stride = tile - overlap
    rows, cols = _axis_starts(height, tile, stride), _axis_starts(width, tile, stride)
    tile_height, tile_width = min(tile, height), min(tile, width)
    return [
        Tile(r * len(cols) + c, r, c, y0, x0, y0 + tile_height, x0 + tile_width)
        for r, y0 in enumerate(rows)
        for c, x0 in enumerate(cols)
    ]


def cut_by_tile_edge(
    boxes_xyxy: np.ndarray, tile: Tile, image_shape: tuple[int, ...], margin: float = CUT_MARGIN
) -> np.ndarray:
    """Which boxes touch a side of their tile that lies inside the image.

    Such a box may show only the part of an object that the tile contains.

    Parameters
    ----------
    boxes_xyxy : numpy.ndarray
        (N, 4) boxes in **tile** coordinates (as the detector returns them for the
        tile's pixels).
    tile : Tile
        The tile the boxes were found in.
    image_shape : tuple of int
        (H, W, ...) of the whole image.
    margin : float
        A box side within this many pixels of a tile side counts as touching it.

    Returns
    -------
    numpy.ndarray
        (N,) bool.
    """
    boxes = _as_boxes(boxes_xyxy)
    left, top, right, bottom = tile.interior_edges(image_shape)
    height, width = tile.shape
    return (
        (left & (boxes[:, 0] <= margin))
        | (top & (boxes[:, 1] <= margin))
        | (right & (boxes[:, 2] >= width - margin))
        | (bottom & (boxes[:, 3] >= height - margin))
    )


def snap_to_image_border(
    boxes_xyxy: np.ndarray, tile: Tile, image_shape: tuple[int, ...], threshold: float
) -> np.ndarray:
    """Move box sides close to the image border onto it, leaving sides near the other tile sides alone.

    MobileSAMv2 snaps box sides within 20 network pixels of the network input's
    border onto it. Inside a tiled image that would stretch boxes of objects near a
    tile side up to that side, so tiles are detected without snapping and this
    applies the snap only where the tile side is the image border.

    Parameters
    ----------
    boxes_xyxy : numpy.ndarray
        (N, 4) boxes in tile coordinates.
    tile : Tile
        The tile the boxes were found in.
    image_shape : tuple of int
        (H, W, ...) of the whole image.
    threshold : float
        In tile pixels: ``x0 < threshold`` becomes 0, ``x1 > width - threshold`` becomes
        the tile width (likewise for y), on sides that lie on the image border.

    Returns
    -------
    numpy.ndarray
        New (N, 4) array of the same dtype as `boxes_xyxy`.
    """
    boxes = _as_boxes(boxes_xyxy).copy()
    interior = tile.interior_edges(image_shape)
    height, width = tile.shape
    x0, y0, x1, y1 = boxes.T
    if not interior.left:
        x0[x0 < threshold] = 0
    if not interior.top:
        y0[y0 < threshold] = 0
    if not interior.right:
        x1[x1 > width - threshold] = width
    if not interior.bottom:
        y1[y1 > height - threshold] = height
    return boxes


def merge_tile_boxes(
    tiles: Sequence[Tile],
    boxes_per_tile: Sequence[np.ndarray],
    scores_per_tile: Sequence[np.ndarray],
    image_shape: tuple[int, ...],
    *,
    iou: float = 0.9,
    duplicate_iou: float = 0.7,
    cover: float = 0.5,
    piece_iou: float = 0.5,
    margin: float = CUT_MARGIN,
) -> MergedBoxes:
    """One list of boxes in image coordinates from the detector boxes of every tile.

    1. Each tile's boxes are moved to image coordinates. A box is *cut* when it
       touches (within `margin`) a side of its tile that lies inside the image
       (:func:`cut_by_tile_edge`).
    2. A cut box is dropped when the object is seen whole elsewhere: an uncut box of
       another tile covers at least `cover` of its area
       (``area(cut & whole) >= cover * area(cut)``).
    3. Cut boxes left over belong to objects no tile holds whole. Two of them from
       tiles in the same grid row or column are pieces of one object when, clipped
       to the region the two tiles share, their IoU is at least `piece_iou`; pieces
       (transitively) are joined into their bounding box, with the best piece's score.
    4. Non-maximum suppression over all tiles, best score first: a box is dropped
       when a kept box from another tile overlaps it with IoU above `iou`, or when
       both are uncut and their IoU is at least `duplicate_iou` (two views of one
       object, which tiles rarely box identically). Boxes of the same tile never
       suppress each other: the detector's own NMS already ran inside each tile.

    Parameters
    ----------
    tiles : sequence of Tile
        The tiles (e.g. from :func:`tile_grid`).
    boxes_per_tile : sequence of numpy.ndarray
        For each tile, (n, 4) boxes in tile coordinates, as the detector returns them.
    scores_per_tile : sequence of numpy.ndarray
        For each tile, (n,) detector scores.
    image_shape : tuple of int
        (H, W, ...) of the whole image.
    iou : float
        IoU above which a box is suppressed by a better one from another tile (the
        detector's NMS threshold).
    duplicate_iou : float
        IoU from which two uncut boxes of different tiles are the same object.
    cover : float
        Fraction of a cut box that an uncut box of another tile must cover to replace it.
    piece_iou : float
        IoU, inside the shared region, from which two cut boxes are pieces of one object.
    margin : float
        Distance in pixels from a tile side within which a box counts as cut.

    Returns
    -------
    MergedBoxes
        Sorted by decreasing score, ties in (tile index, detector order).
    """
    if not len(tiles) == len(boxes_per_tile) == len(scores_per_tile):
        raise InputError(
            f"need one box array and one score array per tile: got {len(tiles)} tiles, "
            f"{len(boxes_per_tile)} box arrays and {len(scores_per_tile)} score arrays"
        )
    found = _tile_boxes_in_image(tiles, boxes_per_tile, scores_per_tile, image_shape, margin)
    cell = _cell_size(found.boxes)
    rects = np.stack([t.box_xyxy for t in tiles]) if len(tiles) else np.zeros((0, 4))
    alive = ~_covered_cut_boxes(found, cover, cell)
    groups = _join_pieces(found, alive, tiles, rects, piece_iou, cell)
    candidates = _candidates(found, groups)
    keep = _suppress(candidates, iou, duplicate_iou, cell)
    tile_index = np.array([t.index for t in tiles], dtype=np.int64)
    order = np.flatnonzero(keep)
    return MergedBoxes(
        candidates.boxes[order].astype(np.float32),
        candidates.score[order],
        tile_index[candidates.tile[order]],
        candidates.source[order],
        candidates.cut[order],
        candidates.pieces[order],
    )


@dataclass
class _Boxes:
    """Boxes in image coordinates with their origin; ``tile`` is a position in the tiles list."""

    boxes: np.ndarray  # (M, 4) float64
    score: np.ndarray  # (M,) float32
    tile: np.ndarray  # (M,) int64
    source: np.ndarray  # (M,) int64
    cut: np.ndarray  # (M,) bool
    pieces: np.ndarray  # (M,) int64


def _tile_boxes_in_image(tiles, boxes_per_tile, scores_per_tile, image_shape, margin) -> _Boxes:
    """All boxes in image coordinates, ordered by (tile index, detector order), with their cut flags."""
    parts = []
    for position in sorted(range(len(tiles)), key=lambda k: tiles[k].index):
        tile = tiles[position]
        boxes = _as_boxes(boxes_per_tile[position])
        scores = np.asarray(scores_per_tile[position], dtype=np.float32).reshape(-1)
        if scores.shape[0] != boxes.shape[0]:
            raise InputError(f"tile {tile.index} has {boxes.shape[0]} boxes but {scores.shape[0]} scores")
        if not np.isfinite(boxes).all():
            raise InputError(f"tile {tile.index} has boxes with NaN or infinite coordinates")
        shifted = boxes.astype(np.float64) + np.array([tile.x0, tile.y0, tile.x0, tile.y0], dtype=np.float64)
        count = boxes.shape[0]
        parts.append((shifted, scores, np.full(count, position, np.int64), np.arange(count, dtype=np.int64),
                      cut_by_tile_edge(boxes, tile, image_shape, margin)))
    if not parts:
        return _Boxes(np.zeros((0, 4)), np.zeros(0, np.float32), *(np.zeros(0, np.int64),) * 2,
                      np.zeros(0, bool), np.zeros(0, np.int64))
    boxes, scores, tile, source, cut = (np.concatenate(column) for column in zip(*parts))
    return _Boxes(boxes, scores, tile, source, cut, np.ones(len(scores), np.int64))


def _covered_cut_boxes(found: _Boxes, cover: float, cell: float) -> np.ndarray:
    """(M,) bool: cut boxes that an uncut box of another tile covers by at least `cover` of their area."""
    cut, whole = np.flatnonzero(found.cut), np.flatnonzero(~found.cut)
    cut_box, whole_box = _intersecting_pairs(found.boxes[cut], found.boxes[whole], cell=cell)
    cut_box, whole_box = cut[cut_box], whole[whole_box]
    use = found.tile[cut_box] != found.tile[whole_box]
    cut_box, whole_box = cut_box[use], whole_box[use]
    inside = _intersection_area(found.boxes[cut_box], found.boxes[whole_box])
    covered = np.zeros(len(found.score), dtype=bool)
    covered[cut_box[inside >= cover * _area(found.boxes[cut_box])]] = True
    return covered


def _join_pieces(
    found: _Boxes, alive: np.ndarray, tiles, rects: np.ndarray, piece_iou: float, cell: float
) -> np.ndarray:
    """(M,) int64 group of every box: pieces of one object share the group of their first piece; dropped: -1."""
    group = np.where(alive, np.arange(len(alive)), -1)
    pieces = np.flatnonzero(alive & found.cut)
    first, second = _intersecting_pairs(found.boxes[pieces], cell=cell)
    first, second = pieces[first], pieces[second]
    tile_a, tile_b = found.tile[first], found.tile[second]
    rows = np.array([t.row for t in tiles], dtype=np.int64)
    cols = np.array([t.col for t in tiles], dtype=np.int64)
    aligned = (tile_a != tile_b) & ((rows[tile_a] == rows[tile_b]) | (cols[tile_a] == cols[tile_b]))
    first, second, tile_a, tile_b = first[aligned], second[aligned], tile_a[aligned], tile_b[aligned]
    shared = _intersection_box(rects[tile_a], rects[tile_b])
    same = _iou(_intersection_box(found.boxes[first], shared), _intersection_box(found.boxes[second], shared))
    parent = np.arange(len(alive))
    for a, b in zip(first[same >= piece_iou], second[same >= piece_iou]):
        root_a, root_b = _root(parent, a), _root(parent, b)
        parent[max(root_a, root_b)] = min(root_a, root_b)
    for k in pieces:
        group[k] = _root(parent, k)
    return group


def _root(parent: np.ndarray, k: int) -> int:
    while parent[k] != k:
        parent[k] = parent[parent[k]]
        k = parent[k]
    return int(k)


def _candidates(found: _Boxes, group: np.ndarray) -> _Boxes:
    """One box per group (joined pieces become their bounding box), sorted by score, ties in input order."""
    alive = np.flatnonzero(group >= 0)
    # members grouped together, each group's best score first (ties: earliest in input order)
    by_group = alive[np.lexsort((alive, -found.score[alive].astype(np.float64), group[alive]))]
    starts = np.flatnonzero(np.r_[True, group[by_group][1:] != group[by_group][:-1]]) if alive.size else alive
    best = by_group[starts]
    counts = np.diff(np.r_[starts, by_group.size]).astype(np.int64)
    boxes = found.boxes[by_group]
    if alive.size:
        boxes = np.concatenate(
            [np.minimum.reduceat(boxes[:, :2], starts), np.maximum.reduceat(boxes[:, 2:], starts)], axis=1
        )
    score = found.score[best]
    order = np.lexsort((best, -score.astype(np.float64)))
    best = best[order]
    return _Boxes(boxes[order], score[order], found.tile[best], found.source[best], found.cut[best], counts[order])


def _suppress(candidates: _Boxes, iou: float, duplicate_iou: float, cell: float) -> np.ndarray:
    """Greedy cross-tile NMS over boxes sorted best first; (M,) bool of the kept ones."""
    first, second = _intersecting_pairs(candidates.boxes, cell=cell)
    single = candidates.pieces == 1
    across = ~(single[first] & single[second] & (candidates.tile[first] == candidates.tile[second]))
    first, second = first[across], second[across]
    overlap = _iou(candidates.boxes[first], candidates.boxes[second])
    both_whole = ~candidates.cut[first] & ~candidates.cut[second]
    hit = (overlap > iou) | (both_whole & (overlap >= duplicate_iou))
    better, worse = np.minimum(first[hit], second[hit]), np.maximum(first[hit], second[hit])
    keep = np.ones(len(candidates.score), dtype=bool)
    order = np.argsort(better, kind="stable")
    better, worse = better[order], worse[order]
    starts = np.flatnonzero(np.r_[True, better[1:] != better[:-1]]) if better.size else np.zeros(0, np.int64)
    for start, stop in zip(starts, [*starts[1:], better.size]):
        if keep[better[start]]:
            keep[worse[start:stop]] = False
    return keep


def owner_tile(
    boxes_xyxy: np.ndarray, tiles: Sequence[Tile], image_shape: tuple[int, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The tile whose embedding should decode each box.

    Among the tiles that contain a box whole, the one where it is most central: the
    largest distance from the box to the nearest tile side that lies inside the image
    (sides on the image border do not count). Ties go to the lowest tile index. A box
    no tile contains (larger than a tile) gets the tile it overlaps most, and is
    reported in `whole`.

    Parameters
    ----------
    boxes_xyxy : numpy.ndarray
        (N, 4) boxes in image coordinates.
    tiles : sequence of Tile
        The tiles.
    image_shape : tuple of int, optional
        (H, W, ...) of the image; by default the extent of the tiles.

    Returns
    -------
    tile : numpy.ndarray
        (N,) int64 ``Tile.index`` of the chosen tile.
    whole : numpy.ndarray
        (N,) bool; False where the chosen tile holds only part of the box.

    Raises
    ------
    InputError
        When a box lies outside every tile.
    """
    boxes = _as_boxes(boxes_xyxy).astype(np.float64)
    if not len(tiles):
        raise InputError("no tiles given")
    if not len(boxes):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    if image_shape is None:
        image_shape = (max(t.y1 for t in tiles), max(t.x1 for t in tiles))
    rects = np.stack([t.box_xyxy for t in tiles])
    interior = np.array([t.interior_edges(image_shape) for t in tiles], dtype=bool)
    cell = float(max(max(t.shape) for t in tiles))
    box, tile = _intersecting_pairs(boxes, rects, cell=cell, closed=True)
    missing = np.setdiff1d(np.arange(len(boxes)), box)
    if missing.size:
        raise InputError(f"box {missing[0]} ({boxes[missing[0]].tolist()}) lies outside every tile")
    b, t = boxes[box], rects[tile]
    inside = (t[:, :2] <= b[:, :2]).all(1) & (b[:, 2:] <= t[:, 2:]).all(1)
    distance = np.concatenate([b[:, :2] - t[:, :2], t[:, 2:] - b[:, 2:]], axis=1)
    centrality = np.where(interior[tile], distance, np.inf).min(1)
    merit = np.where(inside, centrality, _intersection_area(b, t))
    tile_index = np.array([tt.index for tt in tiles], dtype=np.int64)
    best = np.lexsort((tile_index[tile], -merit, ~inside, box))
    first = best[np.r_[True, box[best][1:] != box[best][:-1]]]
    return tile_index[tile[first]], inside[first]


def shift_crop(crop: MaskCrop, dy: int, dx: int) -> MaskCrop:
    """The same mask moved by (`dy`, `dx`) pixels, e.g. from tile to image coordinates.

    The packed bits are shared, not copied. An empty mask stays at (0, 0).

    Parameters
    ----------
    crop : MaskCrop
        A mask.
    dy, dx : int
        Offset added to its top and left, e.g. ``tile.y0, tile.x0``.

    Returns
    -------
    MaskCrop
    """
    moved = MaskCrop.__new__(MaskCrop)
    for name in MaskCrop.__slots__:
        setattr(moved, name, getattr(crop, name))
    if crop.area:
        moved.top, moved.left = crop.top + int(dy), crop.left + int(dx)
    return moved


def union_crops(crops: Sequence[MaskCrop]) -> MaskCrop:
    """One mask holding the pixels of all `crops` (same coordinates).

    For an object larger than a tile: its parts decoded in several tiles, moved to
    image coordinates with :func:`shift_crop`, become one mask.
    """
    present = [c for c in crops if c.area]
    if not present:
        return MaskCrop(0, 0, np.zeros((0, 0), dtype=bool))
    top, left = min(c.top for c in present), min(c.left for c in present)
    bottom = max(c.top + c.shape[0] for c in present)
    right = max(c.left + c.shape[1] for c in present)
    mask = np.zeros((bottom - top, right - left), dtype=bool)
    for c in present:
        mask[c.top - top:c.top - top + c.shape[0], c.left - left:c.left - left + c.shape[1]] |= c.mask
    return crop_to_content(mask, top, left)


def paint_window(
    crops: Sequence[MaskCrop],
    window: tuple[slice, slice],
    ids: Sequence[int] | None = None,
    order: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The part of :func:`~napari_mobilesamv2.decode.labels.assemble_labels`' label image inside a window.

    Painting every window of a partition of the image and putting the pieces side by
    side gives exactly ``assemble_labels(crops, shape, ids)[0]``; summing `visible`
    over the windows gives its visible areas.

    Parameters
    ----------
    crops : sequence of MaskCrop
        All masks, in image coordinates.
    window : tuple of slice
        ``(rows, cols)`` of the image, with explicit start and stop, e.g. ``Tile.slices``.
    ids : sequence of int, optional
        Id of each mask; ``1..N`` by default. Must be distinct and positive.
    order : numpy.ndarray, optional
        Positions in `crops` in painting order, by default
        ``paint_order([c.area for c in crops])`` (largest first, ties in order). To
        paint many windows, compute it once and pass it, or pass its subsequence of
        the masks that meet the window; masks not listed are not painted.

    Returns
    -------
    labels : numpy.ndarray
        (rows, cols) int32 labels of the window, 0 = background.
    visible : numpy.ndarray
        (N,) int64 pixels of each mask that stay visible inside the window.
    """
    (y0, y1), (x0, x1) = (_bounds(s, name) for s, name in zip(window, ("rows", "cols")))
    ids = np.arange(1, len(crops) + 1, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if order is None:
        order = paint_order(np.array([c.area for c in crops], dtype=np.int64))
    labels = np.zeros((y1 - y0, x1 - x0), dtype=np.int32)
    for k in np.asarray(order, dtype=np.int64):
        crop = crops[k]
        top, left = max(crop.top, y0), max(crop.left, x0)
        bottom, right = min(crop.top + crop.shape[0], y1), min(crop.left + crop.shape[1], x1)
        if crop.area == 0 or top >= bottom or left >= right:
            continue
        part = crop.mask[top - crop.top:bottom - crop.top, left - crop.left:right - crop.left]
        labels[top - y0:bottom - y0, left - x0:right - x0][part] = ids[k]
    if not len(ids):
        return labels, np.zeros(0, dtype=np.int64)
    counts = np.bincount(labels.ravel(), minlength=int(ids.max()) + 1)
    return labels, counts[ids].astype(np.int64)


def _bounds(part: slice, name: str) -> tuple[int, int]:
    if not isinstance(part, slice) or part.start is None or part.stop is None or part.step not in (None, 1):
        raise InputError(f"the window's {name} must be a slice with a start and a stop, not {part!r}")
    start, stop = int(part.start), int(part.stop)
    if start < 0 or stop < start:
        raise InputError(f"the window's {name} {start}:{stop} are not a range of pixels")
    return start, stop


# --- boxes -----------------------------------------------------------------------------------------------------


def _as_boxes(boxes_xyxy: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes_xyxy)
    if boxes.size == 0:
        return boxes.reshape(0, 4).astype(np.float32 if boxes.dtype.kind != "f" else boxes.dtype)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InputError(f"boxes must be an (N, 4) array of x0, y0, x1, y1, not shape {boxes.shape}")
    return boxes


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def _intersection_box(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise intersection; an empty one has x1 <= x0 or y1 <= y0."""
    return np.concatenate([np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])], axis=1)


def _intersection_area(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _area(_intersection_box(a, b))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU as torchvision computes it (no +1 on sides); 0 where both are empty."""
    inter = _intersection_area(a, b)
    union = _area(a) + _area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _cell_size(boxes: np.ndarray) -> float:
    """Grid cell side for finding overlapping boxes: twice their median side, so most boxes meet 1 to 4 cells."""
    if not len(boxes):
        return 1.0
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return float(max(2 * np.median(sides), 8.0))


def _cells(boxes: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(box, cell x, cell y) for every square cell of side `cell` that each box meets (its closed extent)."""
    first = np.floor(boxes[:, :2] / cell).astype(np.int64)
    last = np.floor(boxes[:, 2:] / cell).astype(np.int64)
    size = np.maximum(last - first + 1, 0)
    count = size[:, 0] * size[:, 1]
    box = np.repeat(np.arange(len(boxes)), count)
    within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    return box, first[box, 0] + within % size[box, 0], first[box, 1] + within // size[box, 0]


def _intersecting_pairs(
    a: np.ndarray, b: np.ndarray | None = None, *, cell: float, closed: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of boxes of `a` and `b` that intersect, found through a grid of square cells.

    Each pair is reported once, from the cell holding the top-left corner of the
    intersection. Without `b`: pairs within `a`, first < second. ``closed=False`` needs
    an intersection of positive area; ``closed=True`` also counts touching boxes.
    Time and memory grow with the number of boxes sharing cells, not with
    ``len(a) * len(b)``.
    """
    self_pairs = b is None
    b = a if self_pairs else b
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a_box, a_x, a_y = _cells(a, cell)
    b_box, b_x, b_y = _cells(b, cell)
    x_min, y_min = min(a_x.min(initial=0), b_x.min(initial=0)), min(a_y.min(initial=0), b_y.min(initial=0))
    span = max(a_x.max(initial=0), b_x.max(initial=0)) - x_min + 1
    a_key, b_key = (a_y - y_min) * span + (a_x - x_min), (b_y - y_min) * span + (b_x - x_min)
    by_key = np.argsort(b_key, kind="stable")
    b_box, b_key = b_box[by_key], b_key[by_key]
    start = np.searchsorted(b_key, a_key, side="left")
    count = np.searchsorted(b_key, a_key, side="right") - start
    found_first, found_second = [], []
    chunk_start = 0
    cumulative = np.cumsum(count)
    while chunk_start < len(a_key):
        done = cumulative[chunk_start - 1] if chunk_start else 0
        chunk_stop = max(int(np.searchsorted(cumulative, done + PAIR_BUDGET, side="right")), chunk_start + 1)
        part = slice(chunk_start, chunk_stop)
        n = count[part]
        first = np.repeat(a_box[part], n)
        offset = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        second = b_box[np.repeat(start[part], n) + offset]
        cell_x, cell_y = np.repeat(a_x[part], n), np.repeat(a_y[part], n)
        corner = np.maximum(a[first, :2], b[second, :2])
        end = np.minimum(a[first, 2:], b[second, 2:])
        meets = (end >= corner).all(1) if closed else (end > corner).all(1)
        owned = (np.floor(corner / cell).astype(np.int64) == np.stack([cell_x, cell_y], 1)).all(1)
        use = meets & owned & (first < second if self_pairs else True)
        found_first.append(first[use])
        found_second.append(second[use])
        chunk_start = chunk_stop
    return np.concatenate(found_first), np.concatenate(found_second)
