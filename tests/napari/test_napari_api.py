"""The scripting API on viewer layers: planes in, labels/features/boxes out (no worker thread)."""

import dask
import dask.array as da
import numpy as np
import pytest
from standin import blobs

from napari_mobilesamv2 import ImageOptions, InputError
from napari_mobilesamv2.napari import (
    EMBEDDINGS,
    decode_box_layer,
    segment_anything,
    segment_everything,
    show_boxes,
)
from napari_mobilesamv2.napari._layers import image_view, merge_into


def rectangle(z, y0, x0, y1, x1):
    return np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], float)


def ids_at(labels, *positions):
    return [int(labels[p]) for p in positions]


def test_segment_everything_writes_labels_features_and_transform(make_napari_viewer, blob_pipeline):
    viewer = make_napari_viewer()
    image = viewer.add_image(blobs(), scale=(0.5, 0.25), translate=(10, -3), name="cells")
    labels = segment_everything(image, viewer)
    assert labels.name == "cells objects" and labels in viewer.layers
    assert labels.data.shape == (64, 96) and labels.data.dtype == np.int32
    np.testing.assert_allclose(labels.scale, (0.5, 0.25))
    np.testing.assert_allclose(labels.translate, (10, -3))
    assert sorted(np.unique(labels.data)) == [0, 1, 2]
    features = labels.features
    assert list(features.columns[:7]) == ["index", "id", "score", "predicted_iou", "stability", "area", "slice"]
    assert features["index"].tolist() == [1, 2]
    assert features["area"].tolist() == [int((labels.data == 1).sum()), int((labels.data == 2).sum())]
    assert features["score"].tolist() == pytest.approx([0.9, 0.5])


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # user object 7 covers the left blob's top half; the new left blob is id 1 in the result;
        # "leftover" is a pixel of object 7 outside the blob: overwrite replaces the touched object
        ("new_ids", {"user_pixel": 8, "free_left": 8, "right": 9, "leftover": 7}),
        ("fill_background", {"user_pixel": 7, "free_left": 8, "right": 9, "leftover": 7}),
        ("overwrite", {"user_pixel": 8, "free_left": 8, "right": 9, "leftover": 0}),
    ],
)
def test_id_policies_on_an_existing_layer(make_napari_viewer, blob_pipeline, policy, expected):
    viewer = make_napari_viewer()
    image = viewer.add_image(blobs())
    user = np.zeros((64, 96), np.int32)
    user[10:20, 10:30] = 7
    user[0:3, 0:3] = 3  # untouched by any object
    existing = viewer.add_labels(user.copy())
    segment_everything(image, viewer, output=existing, policy=policy)
    data = existing.data
    assert ids_at(data, (15, 20), (25, 20), (40, 60), (10, 29)) == [
        expected[k] for k in ("user_pixel", "free_left", "right", "leftover")
    ]
    assert (data[0:3, 0:3] == 3).all()
    assert set(existing.features["index"]) >= {expected["free_left"], expected["right"]}


def test_writing_is_one_undo_step_that_restores_exactly(make_napari_viewer, blob_pipeline):
    viewer = make_napari_viewer()
    image = viewer.add_image(blobs())
    labels = viewer.add_labels(np.zeros((64, 96), np.uint8))
    labels.data_setitem((np.array([1, 2]), np.array([1, 2])), 5)  # an earlier user edit
    before = labels.data.copy()
    segment_everything(image, viewer, output=labels)
    assert not np.array_equal(labels.data, before)
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)
    labels.redo()
    assert sorted(np.unique(labels.data)) == [0, 5, 6, 7]
    labels.undo()
    labels.undo()  # the user's own edit is the step before ours
    assert not labels.data.any()


def test_plane_of_a_stack_uses_the_layer_max_for_new_ids(make_napari_viewer, blob_pipeline):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.stack([blobs()] * 4))
    existing = np.zeros((4, 64, 96), np.int32)
    existing[0, :2, :2] = 41  # on another plane than the one segmented
    labels = viewer.add_labels(existing)
    viewer.dims.set_current_step(0, 2)
    segment_everything(image, viewer, output=labels, policy="fill_background")
    assert sorted(np.unique(labels.data[2])) == [0, 42, 43]
    assert not labels.data[[1, 3]].any()
    assert labels.features.set_index("index").loc[42, "slice"] == "2"


def test_ids_too_large_for_the_layer_dtype_widen_it(make_napari_viewer, blob_pipeline):
    viewer = make_napari_viewer()
    image = viewer.add_image(blobs())
    user = np.zeros((64, 96), np.uint8)
    user[0, 0] = 255
    labels = viewer.add_labels(user)
    segment_everything(image, viewer, output=labels)
    assert labels.data.dtype.itemsize > 1 and labels.data.max() == 257
    labels.undo()
    assert labels.data.max() == 255 and (labels.data > 0).sum() == 1


def test_merge_into_offsets_after_the_layer_max():
    region = np.zeros((4, 4), np.int32)
    new = np.zeros((4, 4), np.int32)
    new[0, 0], new[1, 1] = 1, 2
    merged, id_map = merge_into(region, new, "new_ids", layer_max=10)
    assert id_map == {1: 11, 2: 12} and merged[0, 0] == 11


def test_whole_stack_links_objects_through_z(make_napari_viewer, blob_pipeline):
    viewer = make_napari_viewer()
    planes = [blobs(centres=((20, 20 + z), (44, 70)), radius=6 + (z % 2)) for z in range(5)]
    planes[0] = blobs(centres=((20, 20),))  # the second object starts at z = 1
    image = viewer.add_image(np.stack(planes), scale=(3, 1, 1))
    labels = segment_everything(image, viewer, scope="stack", link_iou=0.5)
    data = labels.data
    assert data.shape == (5, 64, 96)
    assert {int(data[z, 20, 20 + z]) for z in range(5)} == {1}
    assert {int(data[z, 44, 70]) for z in range(1, 5)} == {2}
    assert data[0, 44, 70] == 0
    features = labels.features.set_index("index")
    assert features.loc[1, "n_planes"] == 5 and features.loc[2, "n_planes"] == 4
    assert features.loc[2, "slice"] == "1 to 4"
    np.testing.assert_allclose(labels.scale, (3, 1, 1))


def test_time_series_of_stacks_links_through_t_and_z(make_napari_viewer, blob_pipeline):
    viewer = make_napari_viewer()
    stack = np.stack([np.stack([blobs(centres=((30, 30 + 2 * t),), radius=9)] * 3) for t in range(3)])
    image = viewer.add_image(stack)
    labels = segment_everything(image, viewer, scope="stack")
    assert labels.data.shape == (3, 3, 64, 96)
    assert np.unique(labels.data).tolist() == [0, 1]


def test_dask_layers_are_read_plane_by_plane(make_napari_viewer, blob_pipeline):
    loaded = []

    def load(z):
        loaded.append(z)
        return blobs(centres=((20, 20 + z),))

    stack = da.stack([da.from_delayed(dask.delayed(load)(z), (64, 96), np.uint8) for z in range(6)])
    viewer = make_napari_viewer()
    image = viewer.add_image(stack, contrast_limits=(0, 255))
    viewer.dims.set_current_step(0, 4)
    loaded.clear()
    labels = segment_everything(image, viewer)
    assert set(loaded) == {4}
    assert labels.data[4].any() and not labels.data[:4].any()
    loaded.clear()
    segment_everything(image, viewer, scope="stack")
    assert sorted(loaded) == list(range(6))  # each plane on its own, once


def test_multichannel_layer_needs_an_explicit_choice_of_channels(make_napari_viewer, blob_pipeline):
    viewer = make_napari_viewer()
    channels = np.stack([blobs(centres=((20, 20),)), blobs(centres=((40, 60),))] + [np.zeros((64, 96), np.uint8)] * 3)
    image = viewer.add_image(channels)
    with pytest.raises(InputError, match="choose at most three"):
        segment_everything(image, viewer, channel_axis=0)
    labels = segment_everything(image, viewer, channel_axis=0, channels=(0, 1, 2))
    assert labels.data.shape == (1, 64, 96)
    assert sorted(np.unique(labels.data)) == [0, 1, 2]
    # the length-1 channel axis is stretched over the 5 channels
    np.testing.assert_allclose(labels.scale[0], 5)
    np.testing.assert_allclose(labels.translate[0], 2)
    with pytest.raises(InputError, match="displayed"):
        segment_everything(image, viewer, channel_axis=2)


@pytest.mark.parametrize("kind", ["rgb", "rgba", "float_nan", "int16"])
def test_image_kinds(make_napari_viewer, blob_pipeline, kind):
    viewer = make_napari_viewer()
    grey = blobs()
    if kind in ("rgb", "rgba"):
        data = np.stack([grey] * (3 if kind == "rgb" else 4), axis=-1)
        data[..., -1] = 255 if kind == "rgba" else data[..., -1]
    elif kind == "float_nan":
        data = grey.astype(np.float32) / 7
        data[0, :10] = np.nan
        data[1, :10] = -np.inf
    else:
        data = grey.astype(np.int16) * 40 - 3000
    image = viewer.add_image(data)
    labels = segment_everything(image, viewer)
    assert labels.data.shape == (64, 96)
    assert sorted(np.unique(labels.data)) == [0, 1, 2]


def test_contrast_limit_normalization_uses_the_layer_limits(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(blobs(dtype=np.uint16), contrast_limits=(5, 250))
    view = image_view(image, viewer, ImageOptions(normalization="contrast_limits"))
    assert view.conversion() == {"normalization": "contrast_limits", "contrast_limits": (5.0, 250.0)}
    image.contrast_limits = (0, 100)
    assert view.conversion()["contrast_limits"] == (5.0, 250.0)  # a run uses the limits it started with
    later = image_view(image, viewer, ImageOptions(normalization="contrast_limits"))
    assert later.conversion()["contrast_limits"] == (0.0, 100.0)
    assert later.cache_key(()) != view.cache_key(()) != image_view(image, viewer).cache_key(())


def test_segment_anything_with_positive_negative_points_and_boxes(make_napari_viewer, blob_pipeline):
    viewer = make_napari_viewer()
    image = viewer.add_image(blobs(centres=((20, 20), (40, 60), (50, 15))))
    points = viewer.add_points(
        [[20, 20], [40, 60]], features={"positive": [True, False]}, name="prompts"
    )
    boxes = viewer.add_shapes([[[42, 5], [58, 25]]], shape_type="rectangle")
    labels = segment_anything(image, viewer, points=points, shapes=boxes)
    assert ids_at(labels.data, (20, 20), (40, 60), (50, 15)) == [1, 0, 2]
    # refining on the same plane reuses the embedding: only the decoder runs
    calls = blob_pipeline.embed_calls
    points.selected_data = {1}
    points.remove_selected()
    segment_anything(image, viewer, points=points, shapes=boxes, output=labels)
    assert blob_pipeline.embed_calls == calls
    # point objects come first, then boxes; new ids start after the layer's max (2)
    assert ids_at(labels.data, (20, 20), (40, 60), (50, 15)) == [3, 0, 4]


def test_point_groups_make_one_object(make_napari_viewer, blob_pipeline):
    viewer = make_napari_viewer()
    image = viewer.add_image(blobs())
    points = viewer.add_points([[20, 20], [40, 60]], features={"object": [1, 1]})
    labels = segment_anything(image, viewer, points=points)
    assert ids_at(labels.data, (20, 20), (40, 60)) == [1, 1]


def test_prompts_on_other_planes_are_ignored(make_napari_viewer, blob_pipeline):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.stack([blobs()] * 3), scale=(2, 1, 1))
    points = viewer.add_points([[0, 20, 20], [4, 40, 60]], scale=(2, 1, 1))  # data z 0 and 2 (world 0 and 8)
    viewer.dims.set_current_step(0, 2)  # world z 2 -> image plane 1: no prompt there
    with pytest.raises(InputError, match="no prompts"):
        segment_anything(image, viewer, points=points)
    viewer.dims.set_point(0, 0)
    labels = segment_anything(image, viewer, points=points)
    assert labels.data[0, 20, 20] == 1 and not labels.data[1:].any()


def test_show_boxes_then_decode_edited_boxes(make_napari_viewer, blob_pipeline):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.stack([blobs()] * 2), translate=(0, 4, 2))
    viewer.dims.set_current_step(0, 1)
    shapes = show_boxes(image, viewer)
    assert shapes.nshapes == 2 and shapes.shape_type == ["rectangle", "rectangle"]
    np.testing.assert_allclose(shapes.translate, (0, 4, 2))
    assert shapes.features["score"].tolist() == pytest.approx([0.9, 0.5])
    # the rectangle encloses the left disk's pixels: pixel edges 12..29 -> napari 11.5..28.5
    np.testing.assert_allclose(shapes.data[0][:, 1:].min(0), [11.5, 11.5])
    calls = blob_pipeline.embed_calls
    shapes.selected_data = {1}
    shapes.remove_selected()
    shapes.add_rectangles(rectangle(1, 52, 85, 58, 95))  # an empty user box: no object
    shapes.add_rectangles(rectangle(1, 30, 50, 50, 70))  # the right disk again, drawn by hand
    labels = decode_box_layer(image, shapes, viewer)
    assert blob_pipeline.embed_calls == calls  # only the decoder ran
    assert ids_at(labels.data[1], (20, 20), (40, 60)) == [1, 3]
    score = labels.features.set_index("index")["score"]
    assert score[1] == pytest.approx(0.9) and np.isnan(score[3])


def test_a_new_layer_never_gets_a_partial_result_on_error(make_napari_viewer, blob_pipeline):
    viewer = make_napari_viewer()
    image = viewer.add_image(blobs())
    blob_pipeline.fail_with = RuntimeError("out of memory")
    with pytest.raises(RuntimeError):
        segment_everything(image, viewer)
    assert len(viewer.layers) == 1


def test_the_embedding_cache_is_keyed_by_plane_and_settings(make_napari_viewer, blob_pipeline):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.stack([blobs()] * 2))
    EMBEDDINGS.clear()
    segment_everything(image, viewer, plane=(0,))
    segment_everything(image, viewer, plane=(0,))
    assert blob_pipeline.embed_calls == 1
    segment_everything(image, viewer, plane=(1,))
    segment_everything(image, viewer, plane=(1,), normalization="minmax")
    assert blob_pipeline.embed_calls == 3


def test_an_embeddings_folder_keeps_embeddings_across_sessions(make_napari_viewer, blob_pipeline, tmp_path):
    viewer = make_napari_viewer()
    image = viewer.add_image(blobs())
    folder = tmp_path / "embeddings"
    EMBEDDINGS.clear()
    first = segment_everything(image, viewer, embeddings_folder=folder)
    assert blob_pipeline.embed_calls == 1 and len(list(folder.iterdir())) >= 1
    EMBEDDINGS.clear()  # a new session: nothing in memory
    second = segment_everything(image, viewer, embeddings_folder=folder)
    segment_anything(image, viewer, shapes=viewer.add_shapes([[[10, 10], [10, 40], [40, 40], [40, 10]]],
                                                               shape_type="rectangle"), embeddings_folder=folder)
    assert blob_pipeline.embed_calls == 1  # both read the folder's embedding
    np.testing.assert_array_equal(first.data, second.data)
    EMBEDDINGS.clear()
    segment_everything(image, viewer)  # no folder: computed again
    assert blob_pipeline.embed_calls == 2


def test_bad_settings_and_outputs_are_refused(make_napari_viewer, blob_pipeline):
    viewer = make_napari_viewer()
    image = viewer.add_image(blobs())
    with pytest.raises(InputError, match="unknown setting"):
        segment_everything(image, viewer, confidence=0.3)
    with pytest.raises(InputError, match="id policy"):
        segment_everything(image, viewer, policy="merge")
    wrong = viewer.add_labels(np.zeros((10, 10), np.int32))
    with pytest.raises(InputError, match="shape"):
        segment_everything(image, viewer, output=wrong)


def test_the_scripting_example_runs(make_napari_viewer, blob_pipeline, monkeypatch, tmp_path):
    """docs/scripting_example.py, with the blob stand-in instead of downloaded weights."""
    import runpy
    from pathlib import Path

    import napari

    example = runpy.run_path(str(Path(__file__).parents[2] / "docs" / "scripting_example.py"))
    monkeypatch.setattr(napari, "Viewer", lambda show=False: make_napari_viewer())
    viewer, labels = example["main"](save=str(tmp_path / "labels.tif"))
    assert labels.data.shape == (20, 128, 128) and labels.data.max() > 0
    assert (tmp_path / "labels.tif").exists()
    assert [layer.name for layer in viewer.layers][:2] == ["nuclei 3D", "nuclei 3D objects"]


def test_segment_anything_on_a_channel_of_a_multichannel_layer(make_napari_viewer, blob_pipeline):
    viewer = make_napari_viewer()
    channels = np.stack([blobs(centres=((20, 20),)), blobs(centres=((40, 60),))])
    image = viewer.add_image(channels)
    points = viewer.add_points([[1, 40, 60]])  # clicked while showing channel 1
    labels = segment_anything(image, viewer, points=points, channel_axis=0, channels=(1,))
    assert labels.data.shape == (1, 64, 96)
    assert labels.data[0, 40, 60] == 1 and labels.data[0, 20, 20] == 0


def test_lines_and_paths_are_not_box_prompts(make_napari_viewer, blob_pipeline):
    viewer = make_napari_viewer()
    image = viewer.add_image(blobs())
    shapes = viewer.add_shapes(
        [[[10, 10], [30, 40]], [[40, 50], [40, 70], [44, 70], [44, 50]]], shape_type=["line", "polygon"]
    )
    labels = segment_anything(image, viewer, shapes=shapes)
    assert np.unique(labels.data).tolist() == [0, 1] and labels.data[42, 60] == 1  # the polygon only
    shapes.selected_data = {1}
    shapes.remove_selected()
    with pytest.raises(InputError, match="lines and paths are ignored"):
        segment_anything(image, viewer, shapes=shapes)


def test_labels_of_another_scale_are_refused(make_napari_viewer, blob_pipeline):
    viewer = make_napari_viewer()
    image = viewer.add_image(blobs(), scale=(0.5, 0.5))
    other = viewer.add_labels(np.zeros((64, 96), np.int32), scale=(2, 2))
    with pytest.raises(InputError, match="scale"):
        segment_everything(image, viewer, output=other)
    assert not other.data.any()
