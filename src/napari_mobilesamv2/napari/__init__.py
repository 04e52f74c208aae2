"""napari side of napari-mobilesamv2: dock widgets, sample data and a scripting API.

Scripting (no GUI event loop needed)::

    import napari
    from napari_mobilesamv2.napari import segment_everything, segment_anything

    viewer = napari.Viewer(show=False)
    image = viewer.add_image(stack)
    labels = segment_everything(image, viewer, scope="stack", encoder="efficientvit_l2")
"""

from ._layers import ImageSettings
from ._models import EMBEDDINGS, forget_opencv_qt_paths, get_pipeline, set_pipeline_factory
from ._sample_data import coins, nuclei_2d, nuclei_3d, nuclei_timelapse
from ._widgets import SegmentAnythingWidget, SegmentEverythingWidget
from .api import (
    EverythingOptions,
    ModelSettings,
    decode_box_layer,
    prepare_anything,
    prepare_decode_box_layer,
    prepare_everything,
    prepare_show_boxes,
    segment_anything,
    segment_everything,
    show_boxes,
)

forget_opencv_qt_paths()

__all__ = [
    "EMBEDDINGS", "EverythingOptions", "ImageSettings", "ModelSettings", "SegmentAnythingWidget",
    "SegmentEverythingWidget", "coins", "decode_box_layer", "forget_opencv_qt_paths", "get_pipeline",
    "nuclei_2d", "nuclei_3d", "nuclei_timelapse", "prepare_anything", "prepare_decode_box_layer",
    "prepare_everything", "prepare_show_boxes", "segment_anything", "segment_everything",
    "set_pipeline_factory", "show_boxes",
]
