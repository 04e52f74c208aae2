"""The command line end to end, on real-format weights files with random weights."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import tifffile

from napari_mobilesamv2 import UntrustedWeightsWarning, cli
from napari_mobilesamv2.cli import main
from napari_mobilesamv2.export import decode_rle

from .conftest import DETECTOR_FIXTURE, synthetic_cells, write_weight_files


@pytest.fixture(scope="module")
def weights(tmp_path_factory, sam_decoder):
    encoder_path, decoder_path = write_weight_files(tmp_path_factory.mktemp("weights"), sam_decoder, seed=20)
    return ["--encoder", "tiny_vit", "--encoder-weights", str(encoder_path),
            "--decoder-weights", str(decoder_path), "--device", "cpu", "--no-download"]


@pytest.fixture()
def image_path(tmp_path):
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, synthetic_cells((160, 200), n=10, seed=0, dtype=np.uint16))
    return path


def test_segment_everything_writes_labels_and_matching_proposals(tmp_path, image_path, weights, monkeypatch):
    monkeypatch.setenv("NAPARI_MOBILESAMV2_CACHE", str(tmp_path / "cache"))
    labels_path, proposals_path = tmp_path / "labels.tif", tmp_path / "proposals.json"
    code = main(["segment-everything", str(image_path), *weights, "--detector-weights", str(DETECTOR_FIXTURE),
                 "--trust-weights", "--labels", str(labels_path), "--proposals", str(proposals_path)])
    assert code == 0
    labels = tifffile.imread(labels_path)
    proposals = json.loads(proposals_path.read_text())
    assert labels.shape == (160, 200) and labels.dtype == np.int32
    assert len(proposals) > 0 and labels.max() <= len(proposals)
    scores = [p["score"] for p in proposals]
    assert scores == sorted(scores, reverse=True)
    # Painting the decoded proposals by the documented rule reproduces the label image.
    masks = [decode_rle(p["segmentation"]) for p in proposals]
    repainted = np.zeros_like(labels)
    for k in np.argsort([-m.sum() for m in masks], kind="stable"):
        repainted[masks[k]] = proposals[k]["id"]
    np.testing.assert_array_equal(repainted, labels)


def test_segment_anything_cli(tmp_path, image_path, weights):
    labels_path = tmp_path / "clicked.tif"
    code = main(["segment-anything", str(image_path), *weights, "--points", "50,60", "--negative-points", "10,10",
                 "--boxes", "100,20,180,90", "--labels", str(labels_path)])
    assert code == 0
    assert set(np.unique(tifffile.imread(labels_path))) <= {0, 1, 2}


def test_untrusted_detector_is_refused_with_one_line(tmp_path, image_path, weights, capsys):
    code = main(["segment-everything", str(image_path), *weights, "--detector-weights", str(DETECTOR_FIXTURE),
                 "--labels", str(tmp_path / "l.tif")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "--trust-weights" in err and "Traceback" not in err
    assert not (tmp_path / "l.tif").exists()


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda p, t: ["segment-everything", str(t / "missing.tif"), "--labels", str(t / "o.tif")], "does not exist"),
        (lambda p, t: ["segment-everything", str(p), "--labels", str(p)], "is the input image"),
        (lambda p, t: ["segment-everything", str(p)], "nothing to write"),
        (lambda p, t: ["segment-everything", str(p), "--labels", str(t / "no" / "o.tif")], "does not exist"),
        (lambda p, t: ["segment-everything", str(t), "--labels", str(t / "o.tif")], "holds no images"),
        (lambda p, t: ["segment-anything", str(p), "--labels", str(t / "o.tif")], "at least one of --points"),
        (lambda p, t: ["segment-anything", str(p), "--points", "1,2,3", "--labels", str(t / "o.tif")],
         "expects 2 comma-separated numbers"),
    ],
)
def test_user_errors_exit_nonzero_with_a_reason(tmp_path, image_path, make_args, message, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = make_args(image_path, empty if "holds no images" in message else tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_corrupt_image_file(tmp_path, weights, capsys):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    assert main(["segment-everything", str(bad), *weights, "--strategy", "grid", "--labels", str(tmp_path / "o.tif")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_models_list_and_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_MOBILESAMV2_CACHE", str(tmp_path))
    assert main(["models", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path)
    (tmp_path / "Prompt_guided_Mask_Decoder.pt").write_bytes(b"x" * 2_000_000)
    assert main(["models", "list"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:5] == ["file", "used", "for", "size", "status"]
    by_name = {row.split()[0]: row for row in rows}
    assert len(by_name) == 7
    assert "2,565 MB" in by_name["sam_vit_h_4b8939.pth"] and "missing" in by_name["sam_vit_h_4b8939.pth"]
    assert "2 MB" in by_name["Prompt_guided_Mask_Decoder.pt"] and "in cache" in by_name["Prompt_guided_Mask_Decoder.pt"]
    assert "unknown" in by_name["ObjectAwareModel.pt"]


def test_models_verify_checks_the_default_set_without_downloading(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_MOBILESAMV2_CACHE", str(tmp_path))
    monkeypatch.setattr("napari_mobilesamv2.models.download.fetch", lambda *a, **k: pytest.fail("downloaded"))
    assert main(["models", "verify"]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["l2.pt", "Prompt_guided_Mask_Decoder.pt",
                                                          "ObjectAwareModel.pt"]
    assert all("missing (get it with 'napari-mobilesamv2 models download" in line for line in lines[:3])
    assert lines[3] == f"cache folder: {tmp_path}" and len(lines) == 4
    assert main(["models", "verify", "nope.pt"]) == 2
    assert "unknown weights file(s) nope.pt" in capsys.readouterr().err


def test_warnings_of_other_packages_are_shown_only_when_verbose(monkeypatch, capsys):
    def run(args):
        tifffile_source = "/env/lib/python3.11/site-packages/tifffile/tifffile.py"
        warnings.warn_explicit("a remark of tifffile", UserWarning, tifffile_source, 1)
        warnings.warn_explicit(UntrustedWeightsWarning("a warning of ours"), None, "/somewhere/script.py", 1)

    monkeypatch.setattr(cli, "run_models", run)
    assert main(["models", "list"]) == 0
    assert capsys.readouterr().err == "warning: a warning of ours\n"
    assert main(["--verbose", "models", "list"]) == 0
    assert capsys.readouterr().err == "warning (tifffile): a remark of tifffile\nwarning: a warning of ours\n"


def test_stack_is_segmented_plane_by_plane_with_linked_ids(tmp_path, weights, monkeypatch):
    monkeypatch.setenv("NAPARI_MOBILESAMV2_CACHE", str(tmp_path / "cache"))
    plane = synthetic_cells((96, 128), n=6, seed=0)
    stack_path = tmp_path / "stack.tif"
    tifffile.imwrite(stack_path, np.stack([plane, plane, plane[::-1]]))
    labels_path, proposals_path = tmp_path / "stack_labels.tif", tmp_path / "stack.json"
    code = main(["segment-everything", str(stack_path), *weights, "--detector-weights", str(DETECTOR_FIXTURE),
                 "--trust-weights", "--stack", "--labels", str(labels_path), "--proposals", str(proposals_path)])
    assert code == 0
    labels = tifffile.imread(labels_path)
    proposals = json.loads(proposals_path.read_text())
    assert labels.shape == (3, 96, 128) and labels.max() > 0
    # Identical neighbouring planes: every object keeps its id from plane 0 to plane 1.
    np.testing.assert_array_equal(labels[0], labels[1])
    assert {p["image_id"] for p in proposals} == {0, 1, 2}
    for record in proposals:
        if record["id"]:
            mask = decode_rle(record["segmentation"])
            assert (labels[record["image_id"]][mask] == record["id"]).any()
