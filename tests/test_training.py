"""Detector fine-tuning: dataset conversion, errors, the pickle-free detector file, training, cancellation."""

from __future__ import annotations

import copy
import errno
import json
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch

from napari_mobilesamv2.errors import CheckpointError, InputError, OutputError, UntrustedWeightsError
from napari_mobilesamv2.imaging import to_rgb_uint8
from napari_mobilesamv2.models.detector import ObjectAwareDetector, load_object_aware_model
from napari_mobilesamv2.prompts.object_aware import detect_objects
from napari_mobilesamv2.training import (
    FORMAT,
    TrainingCancelled,
    boxes_from_labels,
    convert_detector,
    count_matches,
    evaluate_detector,
    is_detector_state,
    load_detector_state,
    read_detector_state,
    split_indices,
    train_detector,
    tune_thresholds,
    write_yolo_dataset,
    yolo_lines,
)
from napari_mobilesamv2.training.state import trainable_from_pickle

from .conftest import DETECTOR_FIXTURE, nuclei, write_pairs


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- dataset ---------------------------------------------------------------------------------------


def test_boxes_from_labels_gives_one_pixel_edge_box_per_id_in_id_order():
    labels = np.zeros((20, 30), np.uint16)
    labels[2:5, 3:9] = 7
    labels[10:12, 20:30] = 3
    labels[15:20, 0:1] = 7  # a second piece of id 7: still one box
    boxes = boxes_from_labels(labels)
    assert boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes, [[20, 10, 30, 12], [0, 2, 9, 20]])
    assert boxes_from_labels(np.zeros((4, 4), np.uint8)).shape == (0, 4)
    np.testing.assert_array_equal(boxes_from_labels(np.ones((4, 5), np.int32)), [[0, 0, 5, 4]])  # no background


def test_yolo_lines_are_normalised_centre_and_size():
    lines = yolo_lines(np.array([[2, 1, 5, 3], [0, 0, 8, 6]], np.float32), (6, 8))
    assert lines == ["0 0.437500 0.333333 0.375000 0.333333", "0 0.500000 0.500000 1.000000 1.000000"]


def test_split_is_seeded_disjoint_and_holds_out_at_least_one():
    train, val = split_indices(10, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert sorted([*train, *val]) == list(range(10))
    again = split_indices(10, 0.2, seed=3)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    assert [len(part) for part in split_indices(2, 0.2)] == [1, 1]
    assert [len(part) for part in split_indices(3, 0.01)] == [2, 1]
    with pytest.raises(InputError, match="at least 2 are needed"):
        split_indices(1)


def test_write_yolo_dataset_writes_images_labels_and_yaml(tmp_path):
    images, labels = write_pairs(tmp_path, range(5))
    dataset = write_yolo_dataset(images, labels, tmp_path / "yolo", val_fraction=0.2, seed=0)
    assert len(dataset.train) == 4 and len(dataset.val) == 1
    assert dataset.n_objects == (16, 4)
    names = sorted(a.name for a in dataset.train + dataset.val)
    assert names == [f"n{s:02d}.tif" for s in range(5)]
    for annotated in dataset.train + dataset.val:
        image, label = tifffile.imread(images / annotated.name), tifffile.imread(labels / annotated.name)
        np.testing.assert_array_equal(annotated.boxes, boxes_from_labels(label))
        np.testing.assert_array_equal(annotated.read_rgb(), to_rgb_uint8(image))
        split = annotated.path.parent.name
        text = (tmp_path / "yolo" / "labels" / split / f"{annotated.path.stem}.txt").read_text().splitlines()
        assert text == yolo_lines(annotated.boxes, (128, 128))
        values = np.array([line.split() for line in text], float)
        assert (values[:, 0] == 0).all() and (values[:, 1:] > 0).all() and (values[:, 1:] <= 1).all()
        if annotated in dataset.val:  # held-out images keep their label image, to tune the mask filters on
            np.testing.assert_array_equal(annotated.read_labels(), label)
        else:
            assert annotated.labels_path is None
            with pytest.raises(InputError, match="only held-out images"):
                annotated.read_labels()
    yaml = dataset.data_yaml.read_text()
    assert "train: images/train" in yaml and "val: images/val" in yaml and "nc: 1" in yaml
    assert dataset.data_dict()["names"] == {0: "object"}


def test_dataset_images_reach_the_network_in_the_inference_channel_order(tmp_path):
    """Ultralytics' loader must hand the network what detect_objects feeds: the RGB channels reversed."""
    from ultralytics.data.dataset import YOLODataset

    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    labels = [nuclei(s)[1] for s in range(3)]
    dataset = write_yolo_dataset([colour, colour, colour], labels, tmp_path / "yolo", val_fraction=0.34)
    loader = YOLODataset(img_path=str(tmp_path / "yolo" / "images" / "val"), imgsz=128, augment=False,
                         data={"names": {0: "object"}, "nc": 1, "channels": 3}, rect=False)
    network_input = loader[0]["img"].numpy()
    np.testing.assert_array_equal(network_input, colour[..., ::-1].transpose(2, 0, 1))
    assert len(dataset.val) == 1


def test_in_memory_arrays_are_accepted(tmp_path):
    pairs = [nuclei(s) for s in range(3)]
    dataset = write_yolo_dataset([p[0] for p in pairs], [p[1] for p in pairs], tmp_path / "yolo")
    assert sorted(a.name for a in dataset.train + dataset.val) == ["image_000", "image_001", "image_002"]


def test_unpaired_files_are_listed(tmp_path):
    images, labels = write_pairs(tmp_path, range(4))
    (labels / "n03.tif").rename(labels / "other.tif")
    with pytest.raises(InputError) as error:
        write_yolo_dataset(images, labels, tmp_path / "yolo")
    message = str(error.value)
    assert "do not pair up" in message and "n03.tif" in message and "other.tif" in message
    assert "\n" not in message


def test_label_image_of_another_size_is_named(tmp_path):
    images, labels = write_pairs(tmp_path, range(4))
    tifffile.imwrite(labels / "n02.tif", nuclei(2, size=96)[1])
    with pytest.raises(InputError, match=r"n02\.tif \(96x96 label image, 128x128 image\)"):
        write_yolo_dataset(images, labels, tmp_path / "yolo")


def test_empty_label_images_are_named(tmp_path):
    images, labels = write_pairs(tmp_path, range(5))
    for name in ("n01.tif", "n04.tif"):
        tifffile.imwrite(labels / name, np.zeros((128, 128), np.uint16))
    with pytest.raises(InputError, match=r"2 label image\(s\) have no objects: n01\.tif, n04\.tif"):
        write_yolo_dataset(images, labels, tmp_path / "yolo")


def test_too_few_objects_says_how_many_are_needed(tmp_path):
    images, labels = write_pairs(tmp_path, range(2))  # 8 objects
    with pytest.raises(InputError, match="hold 8 object.* at least 10 are needed"):
        write_yolo_dataset(images, labels, tmp_path / "yolo")


def test_png_and_rgb_label_images(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for seed in range(3):
        image, label = nuclei(seed)
        cv2.imwrite(str(images / f"{seed}.png"), (image // 8).astype(np.uint8))
        colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
        cv2.imwrite(str(labels / f"{seed}.png"), colours[label])  # colour-coded ids
    dataset = write_yolo_dataset(images, labels, tmp_path / "yolo")
    for annotated in dataset.train + dataset.val:
        expected = boxes_from_labels(nuclei(int(Path(annotated.name).stem))[1])
        np.testing.assert_array_equal(np.sort(annotated.boxes, 0), np.sort(expected, 0))


def test_full_disk_while_writing_the_dataset_is_an_output_error(tmp_path, monkeypatch):
    images, labels = write_pairs(tmp_path, range(4))
    monkeypatch.setattr(cv2, "imwrite", lambda *args, **kwargs: False)
    with pytest.raises(OutputError, match="no space left"):
        write_yolo_dataset(images, labels, tmp_path / "yolo")


# --- matching and thresholds -------------------------------------------------------------------------


def test_count_matches_is_one_to_one_at_iou_half():
    true = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    predicted = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 26, 30], [50, 50, 60, 60]], np.float32)
    assert count_matches(predicted, true) == 2  # the duplicate of box 0 does not count twice; 6/10 IoU matches
    assert count_matches(predicted[[3]], true) == 0
    assert count_matches(np.zeros((0, 4)), true) == 0
    assert count_matches(np.array([[20, 20, 24, 30]], np.float32), true) == 0  # IoU 0.4


# --- pickle-free detector file -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    return convert_detector(DETECTOR_FIXTURE, tmp_path_factory.mktemp("state") / "detector.pt", trusted=True)


def test_converted_file_loads_with_weights_only_and_gives_the_pickles_boxes(converted):
    raw = torch.load(converted, map_location="cpu", weights_only=True)
    assert raw["format"] == FORMAT and raw["architecture"]["reg_max"] == 26 and raw["architecture"]["nc"] == 1
    assert raw["architecture"]["stride"] == [8.0, 16.0, 32.0]
    assert raw["architecture"]["yaml"]["head"][-1] == [[15, 18, 21], 1, "Detect", ["nc"]]
    assert all(v.dtype in (torch.float32, torch.int64) for v in raw["state_dict"].values())
    detector, reference = load_detector_state(converted), load_object_aware_model(DETECTOR_FIXTURE)
    assert type(detector) is ObjectAwareDetector and type(detector.head) is type(reference.head)
    assert detector.head.reg_max == 26 and detector.head.nc == 1 and not detector.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in detector.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in detector.modules())
    assert detector.stride.tolist() == [8.0, 16.0, 32.0]
    x = torch.rand(1, 3, 160, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(detector(x), reference(x))
    image = to_rgb_uint8(nuclei(0, 160)[0])
    for got, expected in zip(detect_objects(detector, image, imgsz=160), detect_objects(reference, image, imgsz=160)):
        np.testing.assert_array_equal(got, expected)


def test_is_detector_state_tells_the_formats_apart(converted, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    assert is_detector_state(converted)
    assert not is_detector_state(DETECTOR_FIXTURE)  # the pickle is refused by weights_only, never unpickled
    assert not any(is_detector_state(p) for p in (garbage, plain, tmp_path / "missing.pt", tmp_path))
    with pytest.raises(CheckpointError, match="a pickle with Python objects"):
        read_detector_state(DETECTOR_FIXTURE)
    with pytest.raises(CheckpointError, match="another kind of PyTorch file"):
        read_detector_state(plain)


@pytest.mark.parametrize("edit, message", [
    (lambda a: a["yaml"].update(activation="__import__('os').getcwd()"), "unknown keys"),
    (lambda a: a["yaml"]["backbone"][0].__setitem__(2, "torch_safe_load"), "type 'torch_safe_load'"),
    (lambda a: a["yaml"]["backbone"][0].__setitem__(3, ["os.system('x')"]), "arguments"),
    (lambda a: a.update(nc=2), "nc=2"),
    (lambda a: a["yaml"]["head"].__setitem__(-1, [[15, 18, 21], 1, "Conv", [16]]), "not a Detect head"),
])
def test_architectures_that_could_run_code_or_differ_are_refused(converted, tmp_path, edit, message):
    data = torch.load(converted, map_location="cpu", weights_only=True)
    edit(data["architecture"])
    edited = tmp_path / "edited.pt"
    torch.save(data, edited)
    with pytest.raises(CheckpointError, match=message):
        load_detector_state(edited)


def test_architecture_with_model_scales_as_ultralytics_8_0_120_stores_them(converted):
    """Stock YOLOv8 yamls carry `scales` and the chosen `scale` instead of depth and width multiples."""
    from napari_mobilesamv2.training.state import architecture_from_yaml, build_detection_model

    stored = torch.load(converted, map_location="cpu", weights_only=True)["architecture"]["yaml"]
    scaled = {key: copy.deepcopy(value) for key, value in stored.items()
              if key not in ("depth_multiple", "width_multiple")}
    scaled.update(scales={"n": [0.33, 0.03125, 1024]}, scale="n", yaml_file="yolov8n-seg.yaml", ch=3)
    scaled["head"][-1] = [[15, 18, 21], 1, "Segment", ["nc", 32, 256]]
    architecture = architecture_from_yaml(scaled)
    assert "yaml_file" not in architecture["yaml"] and architecture["yaml"]["scale"] == "n"
    model = build_detection_model(architecture)
    reference = build_detection_model({**architecture, "yaml": stored})
    assert [tuple(v.shape) for v in model.state_dict().values()] == [
        tuple(v.shape) for v in reference.state_dict().values()]


def test_the_loss_of_the_trainable_model_uses_26_dfl_bins():
    from ultralytics.cfg import get_cfg
    from ultralytics.utils.loss import v8DetectionLoss

    model, architecture = trainable_from_pickle(DETECTOR_FIXTURE, trusted=True)
    assert architecture["reg_max"] == 26 and model.model[-1].reg_max == 26
    model.args = get_cfg()
    criterion = model.init_criterion()
    assert type(criterion) is v8DetectionLoss and criterion.reg_max == 26 and criterion.proj.numel() == 26
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # unfused: trainable


def test_an_unknown_pickle_needs_trust(tmp_path):
    images, labels = write_pairs(tmp_path, range(4))
    with pytest.raises(UntrustedWeightsError, match="trust_weights=True"):
        train_detector(images, labels, tmp_path / "out.pt", start=DETECTOR_FIXTURE, epochs=1, imgsz=128)
    assert not (tmp_path / "out.pt").exists()


# --- training ---------------------------------------------------------------------------------------


class NetworkCalls:
    def __init__(self):
        self.calls = []

    def refuse(self, name):
        def refused(*args, **kwargs):
            self.calls.append((name, args[:2]))
            raise OSError(errno.ENETUNREACH, "network access during a test")
        return refused


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two epochs on five 128 px images from the tiny fixture, with every network access refused."""
    folder = tmp_path_factory.mktemp("train")
    images, labels = write_pairs(folder, range(5))
    epochs_seen = []
    network = NetworkCalls()
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", network.refuse("connect"))
        patch.setattr(socket, "getaddrinfo", network.refuse("getaddrinfo"))
        patch.setattr(socket, "create_connection", network.refuse("create_connection"))
        patch.setattr("ultralytics.utils.torch_utils.NUM_THREADS", threads + 1)  # what its device setup would set
        report = train_detector(images, labels, folder / "tuned.pt", start=DETECTOR_FIXTURE, trust_weights=True,
                                epochs=2, imgsz=128, batch=4, device="cpu",
                                on_epoch=lambda epoch, metrics: epochs_seen.append((epoch, metrics)))
    assert torch.get_num_threads() == threads  # Ultralytics' thread setting does not leak out
    return report, epochs_seen, network.calls, folder


def test_training_writes_the_detector_and_its_card(trained):
    report, epochs_seen, network_calls, folder = trained
    assert network_calls == []
    assert report.path == folder / "tuned.pt" and report.card_path == folder / "tuned.json"
    assert sorted(p.name for p in folder.iterdir()) == ["images", "labels", "tuned.json", "tuned.pt"]
    assert report.epochs_run == 2 and not report.stopped_early and report.best_epoch in (1, 2)
    assert [epoch for epoch, _ in epochs_seen] == [1, 2]
    assert set(epochs_seen[0][1]) >= {"box_loss", "cls_loss", "dfl_loss", "precision", "recall", "map50",
                                      "map50_95", "seconds", "epochs"}
    card = json.loads(report.card_path.read_text())
    assert card == json.loads(json.dumps(report.card))
    assert card["data"]["n_train_images"] == 4 and card["data"]["n_val_images"] == 1
    assert card["data"]["n_train_objects"] == 16 and card["data"]["n_val_objects"] == 4
    assert card["training"]["epochs"] == 2 and card["training"]["imgsz"] == 128
    assert len(card["training"]["history"]) == 2
    assert set(card["metrics"]["before"]) == {"default_thresholds", "tuned_thresholds"}
    assert card["metrics"]["after"]["tuned_thresholds"]["conf"] == report.thresholds.conf
    stored = read_detector_state(report.path)
    assert stored["card"] == card
    assert stored["inference"] == {"imgsz": 128, "conf": report.thresholds.conf, "iou": report.thresholds.iou}
    assert tuple(stored["state_dict"]["model.22.cv2.0.2.weight"].shape)[:1] == (4 * 26,)


def test_the_saved_detector_predicts_like_the_trained_one(trained):
    report, *_ = trained
    loaded = load_detector_state(report.path)
    x = torch.rand(2, 3, 128, 192, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(loaded(x), report.detector(x))
    assert not torch.equal(loaded(x), load_object_aware_model(DETECTOR_FIXTURE)(x))  # it did train
    image = to_rgb_uint8(nuclei(9)[0])
    got = detect_objects(loaded, image, imgsz=128, conf=0.05)
    expected = detect_objects(report.detector, image, imgsz=128, conf=0.05)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_tuned_thresholds_maximise_f1_on_the_grid(trained):
    report, *_ = trained
    pairs = [(to_rgb_uint8(nuclei(s)[0]), boxes_from_labels(nuclei(s)[1])) for s in (20, 21)]
    choice = tune_thresholds(report.detector, pairs, confs=(0.05, 0.2, 0.5), ious=(0.5, 0.9), imgsz=128)
    assert len(choice.grid) == 6 and choice.scores.f1 == pytest.approx(max(f1 for _, _, f1 in choice.grid))
    direct = evaluate_detector(report.detector, pairs, conf=choice.conf, iou=choice.iou, imgsz=128)
    assert direct.f1 == choice.scores.f1 and direct.n_predicted == choice.scores.n_predicted
    assert choice.scores.seconds_per_image > 0 and direct.n_true == 8


def test_on_epoch_returning_false_stops_and_keeps_the_best_epoch(tmp_path):
    images, labels = write_pairs(tmp_path, range(5))
    report = train_detector(images, labels, tmp_path / "stopped.pt", start=DETECTOR_FIXTURE, trust_weights=True,
                            epochs=20, imgsz=128, batch=4, device="cpu", on_epoch=lambda epoch, metrics: False)
    assert report.epochs_run == 1 and report.stopped_early and report.best_epoch == 1
    assert report.card["training"]["stopped_early"] is True and is_detector_state(report.path)


def test_should_stop_cancels_within_the_first_epoch(tmp_path):
    images, labels = write_pairs(tmp_path, range(5))
    report = train_detector(images, labels, tmp_path / "cancelled.pt", start=DETECTOR_FIXTURE, trust_weights=True,
                            epochs=20, imgsz=128, batch=2, device="cpu", should_stop=lambda: True)
    assert report.epochs_run == 1 and report.stopped_early


def test_a_full_disk_while_training_is_an_output_error_and_writes_nothing(tmp_path, monkeypatch):
    from ultralytics.engine.trainer import BaseTrainer

    def full(self, metrics):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(BaseTrainer, "save_metrics", full)
    images, labels = write_pairs(tmp_path, range(4))
    out = tmp_path / "out" / "detector.pt"
    out.parent.mkdir()
    with pytest.raises(OutputError, match="full while training"):
        train_detector(images, labels, out, start=DETECTOR_FIXTURE, trust_weights=True, epochs=1, imgsz=128,
                       batch=4, device="cpu", workdir=tmp_path / "work")
    assert list(out.parent.iterdir()) == [] and list((tmp_path / "work").iterdir()) == []


def test_starting_from_a_fine_tuned_file_needs_no_trust(converted, tmp_path):
    images, labels = write_pairs(tmp_path, range(4))
    report = train_detector(images, labels, tmp_path / "again.pt", start=converted, epochs=1, imgsz=128, batch=4,
                            device="cpu")
    assert report.card["start"]["format"] == FORMAT and is_detector_state(report.path)


def test_bad_parameters_are_refused_before_any_work(tmp_path):
    images, labels = write_pairs(tmp_path, range(4))
    for kwargs, message in (({"epochs": 0}, "epochs"), ({"imgsz": 100}, "multiple of 32"), ({"batch": 1}, "batch"),
                            ({"device": "tpu"}, "device")):
        with pytest.raises(InputError, match=message):
            train_detector(images, labels, tmp_path / "x.pt", start=DETECTOR_FIXTURE, trust_weights=True, **kwargs)
    with pytest.raises(InputError, match="model card"):
        train_detector(images, labels, tmp_path / "x.json", start=DETECTOR_FIXTURE, trust_weights=True)
    with pytest.raises(OutputError, match="does not exist"):
        train_detector(images, labels, tmp_path / "missing" / "x.pt", start=DETECTOR_FIXTURE, trust_weights=True)


def test_should_cancel_during_a_batch_writes_nothing(tmp_path):
    images, labels = write_pairs(tmp_path, range(4))
    polls = []

    def cancel_in_the_first_batch() -> bool:
        polls.append(True)
        return len(polls) > 3  # three checks come before training: the first poll in a batch cancels

    out = tmp_path / "out" / "cancelled.pt"
    out.parent.mkdir()
    with pytest.raises(TrainingCancelled, match="no detector was written"):
        train_detector(images, labels, out, start=DETECTOR_FIXTURE, trust_weights=True, epochs=5, imgsz=128,
                       batch=2, device="cpu", workdir=tmp_path / "work", should_cancel=cancel_in_the_first_batch)
    assert len(polls) == 4 and list(out.parent.iterdir()) == [] and list((tmp_path / "work").iterdir()) == []


# --- mask filters ------------------------------------------------------------------------------------


class FixedMasks:
    """A stand-in pipeline: segment_everything returns hand-made masks for each image, in call order."""

    def __init__(self, per_image):
        self.per_image = list(per_image)
        self.calls = []

    def segment_everything(self, image, **settings):
        from types import SimpleNamespace

        self.calls.append(settings)
        masks = self.per_image[len(self.calls) - 1]
        return SimpleNamespace(crops=[crop for crop, _, _ in masks],
                               predicted_iou=np.array([p for _, p, _ in masks], np.float32),
                               stability=np.array([s for _, _, s in masks], np.float32))


def square(top: int, left: int, height: int, width: int | None = None):
    from napari_mobilesamv2.decode.masks import MaskCrop

    return MaskCrop(top, left, np.ones((height, width or height), bool))


def hand_made_filter_case():
    """Two images: 6 true objects; without filters 9 masks, 5 of them matched.

    Image 1 (ids 1-4, 8x8 squares): the 4 exact masks (predicted IoU 0.9, stability 0.96), a mask on
    the background with stability 0.55, a duplicate of object 1 with stability 0.6, and a 2x2 speck
    of stability 0.97 and predicted IoU 0.95. Image 2 (ids 5 and 7): half of object 5 (IoU 0.5,
    matched, 32 px) and 24 px of object 7 (IoU 0.375: a false positive; object 7 is missed).
    """
    first = np.zeros((40, 40), np.uint16)
    for k, (top, left) in enumerate(((2, 2), (2, 20), (20, 2), (20, 20)), start=1):
        first[top:top + 8, left:left + 8] = k
    masks_1 = [(square(t, l, 8), 0.9, 0.96) for t, l in ((2, 2), (2, 20), (20, 2), (20, 20))]
    masks_1 += [(square(30, 30, 8), 0.9, 0.55), (square(2, 2, 8), 0.9, 0.6), (square(12, 12, 2), 0.95, 0.97)]
    second = np.zeros((30, 30), np.uint16)
    second[1:9, 1:9], second[15:23, 15:23] = 5, 7
    masks_2 = [(square(1, 1, 4, 8), 0.9, 0.96), (square(15, 15, 3, 8), 0.9, 0.96)]
    rgb = [np.zeros(labels.shape + (3,), np.uint8) for labels in (first, second)]
    return list(zip(rgb, (first, second))), FixedMasks([masks_1, masks_2])


def test_match_masks_pairs_each_mask_with_its_object_at_mask_iou_half():
    from napari_mobilesamv2.training import match_masks

    images, pipeline = hand_made_filter_case()
    (_, first), (_, second) = images
    crops_1 = [crop for crop, _, _ in pipeline.per_image[0]]
    crops_2 = [crop for crop, _, _ in pipeline.per_image[1]]
    np.testing.assert_array_equal(match_masks(crops_1, first), [0, 1, 2, 3, -1, 0, -1])
    np.testing.assert_array_equal(match_masks(crops_2, second), [0, -1])  # IoU 0.5 counts, 0.375 does not
    assert match_masks([], second).dtype == np.int64
    with pytest.raises(InputError, match="2D integer"):
        match_masks(crops_2, second.astype(float))


def test_tune_mask_filters_picks_the_known_filters_and_the_loosest_of_ties():
    from napari_mobilesamv2.training import tune_mask_filters

    images, pipeline = hand_made_filter_case()
    choice = tune_mask_filters(pipeline, images, conf=0.3, iou=0.7, imgsz=128)
    # the stability filter must drop 0.55 and 0.6 (0.7 is the lowest grid value that does), the area
    # filter the 4 px speck: 10 and 20 px give the same F1, the looser 10 is chosen
    assert (choice.min_predicted_iou, choice.min_stability, choice.min_area) == (None, 0.7, 10)
    assert choice.before.as_dict() == {"precision": 5 / 9, "recall": 5 / 6, "f1": 10 / 15, "n_true": 6,
                                       "n_predicted": 9, "n_matched": 5}
    assert (choice.after.n_predicted, choice.after.n_matched, choice.after.f1) == (6, 5, pytest.approx(10 / 12))
    assert choice.after.f1 == max(f1 for *_, f1 in choice.grid) and len(choice.grid) == 12 * 10 * 10
    assert choice.n_images == 2 and choice.seconds_per_image >= 0 and (choice.conf, choice.iou) == (0.3, 0.7)
    assert pipeline.calls == [{"conf": 0.3, "iou": 0.7, "imgsz": 128}] * 2  # segmented once, without filters
    assert choice.settings() == {"min_predicted_iou": None, "min_stability": 0.7, "min_area": 10}
    assert choice.describe() == "min_predicted_iou off, min_stability 0.7, min_area 10"
    assert json.loads(json.dumps(choice.as_dict()))["after"]["n_predicted"] == 6


def test_tune_mask_filters_keeps_every_filter_off_unless_one_raises_f1():
    from napari_mobilesamv2.training import tune_mask_filters

    labels = np.zeros((20, 20), np.uint16)
    labels[2:10, 2:10] = 1
    rgb = np.zeros((20, 20, 3), np.uint8)
    only_true = FixedMasks([[(square(2, 2, 8), 0.5, 0.5)]])
    choice = tune_mask_filters(only_true, [(rgb, labels)])
    assert choice.settings() == {"min_predicted_iou": None, "min_stability": None, "min_area": None}
    assert choice.before.f1 == choice.after.f1 == 1.0
    # a false positive that either of two filters drops: the tie goes to leaving min_predicted_iou off
    both = FixedMasks([[(square(2, 2, 8), 0.9, 0.9), (square(12, 12, 8), 0.55, 0.55)]])
    choice = tune_mask_filters(both, [(rgb, labels)], predicted_ious=(0.6,), stabilities=(0.6,), areas=())
    assert choice.settings() == {"min_predicted_iou": None, "min_stability": 0.6, "min_area": None}
    assert len(choice.grid) == 2 * 2 * 1


def test_tune_mask_filters_refuses_images_without_objects_or_of_another_size():
    from napari_mobilesamv2.training import tune_mask_filters

    rgb = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(InputError, match="no objects"):
        tune_mask_filters(FixedMasks([[]]), [(rgb, np.zeros((20, 20), np.uint8))])
    with pytest.raises(InputError, match="no annotated images"):
        tune_mask_filters(FixedMasks([]), [])
    with pytest.raises(InputError, match="must match its image"):
        tune_mask_filters(FixedMasks([[]]), [(rgb, np.ones((10, 20), np.uint8))])


def test_mask_filter_grids_are_valid_settings():
    from napari_mobilesamv2.options import EverythingOptions
    from napari_mobilesamv2.training import AREA_GRID, PREDICTED_IOU_GRID, STABILITY_GRID

    for grid in (PREDICTED_IOU_GRID, STABILITY_GRID, AREA_GRID):
        assert grid[0] is None and list(grid[1:]) == sorted(set(grid[1:]))
    for a, b, c in zip(PREDICTED_IOU_GRID, STABILITY_GRID, AREA_GRID):
        EverythingOptions(min_predicted_iou=a, min_stability=b, min_area=c)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    import contextlib
    import io

    from napari_mobilesamv2.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_train_detector_command_tunes_and_stores_the_mask_filters(tmp_path, sam_decoder, monkeypatch):
    from napari_mobilesamv2 import MobileSAMv2

    from .conftest import write_weight_files

    monkeypatch.setenv("NAPARI_MOBILESAMV2_CACHE", str(tmp_path / "cache"))
    images, labels = write_pairs(tmp_path, range(5))
    encoder, decoder = write_weight_files(tmp_path, sam_decoder, seed=20)
    out = tmp_path / "tuned.pt"
    train = ["train-detector", "--images", str(images), "--labels", str(labels), "--detector-weights",
             str(DETECTOR_FIXTURE), "--trust-weights", "--epochs", "1", "--imgsz", "128", "--batch", "4",
             "--device", "cpu", "--no-download"]
    code, stdout, err = run_cli([*train, "--out", str(out), "--encoder", "tiny_vit", "--encoder-weights",
                                 str(encoder), "--decoder-weights", str(decoder)])
    assert code == 0, err
    stored = read_detector_state(out)
    filters = stored["card"]["metrics"]["mask_filters"]
    settings = {name: filters[name] for name in ("min_predicted_iou", "min_stability", "min_area")}
    assert {name: stored["inference"][name] for name in settings} == settings
    assert filters["n_images"] == 1 and filters["after"]["f1"] >= filters["before"]["f1"]
    assert filters["before"]["n_true"] == 4 and filters["seconds_per_image"] > 0
    line = next(line for line in stdout.splitlines() if line.startswith("chosen mask filters: "))
    assert f"held-out instance F1 {filters['after']['f1']:.3f}" in line
    described = ", ".join(f"{n} {'off' if v is None else f'{v:g}'}" for n, v in settings.items())
    assert described in line
    assert f"time per image, detecting and segmenting everything: {filters['seconds_per_image']:.3f} s on cpu" \
        in stdout
    flags = " ".join(f"--{n.replace('_', '-')} {v:g}" for n, v in settings.items() if v is not None)
    assert f"--iou {stored['inference']['iou']:g}{' ' + flags if flags else ''} --labels OUT.tif" in stdout
    # the pipeline reads the filters that are on back from the file
    model = MobileSAMv2.from_pretrained("tiny_vit", encoder_weights=encoder, decoder_weights=decoder,
                                        detector_weights=out, device="cpu", download=False)
    assert model.detector_settings == {"imgsz": 128, "conf": stored["inference"]["conf"],
                                       "iou": stored["inference"]["iou"],
                                       **{n: v for n, v in settings.items() if v is not None}}


def test_segment_everything_hint_names_the_stored_mask_filters(capsys):
    from types import SimpleNamespace

    from napari_mobilesamv2.cli import _hint_detector_settings
    from napari_mobilesamv2.options import EverythingOptions

    model = SimpleNamespace(detector_settings={"imgsz": 128, "conf": 0.3, "iou": 0.5, "min_stability": 0.9,
                                               "min_area": 50})
    _hint_detector_settings(model, EverythingOptions(imgsz=128, conf=0.3, iou=0.5, min_area=20), "d.pt")
    assert capsys.readouterr().err == (
        "hint: d.pt was tuned for --imgsz 128 --conf 0.3 --iou 0.5 --min-stability 0.9 --min-area 50; this run uses "
        "--imgsz 128 --conf 0.3 --iou 0.5 no --min-stability --min-area 20 (pass the flags to use its settings)\n")
    _hint_detector_settings(model, EverythingOptions(imgsz=128, conf=0.3, iou=0.5, min_stability=0.9, min_area=50),
                            "d.pt")
    assert capsys.readouterr().err == ""
