"""The model section: which files are present, downloads with progress, files you have, remembered choices."""

import numpy as np
from conftest import open_dock
from standin import blobs

from napari_mobilesamv2.models import config, download
from napari_mobilesamv2.napari import _model_section
from napari_mobilesamv2.napari._models import weights_files


def test_files_you_have_reach_the_pipeline_and_are_remembered(
    make_napari_viewer, blob_pipeline, pipeline_factory, weights_cache, tmp_path, run_to_end
):
    own = {slot: tmp_path / f"my_{slot}.pt" for slot in ("encoder", "decoder", "detector")}
    for path in own.values():
        path.write_bytes(b"weights")
    asked = []

    def factory(encoder, device, trust_weights, **files):
        asked.append(files)
        return blob_pipeline

    pipeline_factory(factory)
    viewer = make_napari_viewer()
    viewer.add_image(blobs())
    dock = open_dock(viewer)
    model = dock.model
    assert model.files_text.startswith("encoder: l2.pt missing; decoder: Prompt_guided_Mask_Decoder.pt missing")
    assert model.download_button.enabled
    model.show_files.value = True
    model.encoder_file.value = str(own["encoder"])
    model.decoder_file.value = str(own["decoder"])
    model.detector_file.value = str(own["detector"])
    assert model.files_text == "encoder: my_encoder.pt (yours); decoder: my_decoder.pt (yours); " \
                                       "detector: my_detector.pt (yours)"
    assert not model.download_button.enabled
    run_to_end(dock)
    assert dock.last_error is None, dock.last_error
    assert asked == [{"encoder_weights": str(own["encoder"]), "decoder_weights": str(own["decoder"]),
                      "detector_weights": str(own["detector"])}]
    # remembered for the next session, with the detector among the fine-tuned ones
    assert config.weights_files("efficientvit_l2") == {slot: path.resolve() for slot, path in own.items()}
    assert config.remembered_detectors() == [own["detector"].resolve()]
    viewer.close()
    again = open_dock(make_napari_viewer())
    assert again.model.encoder_file.value == own["encoder"].resolve()
    assert (own["detector"].resolve(), ) == tuple(c for c in again.model.fine_tuned.choices if c is not None)
    # another encoder has its own encoder file (none picked yet); decoder and detector are shared
    again.model.encoder.value = "tiny_vit"
    assert str(again.model.encoder_file.line_edit.value) == ""
    assert weights_files("tiny_vit") == (None, str(own["decoder"].resolve()), str(own["detector"].resolve()))


def test_a_missing_file_is_reported_not_used(docked, tmp_path):
    _, dock = docked()
    dock.model.detector_file.value = str(tmp_path / "gone.pt")
    assert dock.model.files_text.endswith(f"detector file {tmp_path / 'gone.pt'} does not exist")
    assert weights_files("efficientvit_l2")[2] is None


def test_fine_tuned_detectors_are_listed_and_picked(docked, tmp_path):
    trained = tmp_path / "run1" / "detector.pt"
    trained.parent.mkdir()
    trained.write_bytes(b"fine-tuned")
    config.remember_detector(trained)
    _, dock = docked()
    model = dock.model
    assert [label for label, _ in model._detector_choices()] == ["published file (cache)", "run1/detector.pt"]
    model.fine_tuned.value = trained.resolve()
    assert model.detector_file.value == trained.resolve()
    assert "detector: detector.pt (yours)" in model.files_text


def test_download_shows_progress_in_the_dock(docked, weights_cache, monkeypatch, wait_done):
    fetched = []

    def fake_fetch(name, progressbar=None):
        progressbar.total = 4_000_000
        for _ in range(4):
            progressbar.update(1_000_000)
        path = download.cached_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
        fetched.append(name)
        return path

    monkeypatch.setattr(download, "fetch", fake_fetch)
    monkeypatch.setattr(_model_section.download, "fetch", fake_fetch)
    _, dock = docked()
    seen = []
    real = dock._set_status
    dock._set_status = lambda text: seen.append(text) or real(text)
    dock.model.download_missing()
    wait_done(dock)
    assert dock.last_error is None, dock.last_error
    assert fetched == ["l2.pt", "Prompt_guided_Mask_Decoder.pt", "ObjectAwareModel.pt"]
    assert any(text.startswith("downloading: l2.pt (1 of 3)") for text in seen), seen
    assert "downloading: ObjectAwareModel.pt (3 of 3) downloaded" in seen
    assert dock.last_summary.startswith("done: download l2.pt, Prompt_guided_Mask_Decoder.pt, ObjectAwareModel.pt")
    assert dock.model.files_text == (
        "encoder: l2.pt ✓; decoder: Prompt_guided_Mask_Decoder.pt ✓; detector: ObjectAwareModel.pt ✓"
    )
    assert not dock.model.download_button.enabled


def test_a_failed_download_is_reported(docked, weights_cache, monkeypatch, wait_done):
    def offline(name, progressbar=None):
        raise download.WeightsUnavailableError(download.missing_message([name], ["example.org: cannot connect"]))

    monkeypatch.setattr(_model_section.download, "fetch", offline)
    viewer, dock = docked()
    dock.model.download_missing()
    wait_done(dock)
    assert dock.last_error.startswith("Model weights are missing and could not be downloaded:\n  l2.pt: download")
    assert len(viewer.layers) == 1 and dock.model.download_button.enabled


def test_the_remembered_encoder_and_device_come_back(make_napari_viewer):
    first = open_dock(make_napari_viewer())
    first.model.encoder.value = "tiny_vit"
    first.model.device.value = "cpu"
    second = open_dock(make_napari_viewer())
    assert second.model.settings() == {"encoder": "tiny_vit", "device": "cpu", "trust_weights": False}
    assert np.all([second.model.encoder.value == "tiny_vit"])
