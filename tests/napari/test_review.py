"""The "Review objects" dock: ranking, keys, filters, merge and split, undo with the features table."""

import numpy as np
import pandas as pd
import pytest
from conftest import open_dock
from napari.utils.key_bindings import coerce_keybinding
from standin import PREDICTED_IOU, STABILITY, blobs

from napari_mobilesamv2.napari._review import REVIEW_KEYS, ReviewWidget, _camera


def hand_made_labels():
    """Four objects with a table, and object 9 painted by hand (no row)."""
    data = np.zeros((40, 60), np.uint8)
    data[2:8, 2:8] = 1  # area 36
    data[10:20, 30:40] = 2  # area 100
    data[25:30, 5:15] = 3  # area 50
    data[30:38, 40:58] = 4  # area 144
    data[0:3, 50:53] = 9  # the user's own object
    features = pd.DataFrame({
        "index": [1, 2, 3, 4], "id": [1, 2, 3, 4],
        "score": [0.9, 0.3, np.nan, 0.6], "predicted_iou": [0.95, 0.7, 0.85, 0.9],
        "stability": [0.97, 0.9, 0.93, 0.8], "area": [36, 100, 50, 144], "slice": ["", "", "", ""],
    })
    return data, features


@pytest.fixture
def reviewing(make_napari_viewer):
    """A viewer with the hand-made labels, the dock, and the review started: ``(viewer, labels, widget)``."""
    viewer = make_napari_viewer()
    data, features = hand_made_labels()
    labels = viewer.add_labels(data.copy(), features=features, name="cells objects", scale=(2.0, 2.0))
    widget = open_dock(viewer, "Review objects")
    assert isinstance(widget, ReviewWidget)
    widget.labels_layer.value = labels
    widget.start()
    assert widget.is_reviewing and widget.last_error is None
    return viewer, labels, widget


def press(viewer, key: str) -> None:
    """A key press as the canvas gets it (the active layer's bindings first, then the viewer's)."""
    assert viewer.window._qt_viewer._key_map_handler.press_key(key)


def ids_in(labels) -> list[int]:
    return sorted(int(i) for i in np.unique(labels.data) if i)


def test_objects_are_ranked_and_the_current_one_centred(reviewing):
    viewer, labels, widget = reviewing
    np.testing.assert_array_equal(widget.queue, [2, 4, 1, 3])  # score, lowest first, NaN last
    assert widget.current_id() == 2 and labels.selected_label == 2
    np.testing.assert_allclose(_camera(viewer).center[-2:], (2 * 14.5, 2 * 34.5))
    assert "object 1 of 4: id 2" in widget.current.value and "predicted IoU 0.7" in widget.current.value
    colours = labels.colormap.map(np.array([2, 4, 9]))
    assert colours[0, 3] == pytest.approx(1.0) and colours[1, 3] < 0.5  # current bright, others dimmed
    assert colours[2, 3] > 0  # the object without a row is shown
    widget.rank_by.value = "area"
    widget.order.value = "highest first"
    np.testing.assert_array_equal(widget.queue, [4, 2, 3, 1])
    assert widget.current_id() == 2  # stays on the object shown
    widget.rank_by.value = "stability"
    np.testing.assert_array_equal(widget.queue, [1, 3, 2, 4])
    widget.only_current.value = True
    assert labels.show_selected_label


def test_keys_step_accept_reject_and_merge(reviewing):
    viewer, labels, widget = reviewing
    before = labels.data.copy()
    assert viewer.layers.selection.active is labels  # its own 'M' and 'B' keys are shadowed
    press(viewer, "N")
    assert widget.current_id() == 4
    press(viewer, "B")
    assert widget.current_id() == 2
    press(viewer, "A")  # accept 2, go to 4
    assert widget.current_id() == 4
    assert labels.features.set_index("index")["accepted"].to_dict() == {1: False, 2: True, 3: False, 4: False}
    assert labels.data.tolist() == before.tolist()  # accepting changes no label
    press(viewer, "R")  # reject 4: 1 takes its place
    assert ids_in(labels) == [1, 2, 3, 9]
    assert list(labels.features["index"]) == [1, 2, 3]
    assert widget.current_id() == 1
    press(viewer, "M")  # merge 1 into the previous object, 2
    assert ids_in(labels) == [2, 3, 9]
    np.testing.assert_array_equal(labels.data[2:8, 2:8], 2)
    row = labels.features.set_index("index").loc[2]
    assert row["area"] == 136 and row["score"] == pytest.approx(0.9)
    assert row["predicted_iou"] == pytest.approx((0.7 * 100 + 0.95 * 36) / 136)
    assert list(labels.features["index"]) == [2, 3]
    assert widget.current_id() == 2
    # each change is one undo step; the table follows
    labels.undo()
    assert ids_in(labels) == [1, 2, 3, 9]
    assert list(labels.features["index"]) == [1, 2, 3]
    assert labels.features.set_index("index").loc[2, "area"] == 100
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)
    assert list(labels.features["index"]) == [1, 2, 3, 4]
    assert labels.features.set_index("index").loc[2, "accepted"]  # the accept mark stays
    labels.redo()
    assert ids_in(labels) == [1, 2, 3, 9] and list(labels.features["index"]) == [1, 2, 3]


def test_the_first_object_has_nothing_to_merge_with(reviewing):
    _, labels, widget = reviewing
    widget.buttons["merge"].clicked()
    assert "no previous object" in widget.last_error
    assert ids_in(labels) == [1, 2, 3, 4, 9]


def test_filters_hide_objects_until_applied_in_one_undo_step(reviewing):
    viewer, labels, widget = reviewing
    before = labels.data.copy()
    score, area = widget.sliders["score"], widget.sliders["area"]
    assert (score.min, score.max) == pytest.approx((0.3, 0.9))
    assert (area.min, area.max) == (36, 144)
    score.value = (0.5, 0.9)
    area.value = (40, 144)
    np.testing.assert_array_equal(sorted(widget.hidden_ids()), [1, 2])  # 1: area 36, 2: score 0.3; 3: NaN score
    np.testing.assert_array_equal(widget.queue, [4, 3])
    assert labels.colormap.map(np.array([1, 2]))[:, 3].tolist() == [0, 0]
    np.testing.assert_array_equal(labels.data, before)  # hidden, not deleted
    assert "2 object(s) hidden" in widget.filter_summary.value
    widget.buttons["apply"].clicked()
    assert ids_in(labels) == [3, 4, 9]  # the object without a row is never filtered
    assert list(labels.features["index"]) == [3, 4]
    assert widget.hidden_ids().size == 0 and area.min == 50  # sliders fit the objects left
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)
    assert list(labels.features["index"]) == [1, 2, 3, 4]
    widget.reset_filters()
    np.testing.assert_array_equal(widget.queue, [2, 4, 1, 3])


def test_undo_button_and_ctrl_z_after_a_painted_edit(reviewing):
    viewer, labels, widget = reviewing
    widget.reject()  # object 2
    assert list(labels.features["index"]) == [1, 3, 4]
    widget.undo()
    assert list(labels.features["index"]) == [1, 2, 3, 4] and 2 in ids_in(labels)
    # a new edit after the undo: the undone change cannot come back, the table stays
    _camera(viewer).center = (5.0, 5.0)
    labels.data_setitem((np.array([39]), np.array([0])), 9)
    np.testing.assert_allclose(_camera(viewer).center[-2:], (5.0, 5.0))  # painting does not move the view
    labels.redo()
    assert list(labels.features["index"]) == [1, 2, 3, 4]
    assert widget.history.changes == []


def test_stop_gives_back_keys_and_colours(make_napari_viewer):
    viewer = make_napari_viewer()
    data, features = hand_made_labels()
    labels = viewer.add_labels(data, features=features)
    colormap = labels.colormap
    users_own = lambda v: None  # noqa: E731
    viewer.bind_key("N", users_own)
    widget = open_dock(viewer, "Review objects")
    widget.start_button.clicked()
    assert widget.is_reviewing and widget.start_button.text == "Stop review"
    assert coerce_keybinding("M") in labels.keymap
    widget.start_button.clicked()
    assert not widget.is_reviewing and widget.start_button.text == "Start review"
    assert labels.colormap is colormap
    assert viewer.keymap[coerce_keybinding("N")] is users_own
    assert not any(coerce_keybinding(k) in labels.keymap for k in REVIEW_KEYS)
    assert not any(coerce_keybinding(k) in viewer.keymap for k in REVIEW_KEYS if k != "N")


def test_a_layer_without_a_table_is_refused(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_labels(np.zeros((8, 8), np.int32), name="painted")
    widget = open_dock(viewer, "Review objects")
    widget.start_button.clicked()
    assert not widget.is_reviewing
    assert "'painted' has no object table" in widget.last_error


def test_split_cuts_a_part_out_with_a_box_prompt(make_napari_viewer, blob_pipeline, wait_done):
    viewer = make_napari_viewer()
    image = viewer.add_image(blobs(), name="cells")
    labels = viewer.add_labels((blobs() > 100).astype(np.int32), name="cells objects")  # both disks: one object
    labels.features = pd.DataFrame({"index": [1], "id": [1], "score": [0.8], "predicted_iou": [0.9],
                                    "stability": [0.9], "area": [int((labels.data == 1).sum())], "slice": [""]})
    widget = open_dock(viewer, "Review objects")
    widget.images.image.value = image
    widget.start(labels)
    press(viewer, "S")
    boxes = widget.split_boxes
    assert boxes is not None and viewer.layers.selection.active is boxes and boxes.mode == "add_rectangle"
    boxes.add_rectangles(np.array([[30, 50], [50, 70]]))  # around the disk at (40, 60)
    press(viewer, "S")  # bound on the boxes layer too
    wait_done(widget)
    assert widget.last_error is None, widget.last_error
    disk = blobs() > 100
    right = disk & (np.arange(96) >= 45)[None, :]
    np.testing.assert_array_equal(labels.data[right], 2)
    np.testing.assert_array_equal(labels.data[disk & ~right], 1)
    rows = labels.features.set_index("index")
    assert rows.loc[2, "area"] == right.sum() and rows.loc[1, "area"] == (disk & ~right).sum()
    assert rows.loc[2, "predicted_iou"] == pytest.approx(PREDICTED_IOU)
    assert rows.loc[2, "stability"] == pytest.approx(STABILITY) and np.isnan(rows.loc[2, "score"])
    assert boxes.nshapes == 0 and viewer.layers.selection.active is labels
    labels.undo()
    np.testing.assert_array_equal(labels.data, disk.astype(np.int32))
    assert list(labels.features["index"]) == [1]


def test_the_dock_fits_a_small_screen_and_explains_every_control(reviewing):
    _, _, widget = reviewing
    assert widget.native.minimumSizeHint().height() <= 700
    assert widget.native.minimumSizeHint().width() <= 450
    controls = [widget.labels_layer, widget.rank_by, widget.order, widget.only_current, widget.start_button,
                *widget.buttons.values(), *widget.sliders.values()]
    assert all(c.tooltip for c in controls)
    widget._report(RuntimeError("x" * 400))
    assert widget.native.minimumSizeHint().width() <= 450 and widget.status.native.wordWrap()


def test_objects_linked_through_a_stack(make_napari_viewer):
    viewer = make_napari_viewer()
    data = np.zeros((6, 20, 30), np.int32)
    data[0:3, 2:6, 2:6] = 1  # planes 0-2
    data[4:6, 10:16, 20:28] = 2  # planes 4-5
    features = pd.DataFrame({"index": [1, 2], "score": [0.4, 0.8], "predicted_iou": [0.9, 0.8],
                             "stability": [0.9, 0.9], "area": [48, 96], "slice": ["0 to 2", "4 to 5"],
                             "n_planes": [3, 2], "accepted": [np.nan, True]})
    labels = viewer.add_labels(data, features=features)
    widget = open_dock(viewer, "Review objects")
    widget.start(labels)
    assert widget.accepted == {2}  # a missing mark is not an accept
    assert widget.current_id() == 1 and viewer.dims.point[0] == 1  # the middle plane of object 1
    np.testing.assert_allclose(_camera(viewer).center[-2:], (3.5, 3.5))
    dock_next = next(s for s in widget._shortcuts if s.key().toString() == "N")
    dock_next.activated.emit()  # the key N while the dock has the focus
    assert widget.current_id() == 2 and viewer.dims.point[0] in (4, 5)
    widget.merge()
    row = labels.features.set_index("index").loc[1]
    assert (row["area"], row["n_planes"], row["slice"]) == (144, 5, "0 to 2; 4 to 5")
    assert ids_in(labels) == [1] and labels.data[5, 12, 22] == 1
    labels.undo()
    assert ids_in(labels) == [1, 2] and list(labels.features["n_planes"]) == [3, 2]


def test_closing_the_dock_ends_the_review(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    data, features = hand_made_labels()
    labels = viewer.add_labels(data, features=features)
    colormap, keys = labels.colormap, dict(viewer.keymap)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-mobilesamv2", "Review objects")
    widget.start(labels)
    widget.split()  # adds the split boxes layer
    assert len(viewer.layers) == 2
    viewer.window.remove_dock_widget(dock)
    qtbot.waitUntil(lambda: not widget.is_reviewing, timeout=5000)
    assert labels.colormap is colormap and dict(viewer.keymap) == keys and dict(labels.keymap) == {}
    assert list(viewer.layers) == [labels]
    labels.undo()  # no callback into the closed dock
