"""Make the screenshots of docs/napari.md from a real napari window.

Run under a display (or ``xvfb-run -a -s "-screen 0 1366x768x24" python docs/make_screenshots.py``). With the
MobileSAMv2 weights in the cache (``napari-mobilesamv2 models download``) the real
models are used; without them the classical stand-in of the GUI tests
(``tests/napari/standin.py``, here on an Otsu threshold + watershed) is used and
the screenshots show the widgets and layers, not MobileSAMv2's quality. Pass
``--stand-in`` to force it. Run it from a checkout of the repository.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import napari
import numpy as np
from PIL import Image as PILImage
from qtpy.QtWidgets import QApplication

from napari_mobilesamv2 import MobileSAMv2, MobileSAMv2Error
from napari_mobilesamv2.napari import nuclei_2d, nuclei_3d, set_pipeline_factory

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "napari"))
from standin import BlobPipeline  # noqa: E402  the stand-in of the GUI tests

IMAGES = Path(__file__).parent / "images"
WINDOW = (1366, 768)  # a small laptop screen: the docks must fit it


def nuclei(grey: np.ndarray) -> np.ndarray:
    """Nuclei for the stand-in: Otsu threshold, then a watershed splits touching ones."""
    from scipy import ndimage
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    smooth = gaussian(grey, 2)
    foreground = smooth > threshold_otsu(smooth)
    distance = ndimage.distance_transform_edt(foreground)
    peaks, _ = ndimage.label(distance > 0.6 * ndimage.maximum_filter(distance, 15))
    return watershed(-distance, peaks, mask=foreground)


def choose_pipeline(stand_in: bool) -> str:
    """Install the real pipeline if its weights are cached, else the stand-in; say which."""
    if not stand_in:
        try:
            model = MobileSAMv2.from_pretrained(download=False)
        except MobileSAMv2Error as error:
            print(f"real weights unavailable ({error}); using the stand-in")
        else:
            set_pipeline_factory(lambda encoder, device, trust_weights: model)
            return "MobileSAMv2"
    pipeline = BlobPipeline(find_regions=nuclei)
    set_pipeline_factory(lambda encoder, device, trust_weights: pipeline)
    return "stand-in"


def wait(widget, timeout=300):
    start = time.time()
    while widget.is_running and time.time() - start < timeout:
        QApplication.processEvents()
        time.sleep(0.02)
    if widget.last_error:
        raise RuntimeError(widget.last_error)


def save(viewer, name: str) -> Path:
    """Screenshot the whole window into docs/images/<name>.png, palette-compressed."""
    from napari.utils.notifications import notification_manager

    print("notifications:", [str(n.message) for n in notification_manager.records])
    _close_notification_toasts(viewer)
    _settle()
    viewer.reset_view()
    _settle()
    pixels = viewer.screenshot(canvas_only=False, flash=False)
    path = IMAGES / f"{name}.png"
    PILImage.fromarray(pixels[..., :3]).quantize(colors=192).save(path, optimize=True)
    print(f"{path}: {pixels.shape[1]}x{pixels.shape[0]}, {path.stat().st_size // 1024} KB")
    return path


def _settle():
    """Let Qt lay out and paint the window (the canvas size changes with the dock)."""
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.03)


def _close_notification_toasts(viewer):
    """Close napari's toasts (here: its PyQt5 deprecation notice) so they do not cover the canvas."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()


def new_viewer():
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(*WINDOW)
    return viewer


def everything_on_a_stack():
    viewer = new_viewer()
    data, meta, _ = nuclei_3d()[0]
    viewer.add_image(data, **meta)
    _, widget = viewer.window.add_plugin_dock_widget("napari-mobilesamv2", "Segment everything")
    widget.scope.value = "stack"
    widget.run()
    wait(widget)
    viewer.dims.set_current_step(0, 9)
    save(viewer, "segment_everything_stack")
    viewer.close()


def editable_boxes():
    viewer = new_viewer()
    data, meta, _ = nuclei_2d()[0]
    viewer.add_image(data, **meta)
    _, widget = viewer.window.add_plugin_dock_widget("napari-mobilesamv2", "Segment everything")
    widget.show_boxes()
    wait(widget)
    boxes = widget.boxes.value
    boxes.selected_data = {0, 1}
    viewer.layers.selection.active = boxes
    boxes.mode = "select"
    save(viewer, "editable_boxes")
    viewer.close()


def anything_with_prompts():
    viewer = new_viewer()
    data, meta, _ = nuclei_2d()[0]
    viewer.add_image(data, **meta)
    _, widget = viewer.window.add_plugin_dock_widget("napari-mobilesamv2", "Segment anything")
    widget.clear_prompts.value = False  # keep the prompts visible in the picture
    widget.add_prompt_layers()
    points, shapes = widget.points.value, widget.shapes.value
    centres = _bright_spots(data, 3)
    points.add(centres[:2])
    widget.negative.value = True
    points.add(centres[2:3])
    widget.negative.value = False
    (y, x) = _bright_spots(data, 4)[3]
    shapes.add_rectangles(np.array([[y - 16, x - 16], [y + 16, x + 16]], float))
    widget.run()
    wait(widget)
    viewer.layers.selection.active = points
    save(viewer, "segment_anything")
    viewer.close()


def _bright_spots(image, n):
    """Centres of the n brightest well-separated spots (for placing example prompts)."""
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian

    return peak_local_max(gaussian(image.astype(float), 4), min_distance=20, num_peaks=n).astype(float)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stand-in", action="store_true", help="use the classical stand-in even if weights exist")
    args = parser.parse_args()
    IMAGES.mkdir(exist_ok=True)
    print("segmenter:", choose_pipeline(args.stand_in))
    everything_on_a_stack()
    editable_boxes()
    anything_with_prompts()


if __name__ == "__main__":
    main()
