"""Tiled segment everything: tile grid, cut boxes, merging boxes across tiles, owner tiles, windowed labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_mobilesamv2 import tiling
from napari_mobilesamv2.decode.labels import assemble_labels, paint_order
from napari_mobilesamv2.decode.masks import MaskCrop
from napari_mobilesamv2.errors import InputError
from napari_mobilesamv2.tiling import (
    TILE_MIN,
    Tile,
    TileEdges,
    check_tiling,
    cut_by_tile_edge,
    merge_tile_boxes,
    owner_tile,
    paint_window,
    shift_crop,
    snap_to_image_border,
    tile_grid,
    union_crops,
)


def spans(tiles):
    return [(t.y0, t.x0, t.y1, t.x1) for t in tiles]


# --- check_tiling ----------------------------------------------------------------------------------------------


def test_check_tiling_accepts_the_allowed_range():
    assert TILE_MIN == 256
    assert check_tiling(256, 0) == (256, 0)
    assert check_tiling(np.int64(1024), np.int32(511)) == (1024, 511)
    assert check_tiling(257, 128) == (257, 128)


@pytest.mark.parametrize(
    ("tile", "overlap", "message"),
    [
        (255, 0, "tile must be at least 256 px (got 255); use a larger tile"),
        (0, 0, "tile must be at least 256 px (got 0)"),
        (1024, 512, "overlap must be from 0 to 511 px, less than half the tile of 1024 px (got 512)"),
        (1024, -1, "overlap must be from 0 to 511 px, less than half the tile of 1024 px (got -1)"),
        (257, 129, "overlap must be from 0 to 128 px, less than half the tile of 257 px (got 129)"),
        (1024.5, 0, "tile must be a whole number of pixels, not 1024.5"),
        (1024, True, "overlap must be a whole number of pixels, not True"),
    ],
)
def test_check_tiling_messages(tile, overlap, message):
    with pytest.raises(InputError) as error:
        check_tiling(tile, overlap)
    text = str(error.value)
    assert text.startswith(message) and "\n" not in text


# --- tile_grid -------------------------------------------------------------------------------------------------


def test_grid_3000_square_with_tile_1024_overlap_128():
    tiles = tile_grid((3000, 3000), 1024, 128)
    starts = [0, 896, 1792, 1976]  # stride 896; the fourth tile is moved back to end at 3000
    assert len(tiles) == 16
    assert spans(tiles) == [(y, x, y + 1024, x + 1024) for y in starts for x in starts]
    assert [t.index for t in tiles] == list(range(16))
    assert [(t.row, t.col) for t in tiles] == [(r, c) for r in range(4) for c in range(4)]
    assert all(t.shape == (1024, 1024) for t in tiles)
    assert max(t.x1 for t in tiles) == 3000 and max(t.y1 for t in tiles) == 3000
    covered = np.zeros((3000, 3000), np.int32)
    for t in tiles:
        covered[t.slices] += 1
    assert covered.min() == 1
    assert covered[0, 0] == 1 and covered[900, 900] == 4 and covered[500, 1950] == 1 and covered.max() == 4
    # neighbours share at least the overlap
    assert tiles[1].x0 == tiles[0].x1 - 128 and tiles[3].x0 == tiles[2].x1 - 840


def test_grid_exact_fit_has_no_extra_tile():
    assert spans(tile_grid((1024, 1920), 1024, 128)) == [(0, 0, 1024, 1024), (0, 896, 1024, 1920)]


def test_grid_of_images_no_larger_than_a_tile_is_one_tile():
    assert spans(tile_grid((200, 250), 256, 32)) == [(0, 0, 200, 250)]
    assert spans(tile_grid((256, 256), 256, 32)) == [(0, 0, 256, 256)]
    assert spans(tile_grid((1000, 1024, 3), 1024, 0)) == [(0, 0, 1000, 1024)]
    (only,) = tile_grid((100, 50), 1024, 128)
    assert (only.index, only.row, only.col, only.shape) == (0, 0, 0, (100, 50))
    assert only.interior_edges((100, 50)) == TileEdges(False, False, False, False)


def test_grid_non_square_and_short_axis():
    tiles = tile_grid((300, 2000), 1024, 128)
    # the rows span the short axis; columns 0, 896, then 976 so the last ends at 2000
    assert spans(tiles) == [(0, 0, 300, 1024), (0, 896, 300, 1920), (0, 976, 300, 2000)]
    assert [t.col for t in tiles] == [0, 1, 2] and {t.row for t in tiles} == {0}
    assert spans(tile_grid((300, 700), 256, 32)) == [
        (0, 0, 256, 256), (0, 224, 256, 480), (0, 444, 256, 700),
        (44, 0, 300, 256), (44, 224, 300, 480), (44, 444, 300, 700),
    ]


def test_grid_rejects_bad_input():
    with pytest.raises(InputError, match="tile must be at least 256 px"):
        tile_grid((3000, 3000), 100, 10)
    with pytest.raises(InputError, match="cannot tile an image of shape"):
        tile_grid((0, 10), 256, 0)


def test_tile_properties_and_interior_edges():
    tiles = tile_grid((3000, 3000), 1024, 128)
    middle, corner, right = tiles[5], tiles[0], tiles[7]
    assert middle.slices == (slice(896, 1920), slice(896, 1920))
    assert middle.box_xyxy.tolist() == [896.0, 896.0, 1920.0, 1920.0] and middle.box_xyxy.dtype == np.float64
    assert middle.interior_edges((3000, 3000)) == TileEdges(True, True, True, True)
    assert corner.interior_edges((3000, 3000)) == TileEdges(left=False, top=False, right=True, bottom=True)
    assert right.interior_edges((3000, 3000, 3)) == TileEdges(left=True, top=True, right=False, bottom=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        middle.x0 = 3


# --- cut boxes and the border snap ------------------------------------------------------------------------------

IMAGE = (256, 480)  # two tiles of 256 side by side, sharing x 224..256
TILES = tile_grid(IMAGE, 256, 32)


def test_two_tile_layout():
    assert spans(TILES) == [(0, 0, 256, 256), (0, 224, 256, 480)]


def test_cut_by_tile_edge_counts_only_sides_inside_the_image():
    boxes = np.array(
        [
            [0, 0, 30, 30],  # on the image's left and top border: not cut
            [200, 100, 256, 120],  # touches the right side, inside the image: cut
            [200, 100, 254.5, 120],  # within 2 px of it: cut
            [200, 100, 253.9, 120],  # 2.1 px away: not cut
            [100, 200, 120, 256],  # touches the bottom side, which is the image border: not cut
        ],
        dtype=np.float32,
    )
    assert cut_by_tile_edge(boxes, TILES[0], IMAGE).tolist() == [False, True, True, False, False]
    assert cut_by_tile_edge(boxes, TILES[0], IMAGE, margin=0).tolist() == [False, True, False, False, False]
    # in the right tile only the left side is inside the image
    assert cut_by_tile_edge(boxes, TILES[1], IMAGE).tolist() == [True, False, False, False, False]
    assert cut_by_tile_edge(np.zeros((0, 4)), TILES[0], IMAGE).shape == (0,)
    with pytest.raises(InputError, match=r"\(N, 4\)"):
        cut_by_tile_edge(np.zeros((3, 2)), TILES[0], IMAGE)


def test_snap_to_image_border_only_on_border_sides():
    boxes = np.array([[5, 6, 250, 251], [30, 30, 100, 100]], dtype=np.float32)
    snapped = snap_to_image_border(boxes, TILES[0], IMAGE, threshold=20)
    # left, top and bottom of tile 0 are image border; its right side is inside the image
    assert snapped.tolist() == [[0, 0, 250, 256], [30, 30, 100, 100]]
    assert snapped.dtype == np.float32 and boxes[0, 0] == 5
    assert snap_to_image_border(boxes, TILES[1], IMAGE, 20).tolist() == [[5, 0, 256, 256], [30, 30, 100, 100]]


# --- merge_tile_boxes --------------------------------------------------------------------------------------------


def merge(boxes_a, scores_a, boxes_b, scores_b, **options):
    return merge_tile_boxes(
        TILES,
        [np.array(boxes_a, np.float32).reshape(-1, 4), np.array(boxes_b, np.float32).reshape(-1, 4)],
        [np.array(scores_a, np.float32), np.array(scores_b, np.float32)],
        IMAGE,
        **options,
    )


def rows(merged):
    return [
        (b.tolist(), float(s), int(t), int(o), bool(c), int(p))
        for b, s, t, o, c, p in zip(merged.boxes_xyxy, merged.score, merged.tile, merged.source, merged.cut,
                                     merged.pieces)
    ]


def test_object_cut_in_one_tile_and_whole_in_the_other_keeps_the_whole_box():
    # an object at x 240..270 (image): tile 0 sees x 240..256 (cut), tile 1 sees it whole at local x 16..46
    merged = merge([[240, 50, 256, 80], [10, 10, 50, 40]], [0.95, 0.5], [[16, 52, 46, 81]], [0.6])
    assert rows(merged) == [
        ([240.0, 52.0, 270.0, 81.0], pytest.approx(0.6), 1, 0, False, 1),
        ([10.0, 10.0, 50.0, 40.0], pytest.approx(0.5), 0, 1, False, 1),
    ]
    assert merged.boxes_xyxy.dtype == np.float32 and merged.score.dtype == np.float32
    assert merged.tile.dtype == np.int64 and merged.source.dtype == np.int64 and merged.cut.dtype == bool
    assert len(merged) == 2


def test_cut_box_is_kept_when_the_whole_box_covers_less_than_cover():
    # cut box x 240..256, y 50..80 (area 480); whole box covers x 240..256, y 66..80 -> 224/480 < 0.5
    merged = merge([[240, 50, 256, 80]], [0.9], [[16, 66, 46, 96]], [0.6])
    assert [r[0] for r in rows(merged)] == [[240.0, 50.0, 256.0, 80.0], [240.0, 66.0, 270.0, 96.0]]
    assert merged.cut.tolist() == [True, False]
    # 0.4 is enough for that cover
    merged = merge([[240, 50, 256, 80]], [0.9], [[16, 66, 46, 96]], [0.6], cover=0.4)
    assert [r[0] for r in rows(merged)] == [[240.0, 66.0, 270.0, 96.0]]


def test_cut_boxes_are_not_replaced_by_boxes_of_their_own_tile():
    # a cut box and an uncut box containing it in the same tile: both stay (the detector kept both)
    merged = merge([[200, 50, 256, 80], [150, 40, 252, 90]], [0.9, 0.8], [], [])
    assert merged.source.tolist() == [0, 1] and merged.cut.tolist() == [True, False]


def test_large_object_cut_in_both_tiles_is_kept_once_as_one_box():
    # object x 150..350 (wider than the 32 px overlap): tile 0 sees x 150..256, tile 1 sees x 224..350
    merged = merge([[150, 100, 256, 200]], [0.7], [[0, 98, 126, 201]], [0.8])
    assert rows(merged) == [([150.0, 98.0, 350.0, 201.0], pytest.approx(0.8), 1, 0, True, 2)]


def test_pieces_of_different_objects_are_not_joined():
    # two wide objects cut by the tile sides at different heights
    merged = merge([[150, 100, 256, 140]], [0.7], [[0, 150, 126, 190]], [0.8])
    assert [r[0] for r in rows(merged)] == [[224.0, 150.0, 350.0, 190.0], [150.0, 100.0, 256.0, 140.0]]
    assert merged.pieces.tolist() == [1, 1] and merged.cut.tolist() == [True, True]


def test_pieces_join_along_a_row_of_tiles():
    image = (256, 700)
    tiles = tile_grid(image, 256, 32)  # x 0..256, 224..480, 444..700
    boxes = [np.array([[100, 20, 256, 60]], np.float32), np.array([[0, 21, 256, 61]], np.float32),
             np.array([[0, 20, 200, 60]], np.float32)]
    merged = merge_tile_boxes(tiles, boxes, [np.float32([0.5]), np.float32([0.9]), np.float32([0.7])], image)
    assert merged.boxes_xyxy.tolist() == [[100.0, 20.0, 644.0, 61.0]]
    assert (merged.tile.tolist(), merged.pieces.tolist()) == ([1], [3])


def test_whole_duplicates_across_the_overlap_are_merged():
    # object inside the shared strip, seen whole by both tiles; IoU 456/480 = 0.95 > 0.9
    merged = merge([[228, 10, 252, 30]], [0.8], [[4, 11, 28, 30]], [0.85])
    assert rows(merged) == [([228.0, 11.0, 252.0, 30.0], pytest.approx(0.85), 1, 0, False, 1)]
    # views boxed differently: IoU 20*20/(24*20 + 20*22 - 400) = 0.769: a duplicate by duplicate_iou 0.7 ...
    merged = merge([[228, 10, 252, 30]], [0.8], [[6, 10, 26, 32]], [0.85])
    assert merged.source.tolist() == [0] and merged.tile.tolist() == [1]
    # ... but not by the NMS threshold alone
    merged = merge([[228, 10, 252, 30]], [0.8], [[6, 10, 26, 32]], [0.85], duplicate_iou=1.0)
    assert merged.tile.tolist() == [1, 0]
    # and two objects overlapping less are both kept
    merged = merge([[228, 10, 252, 30]], [0.8], [[4, 20, 28, 40]], [0.85])
    assert merged.tile.tolist() == [1, 0]


def test_boxes_of_one_tile_never_suppress_each_other():
    merged = merge([[10, 10, 50, 50], [10, 10, 50, 51]], [0.9, 0.8], [], [], iou=0.5)
    assert merged.source.tolist() == [0, 1]


def test_suppressed_box_does_not_suppress_others():
    # tile 1's best box A suppresses tile 0's B; B would have suppressed tile 1's C, which survives
    tile0 = [[230, 10, 250, 30]]  # B
    tile1 = [[6, 10, 26, 30], [6, 12, 26, 32]]  # A (same as B), C (IoU with B = 0.82, with A 0.82)
    merged = merge(tile0, [0.8], tile1, [0.9, 0.7], duplicate_iou=0.8)
    assert list(zip(merged.tile.tolist(), merged.source.tolist())) == [(1, 0), (1, 1)]


def test_equal_scores_are_ordered_by_tile_then_detector_order():
    merged = merge([[10, 10, 20, 20], [30, 30, 40, 40]], [0.5, 0.5], [[100, 10, 110, 20]], [0.5])
    assert list(zip(merged.tile.tolist(), merged.source.tolist())) == [(0, 0), (0, 1), (1, 0)]
    # the tile index decides, not the position in the list
    merged = merge_tile_boxes(
        TILES[::-1], [np.float32([[100, 10, 110, 20]]), np.float32([[10, 10, 20, 20]])],
        [np.float32([0.5]), np.float32([0.5])], IMAGE,
    )
    assert merged.tile.tolist() == [0, 1]


def test_one_tile_covering_the_image_returns_the_detector_output_bit_for_bit():
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 500, (300, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(0.1, 300, (300, 2))], 1).astype(np.float32)
    boxes[:50] = boxes[0] + rng.uniform(-0.01, 0.01, (50, 4)).astype(np.float32)  # heavy overlaps
    boxes[50, 2:] = [800, 600]
    scores = np.sort(rng.uniform(0.4, 1, 300).astype(np.float32))[::-1].copy()
    scores[10:20] = scores[10]  # ties
    tiles = tile_grid((600, 800), 1024, 128)
    assert len(tiles) == 1
    merged = merge_tile_boxes(tiles, [boxes], [scores], (600, 800))
    assert merged.boxes_xyxy.tobytes() == boxes.tobytes() and merged.score.tobytes() == scores.tobytes()
    assert merged.source.tolist() == list(range(300)) and set(merged.tile.tolist()) == {0}
    assert not merged.cut.any() and (merged.pieces == 1).all()


def test_merge_with_no_boxes_and_bad_input():
    empty = merge([], [], [], [])
    assert empty.boxes_xyxy.shape == (0, 4) and empty.boxes_xyxy.dtype == np.float32
    assert empty.score.dtype == np.float32 and empty.tile.dtype == np.int64 and len(empty) == 0
    assert len(merge_tile_boxes([], [], [], IMAGE)) == 0
    with pytest.raises(InputError, match="one box array and one score array per tile: got 2 tiles, 1 box"):
        merge_tile_boxes(TILES, [np.zeros((0, 4))], [np.zeros(0), np.zeros(0)], IMAGE)
    with pytest.raises(InputError, match="tile 1 has 1 boxes but 2 scores"):
        merge([], [], [[0, 0, 1, 1]], [0.5, 0.4])
    with pytest.raises(InputError, match="NaN or infinite"):
        merge([[0, 0, np.nan, 1]], [0.5], [], [])


def reference_nms(boxes, scores, tile, iou, duplicate_iou):
    """Documented step 4 for uncut single boxes, O(N^2): greedy in (score desc, input) order."""
    order = np.lexsort((np.arange(len(scores)), -scores.astype(np.float64)))
    kept = []
    for k in order:
        others = np.array([j for j in kept if tile[j] != tile[k]], dtype=np.int64)
        overlap = tiling._iou(boxes[others], np.repeat(boxes[[k]], len(others), 0))
        if not ((overlap > iou) | (overlap >= duplicate_iou)).any():
            kept.append(k)
    return np.array(kept)


def test_merge_matches_a_direct_greedy_suppression_on_random_uncut_boxes():
    image = (1200, 1500)
    tiles = tile_grid(image, 256, 64)
    rng = np.random.default_rng(3)
    boxes_per_tile, scores_per_tile = [], []
    for t in tiles:
        corner = rng.uniform(3, 200, (40, 2))
        size = rng.uniform(1, 50, (40, 2))
        local = np.concatenate([corner, np.minimum(corner + size, np.array(t.shape[::-1]) - 3)], 1)
        boxes_per_tile.append(local.astype(np.float32))
        scores_per_tile.append(rng.choice(np.float32([0.5, 0.6, 0.7, 0.8]), 40))
    merged = merge_tile_boxes(tiles, boxes_per_tile, scores_per_tile, image, iou=0.6, duplicate_iou=0.5)
    image_boxes = np.concatenate(
        [b.astype(np.float64) + [t.x0, t.y0, t.x0, t.y0] for t, b in zip(tiles, boxes_per_tile)])
    tile_of = np.repeat(np.arange(len(tiles)), 40)
    expected = reference_nms(image_boxes, np.concatenate(scores_per_tile), tile_of, 0.6, 0.5)
    assert not merged.cut.any()
    assert 0 < len(merged) < len(image_boxes)
    assert (merged.tile * 40 + merged.source).tolist() == expected.tolist()


def disjoint_rectangles(rng, shape, count, low, high):
    """Integer xyxy rectangles at least 1 px apart."""
    kept = []
    while len(kept) < count:
        size = rng.integers(low, high + 1, 2)
        corner = rng.integers(0, np.array(shape[::-1]) - size + 1)
        box = np.r_[corner, corner + size]
        if all((box[:2] > k[2:]).any() or (k[:2] > box[2:]).any() for k in kept):
            kept.append(box)
    return np.array(kept, dtype=np.float64)


def test_merge_of_an_ideal_detector_finds_every_object_once():
    """Each tile reports every object it meets, clipped to the tile: the merge gives back the objects."""
    image = (1100, 1300)
    tiles = tile_grid(image, 256, 48)
    rng = np.random.default_rng(7)
    small = disjoint_rectangles(rng, image, 150, 3, 46)  # at most overlap - 2: always whole in some tile
    large = np.array([[300, 500, 700, 560], [900, 100, 960, 900], [20, 1000, 400, 1090]], np.float64)
    apart = [all(((b[:2] > big[2:] + 1) | (big[:2] > b[2:] + 1)).any() for big in large) for b in small]
    small = small[apart]
    objects = np.concatenate([small, large])
    boxes_per_tile, scores_per_tile = [], []
    for t in tiles:
        clipped = tiling._intersection_box(objects, np.repeat(t.box_xyxy[None], len(objects), 0))
        seen = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        boxes_per_tile.append((clipped[seen] - [t.x0, t.y0, t.x0, t.y0]).astype(np.float32))
        scores_per_tile.append(rng.uniform(0.4, 1, seen.sum()).astype(np.float32))
    merged = merge_tile_boxes(tiles, boxes_per_tile, scores_per_tile, image)
    assert sum(len(b) for b in boxes_per_tile) > 2 * len(objects)
    found = sorted(map(tuple, merged.boxes_xyxy.tolist()))
    assert found == sorted(map(tuple, objects.tolist()))
    is_large = [tuple(b) in set(map(tuple, large.tolist())) for b in merged.boxes_xyxy.tolist()]
    assert merged.cut.tolist() == is_large
    assert (merged.pieces[is_large] > 1).all() and (merged.pieces[~np.array(is_large)] == 1).all()
    tile, whole = owner_tile(merged.boxes_xyxy, tiles, image)
    assert whole.tolist() == [not x for x in is_large]
    for box, t, w in zip(merged.boxes_xyxy, tile, whole):
        if w:
            assert tiles[t].x0 <= box[0] and box[2] <= tiles[t].x1 and tiles[t].y0 <= box[1] and box[3] <= tiles[t].y1


@pytest.mark.parametrize("budget", [7, tiling.PAIR_BUDGET])
def test_intersecting_pairs_equal_a_direct_search(monkeypatch, budget):
    monkeypatch.setattr(tiling, "PAIR_BUDGET", budget)
    rng = np.random.default_rng(1)
    corner = rng.uniform(0, 900, (300, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(0, 300, (300, 2))], 1)
    boxes[:20, 2:] = boxes[:20, :2]  # empty boxes
    boxes[20:30] = np.round(boxes[20:30] / 100) * 100  # sides on cell borders
    first, second = tiling._intersecting_pairs(boxes, cell=100.0)
    inter = tiling._intersection_box(boxes[:, None].repeat(300, 1).reshape(-1, 4), np.tile(boxes, (300, 1)))
    positive = ((inter[:, 2] > inter[:, 0]) & (inter[:, 3] > inter[:, 1])).reshape(300, 300)
    assert sorted(zip(first.tolist(), second.tolist())) == [
        (i, j) for i, j in zip(*np.nonzero(np.triu(positive, 1)))]
    rects = np.array([[0, 0, 100, 100], [100, 0, 200, 100], [500, 500, 1300, 1300]], np.float64)
    box, rect = tiling._intersecting_pairs(boxes, rects, cell=100.0, closed=True)
    inter = tiling._intersection_box(boxes.repeat(3, 0), np.tile(rects, (300, 1)))
    meets = ((inter[:, 2] >= inter[:, 0]) & (inter[:, 3] >= inter[:, 1])).reshape(300, 3)
    assert sorted(zip(box.tolist(), rect.tolist())) == list(zip(*map(np.ndarray.tolist, np.nonzero(meets))))


# --- owner_tile --------------------------------------------------------------------------------------------------

GRID = tile_grid((3000, 3000), 1024, 128)  # starts 0, 896, 1792, 1976 on both axes


def test_owner_tile_prefers_the_tile_where_the_box_is_most_central():
    boxes = np.array(
        [
            [900, 900, 1000, 1000],  # in tiles 0, 1, 4, 5: 24 px from tile 0's inner sides, 4 px in the others
            [1950, 10, 2000, 50],  # only in tile 2 (x 1792..2816)
            [2900, 2900, 2990, 2990],  # only in tile 15
            [1400, 1400, 1410, 1410],  # central in tile 5
            [1980, 1000, 2700, 1010],  # in tiles 2, 3, 6, 7: 14, 4, 104 and 4 px from their nearest inner side
        ],
        dtype=np.float32,
    )
    tile, whole = owner_tile(boxes, GRID)
    assert tile.tolist() == [0, 2, 15, 5, 6] and whole.tolist() == [True] * 5
    assert tile.dtype == np.int64 and whole.dtype == bool


def test_owner_tile_ties_go_to_the_lowest_index_and_image_border_sides_do_not_count():
    tiles = tile_grid((256, 480), 256, 32)
    # x 230..250 is 6 px from each tile's inner side (256 and 224); the image border sides are ignored
    tile, whole = owner_tile(np.float32([[230, 100, 250, 110], [0, 0, 256, 256]]), tiles)
    assert tile.tolist() == [0, 0] and whole.tolist() == [True, True]
    tile, _ = owner_tile(np.float32([[229, 100, 250, 110], [231, 100, 250, 110]]), tiles)
    assert tile.tolist() == [0, 1]  # 6 px from tile 0's right side vs 5 and 7 px from tile 1's left side


def test_owner_tile_of_a_box_larger_than_a_tile_is_the_largest_overlap_and_flagged():
    tile, whole = owner_tile(np.float32([[100, 100, 1500, 300], [1000, 1000, 2500, 2500]]), GRID)
    # first: tile 0 holds 924 px of its width, tile 1 604; second: tile 5 holds 920x920, tile 10 holds 708x708
    assert tile.tolist() == [0, 5] and whole.tolist() == [False, False]


def test_owner_tile_errors_and_empty():
    tile, whole = owner_tile(np.zeros((0, 4), np.float32), GRID)
    assert tile.shape == (0,) and whole.shape == (0,) and tile.dtype == np.int64
    with pytest.raises(InputError, match=r"box 1 \(\[4000.0, 0.0, 4100.0, 10.0\]\) lies outside every tile"):
        owner_tile(np.float32([[0, 0, 1, 1], [4000, 0, 4100, 10]]), GRID)
    with pytest.raises(InputError, match="no tiles"):
        owner_tile(np.float32([[0, 0, 1, 1]]), [])


def test_owner_tile_uses_the_given_image_shape():
    tiles = [Tile(0, 0, 0, 0, 0, 256, 256), Tile(1, 0, 1, 0, 200, 256, 456)]
    box = np.float32([[210, 10, 250, 20]])
    # with the image 456 wide tile 0's right side is inside: 6 px vs 10 px from tile 1's left side
    assert owner_tile(box, tiles)[0].tolist() == [1]
    # in a 256-wide image tile 0 has no inner side on the right: infinitely central
    assert owner_tile(box, tiles, (256, 256))[0].tolist() == [0]


# --- crops and windowed labels ------------------------------------------------------------------------------------


def random_crops(rng, shape, count):
    crops = []
    for _ in range(count):
        h, w = rng.integers(1, 25, 2)
        top, left = rng.integers(0, shape[0] - h + 1), rng.integers(0, shape[1] - w + 1)
        crops.append(MaskCrop(top, left, rng.random((h, w)) < 0.6))
    crops.append(MaskCrop(0, 0, np.zeros((0, 0), bool)))
    crops.append(MaskCrop(5, 5, crops[0].mask))  # same area as crop 0: tie
    return crops


def test_shift_crop_moves_a_mask_and_shares_its_bits():
    crop = MaskCrop(3, 4, np.array([[True, False, True], [False, True, True]]))
    moved = shift_crop(crop, 100, 1000)
    assert (moved.top, moved.left, moved.shape, moved.area) == (103, 1004, (2, 3), 4)
    assert moved._packed is crop._packed and (crop.top, crop.left) == (3, 4)
    assert np.array_equal(moved.mask, crop.mask) and moved.bbox_xyxy == (1004, 103, 1007, 105)
    empty = shift_crop(MaskCrop(0, 0, np.zeros((0, 0), bool)), 100, 1000)
    assert (empty.top, empty.left, empty.area) == (0, 0, 0)


def test_union_crops():
    a = MaskCrop(2, 3, np.array([[True, True], [False, True]]))
    b = MaskCrop(3, 4, np.array([[True, False, True]]))
    union = union_crops([a, MaskCrop(0, 0, np.zeros((0, 0), bool)), b])
    assert np.array_equal(union.to_full((8, 8)), a.to_full((8, 8)) | b.to_full((8, 8)))
    assert (union.top, union.left, union.shape, union.area) == (2, 3, (2, 4), 4)  # (3, 4) is in both
    assert union_crops([]).area == 0


def test_paint_window_of_a_hand_made_example():
    big = MaskCrop(0, 0, np.ones((3, 4), bool))
    small = MaskCrop(1, 2, np.ones((2, 3), bool))
    labels, visible = paint_window([small, big], (slice(1, 3), slice(1, 5)), ids=[7, 9])
    # big (area 12) is painted first, small (6) over it; the window is rows 1..2, cols 1..4
    assert labels.tolist() == [[9, 7, 7, 7], [9, 7, 7, 7]] and labels.dtype == np.int32
    assert visible.tolist() == [6, 2] and visible.dtype == np.int64


@pytest.mark.parametrize("window", [(7, 11), (16, 16), (50, 70), (13, 70), (1, 3)])
def test_painting_window_by_window_equals_assemble_labels(window):
    shape = (50, 70)
    rng = np.random.default_rng(2)
    crops = random_crops(rng, shape, 40)
    ids = rng.permutation(np.arange(3, 3 + len(crops)))
    expected, expected_visible = assemble_labels(crops, shape, ids)
    order = paint_order(np.array([c.area for c in crops]))
    stitched = np.full(shape, -1, np.int32)
    visible = np.zeros(len(crops), np.int64)
    for y0 in range(0, shape[0], window[0]):
        for x0 in range(0, shape[1], window[1]):
            part = (slice(y0, min(y0 + window[0], shape[0])), slice(x0, min(x0 + window[1], shape[1])))
            labels, counts = paint_window(crops, part, ids, order=order if y0 % 2 else None)
            stitched[part] = labels
            visible += counts
    assert np.array_equal(stitched, expected)
    assert visible.tolist() == expected_visible.tolist()


def test_paint_window_with_only_the_masks_meeting_it():
    rng = np.random.default_rng(4)
    crops = random_crops(rng, (60, 60), 30)
    full, _ = assemble_labels(crops, (60, 60))
    order = paint_order(np.array([c.area for c in crops]))
    window = (slice(10, 35), slice(20, 41))
    meets = np.array([c.area > 0 and c.top < 35 and c.top + c.shape[0] > 10 and c.left < 41
                      and c.left + c.shape[1] > 20 for c in crops])
    labels, _ = paint_window(crops, window, order=order[meets[order]])
    assert 0 < meets.sum() < len(crops) and np.array_equal(labels, full[window])


def test_paint_window_input_errors():
    with pytest.raises(InputError, match="window's cols must be a slice with a start and a stop"):
        paint_window([], (slice(0, 5), slice(None, 5)))
    with pytest.raises(InputError, match="window's rows 5:2 are not a range"):
        paint_window([], (slice(5, 2), slice(0, 5)))
    labels, visible = paint_window([], (slice(0, 2), slice(0, 3)))
    assert labels.shape == (2, 3) and visible.shape == (0,)
