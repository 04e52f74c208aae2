"""Fixtures for the napari plugin tests (run under ``xvfb-run -a``).

Two pipelines are used:

* ``tiny_pipeline`` (tests/conftest.py): the real MobileSAMv2 code with tiny
  random-weight models. It proves the widgets drive the real core, but its masks
  are mostly empty, so it cannot check ids.
* :class:`standin.BlobPipeline`: MobileSAMv2's interface
  (:class:`~napari_mobilesamv2.SegmentationPipeline`) on classic image processing
  (objects are the bright connected regions). Deterministic, so tests can check
  ids, linking, policies and prompt handling exactly, in milliseconds.
"""

from __future__ import annotations

import cv2  # noqa: F401  (imported first on purpose: see _napari_qt_paths)
import pytest
from napari.utils.notifications import notification_manager
from standin import BlobPipeline, blobs

from napari_mobilesamv2.napari import set_pipeline_factory
from napari_mobilesamv2.napari._models import forget_opencv_qt_paths

PLUGIN = "napari-mobilesamv2"


@pytest.fixture(autouse=True)
def settings_dir(tmp_path, monkeypatch):
    """The docks remember weights choices in a settings file: here in a fresh folder, not the user's."""
    from napari_mobilesamv2.models import config

    folder = tmp_path / "settings"
    monkeypatch.setenv(config.CONFIG_ENV, str(folder))
    return folder


@pytest.fixture(autouse=True)
def _napari_qt_paths():
    """cv2 (imported by the detector) points Qt at its own plugins, which aborts napari's window."""
    forget_opencv_qt_paths()


def open_dock(viewer, name: str = "Segment everything"):
    """Open one of the plugin's dock widgets from its manifest; returns the widget."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


@pytest.fixture
def pipeline_factory():
    """``pipeline_factory(factory)`` makes the widgets build pipelines with `factory` until the test ends."""
    yield set_pipeline_factory
    set_pipeline_factory(None)


@pytest.fixture
def blob_pipeline(pipeline_factory):
    """A fresh :class:`BlobPipeline`, installed as the widgets' pipeline factory."""
    pipeline = BlobPipeline()
    pipeline_factory(lambda encoder, device, trust_weights: pipeline)
    return pipeline


@pytest.fixture
def tiny_factory(tiny_pipeline, pipeline_factory):
    """The tiny random-weight MobileSAMv2 installed as the widgets' pipeline factory."""
    pipeline_factory(lambda encoder, device, trust_weights: tiny_pipeline)
    return tiny_pipeline


@pytest.fixture
def docked(make_napari_viewer):
    """``docked(widget="Segment everything", image=blobs(), **image_kwargs)``: a viewer showing
    `image` and that dock widget of the plugin, as ``(viewer, widget)``."""

    def make(widget: str = "Segment everything", image=None, **image_kwargs):
        viewer = make_napari_viewer()
        viewer.add_image(blobs() if image is None else image, **image_kwargs)
        return viewer, open_dock(viewer, widget)

    return make


@pytest.fixture
def wait_done(qtbot):
    """``wait_done(widget)`` waits until the widget's worker finished and its result is applied."""

    def wait(widget, timeout=60_000):
        qtbot.waitUntil(lambda: not widget.is_running, timeout=timeout)

    return wait


@pytest.fixture
def run_to_end(wait_done):
    """``run_to_end(widget)`` runs the dock until its result is applied; returns the notifications shown."""

    def run(widget) -> list[str]:
        count = len(notification_manager.records)
        widget.run()
        wait_done(widget)
        return [str(n.message) for n in notification_manager.records[count:]]

    return run
