"""docs/make_screenshots.py makes its three screenshots with the GUI tests' stand-in."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
from napari.layers import Labels, Points, Shapes
from PIL import Image as PILImage

SCRIPT = Path(__file__).parents[2] / "docs" / "make_screenshots.py"


def load_script():
    spec = importlib.util.spec_from_file_location("make_screenshots", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_screenshot_script_runs_on_the_stand_in(make_napari_viewer, pipeline_factory, monkeypatch, tmp_path):
    import standin

    script = load_script()
    assert script.BlobPipeline is standin.BlobPipeline  # the tests' stand-in, not a copy
    monkeypatch.setattr(script, "IMAGES", tmp_path)
    monkeypatch.setattr(script, "new_viewer", lambda: make_napari_viewer(show=True))
    shown = {}
    real_save = script.save

    def save(viewer, name):
        shown[name] = {layer.name: count(layer) for layer in viewer.layers}
        return real_save(viewer, name)

    monkeypatch.setattr(script, "save", save)
    monkeypatch.setattr(sys, "argv", ["make_screenshots.py", "--stand-in"])
    script.main()
    assert shown == {
        "segment_everything_stack": {"nuclei 3D": None, "nuclei 3D objects": 24},
        "editable_boxes": {"nuclei": None, "nuclei boxes": 24},
        # two positive points and a box make three objects; the third point is negative
        "segment_anything": {"nuclei": None, "nuclei objects": 3, "nuclei prompt boxes": 1, "nuclei prompts": 3},
    }
    for name in shown:
        with PILImage.open(tmp_path / f"{name}.png") as picture:
            colours = picture.convert("RGB").getcolors(maxcolors=1024)
        assert colours is not None and len(colours) > 20, name  # a rendered window, not a blank frame


def count(layer) -> int | None:
    """Objects of a labels layer, shapes of a shapes layer, points of a points layer."""
    if isinstance(layer, Labels):
        return len(np.unique(layer.data)) - 1
    if isinstance(layer, (Points, Shapes)):
        return len(layer.data)
    return None
