"""Every dock of the plugin fits a 1366×768 screen, also after a run ends in a long message.

Run under ``xvfb-run -a -s "-screen 0 1366x768x24"`` to reproduce a small laptop screen;
the sizes are asserted against the screen size written here, whatever the display.
"""

import npe2
import numpy as np
import pytest
from conftest import PLUGIN
from napari.layers import Labels
from qtpy.QtWidgets import QApplication, QPushButton
from standin import blobs

from napari_mobilesamv2.models import download
from napari_mobilesamv2.napari._widgets import JobWidget

SCREEN = (1366, 768)
MIN_CANVAS_WIDTH = 400
RUN_PREFIXES = ("Segment", "Run")


def manifest_docks() -> list[str]:
    """Display names of every dock widget in the plugin's manifest (docks added later are covered too)."""
    manifest = npe2.PluginManager.instance().get_manifest(PLUGIN)
    return [widget.display_name for widget in manifest.contributions.widgets]


@pytest.fixture
def offline(weights_cache, monkeypatch):
    """No weights in the cache and no network: every download fails at once, as offline."""

    def unreachable(entry, url, target, progressbar):
        raise ConnectionError(f"{url}: cannot resolve the name (offline?)")

    monkeypatch.setattr(download, "_download", unreachable)
    return weights_cache


def settle(qtbot, ms: int = 200) -> None:
    QApplication.processEvents()
    qtbot.wait(ms)


def run_buttons(dock_widget) -> list[QPushButton]:
    return [b for b in dock_widget.findChildren(QPushButton) if b.text().startswith(RUN_PREFIXES)]


def assert_fits(viewer) -> None:
    window = viewer.window._qt_window
    canvas = viewer.window._qt_viewer.canvas.native
    frame = window.frameGeometry()
    assert canvas.width() >= MIN_CANVAS_WIDTH, (canvas.width(), frame.width())
    assert frame.width() <= SCREEN[0] and frame.height() <= SCREEN[1], (frame.width(), frame.height())


def test_every_dock_open_and_every_run_pressed_without_weights_fits_the_screen(make_napari_viewer, offline, qtbot):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(*SCREEN)
    # five planes and no channel axis: also the case that gave the longest messages
    viewer.add_image(np.stack([blobs()] * 5), name="a sample with a rather long layer name, as files often have")
    docks = {name: viewer.window.add_plugin_dock_widget(PLUGIN, name) for name in manifest_docks()}
    assert {"Segment everything", "Segment anything"} <= set(docks)
    settle(qtbot)
    assert_fits(viewer)
    pressed = []
    for name, (dock_widget, widget) in docks.items():
        for button in run_buttons(dock_widget):
            button.click()
            if isinstance(widget, JobWidget):
                qtbot.waitUntil(lambda w=widget: not w.is_running, timeout=60_000)
            settle(qtbot)
            pressed.append((name, button.text()))
            assert_fits(viewer)
    assert ("Segment everything", "Segment everything") in pressed and ("Segment anything", "Segment (Shift-S)") in pressed
    everything = docks["Segment everything"][1]
    assert everything.last_error.startswith("Model weights are missing and could not be downloaded")
    assert docks["Segment anything"][1].last_error.startswith("no prompts on this plane")
    assert not any(isinstance(layer, Labels) for layer in viewer.layers)
    # the long message stays readable: wrapped in the dock, in full in the notification and tooltip
    assert everything.status.tooltip == everything.last_error
    assert everything.status.native.height() > 3 * everything.status.native.fontMetrics().height()
    for _, widget in docks.values():  # each dock scrolled its message into view
        if isinstance(widget, JobWidget) and widget.last_error:
            assert not widget.status.native.visibleRegion().isEmpty(), widget.last_error


@pytest.mark.parametrize("size", [SCREEN, (1600, 1000)])
def test_both_docks_scroll_instead_of_growing_the_window(make_napari_viewer, qtbot, size):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*size)
    viewer.add_image(np.stack([blobs()] * 3))
    for name in ("Segment everything", "Segment anything"):
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
    settle(qtbot)
    everything = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment everything")[1]
    everything.show_advanced.value = True  # the tallest form
    everything.scope.value = "stack"
    settle(qtbot)
    frame = viewer.window._qt_window.frameGeometry()
    assert (frame.width(), frame.height()) == size or (frame.width() <= size[0] and frame.height() <= size[1])
    assert viewer.window._qt_viewer.canvas.native.width() >= MIN_CANVAS_WIDTH
