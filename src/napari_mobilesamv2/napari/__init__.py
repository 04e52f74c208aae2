"""napari side of napari-mobilesamv2: dock widgets, sample data and a scripting API.

Scripting (no GUI event loop needed)::

    import napari
    from napari_mobilesamv2.napari import segment_everything, segment_anything

    viewer = napari.Viewer(show=False)
    image = viewer.add_image(stack)
    labels = segment_everything(image, viewer, scope="stack", encoder="efficientvit_l2")

Names are imported on first use, so the scripting functions do not load the Qt
widgets; napari's plugin manifest loads the widgets module itself.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._llvm_guard import block_triton_if_llvm_loaded
from ._qt_env import forget_opencv_qt_paths

block_triton_if_llvm_loaded()  # before anything here imports torch
forget_opencv_qt_paths()

#: public name -> submodule that defines it
_EXPORTS = {
    "EMBEDDINGS": "._models",
    "get_pipeline": "._models",
    "set_pipeline_factory": "._models",
    "coins": "._sample_data",
    "nuclei_2d": "._sample_data",
    "nuclei_3d": "._sample_data",
    "nuclei_timelapse": "._sample_data",
    "SegmentAnythingWidget": "._widgets",
    "SegmentEverythingWidget": "._widgets",
    **{
        name: ".api"
        for name in (
            "decode_box_layer", "pipeline_for", "prepare_anything", "prepare_decode_box_layer",
            "prepare_everything", "prepare_show_boxes", "segment_anything", "segment_everything", "show_boxes",
            "tracks_layer",
        )
    },
}

__all__ = sorted([*_EXPORTS, "forget_opencv_qt_paths"])


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
