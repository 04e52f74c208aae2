"""Keep OpenCV's Qt settings away from napari's Qt (no Qt import here)."""

from __future__ import annotations

import os


def forget_opencv_qt_paths() -> None:
    """Undo opencv-python's Qt environment variables.

    ``import cv2`` (ultralytics, the detector) points ``QT_QPA_PLATFORM_PLUGIN_PATH``
    at OpenCV's own Qt plugins, which makes a napari window created afterwards abort
    ("Cannot move to target thread"). napari's Qt must use its own plugins.
    """
    for name in ("QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR"):
        value = os.environ.get(name, "")
        if os.sep + "cv2" + os.sep in value:
            del os.environ[name]
