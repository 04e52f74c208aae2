"""Weights choices remembered between sessions (models/config.py)."""

import json

import pytest

from napari_mobilesamv2.models import config


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv(config.CONFIG_ENV, str(tmp_path / "settings"))
    return tmp_path / "settings" / config.CONFIG_FILE


def test_nothing_remembered_gives_the_registry_files(settings):
    assert config.load_config() == {}
    assert config.weights_files("efficientvit_l2") == {"encoder": None, "decoder": None, "detector": None}
    assert config.remembered_detectors() == []


def test_weights_are_remembered_per_encoder(settings, tmp_path):
    encoder, detector = tmp_path / "l2_copy.pt", tmp_path / "det.pt"
    encoder.write_bytes(b"e")
    detector.write_bytes(b"d")
    config.remember_weights("efficientvit_l2", {"encoder": encoder, "decoder": None, "detector": detector})
    assert config.weights_files("efficientvit_l2") == {"encoder": encoder, "decoder": None, "detector": detector}
    assert config.weights_files("tiny_vit") == {"encoder": None, "decoder": None, "detector": detector}
    assert json.loads(settings.read_text())["weights"] == {
        "encoder": {"efficientvit_l2": str(encoder)}, "detector": str(detector),
    }
    encoder.unlink()  # a file that went away is not offered again
    assert config.weights_files("efficientvit_l2")["encoder"] is None
    with pytest.raises(KeyError, match="unknown weights slot 'mask'"):
        config.remember_weights("efficientvit_l2", {"mask": encoder})


def test_remember_detector_keeps_the_newest_first_without_duplicates(settings, tmp_path):
    paths = [tmp_path / f"d{i}.pt" for i in range(3)]
    for path in paths:
        path.write_bytes(b"d")
        config.remember_detector(path)
    config.remember_detector(paths[0])
    assert config.remembered_detectors() == [paths[0], paths[2], paths[1]]
    for i in range(config.MAX_DETECTORS + 5):
        extra = tmp_path / f"x{i}.pt"
        extra.write_bytes(b"x")
        config.remember_detector(extra)
    assert len(json.loads(settings.read_text())["detectors"]) == config.MAX_DETECTORS


def test_an_unreadable_settings_file_means_nothing_remembered(settings):
    settings.parent.mkdir(parents=True)
    settings.write_text("{not json")
    assert config.load_config() == {}
    config.update_config(encoder="tiny_vit")  # replaced whole, atomically
    assert config.load_config() == {"encoder": "tiny_vit"}
    assert [p.name for p in settings.parent.iterdir()] == [config.CONFIG_FILE]


def test_an_unwritable_settings_folder_is_not_an_error(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(config.CONFIG_ENV, str(blocker / "settings"))
    config.update_config(encoder="tiny_vit")
    assert config.load_config() == {}
    assert "could not remember the weights choice" in caplog.text
