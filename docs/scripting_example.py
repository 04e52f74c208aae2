"""Script napari-mobilesamv2 on napari layers: no window and no event loop needed.

    python docs/scripting_example.py [--encoder tiny_vit] [--device cpu] [--save labels.tif] [--show]

Segments every nucleus of the plugin's 3D sample stack (one id per nucleus through
z), adds one object with a point, undoes a change, and decodes edited detector
boxes, all on the layers of a ``napari.Viewer``. The first run downloads the
weights into the cache (``napari-mobilesamv2 models download`` does it up front).
"""

from __future__ import annotations

import argparse

import napari

from napari_mobilesamv2.napari import (
    decode_box_layer,
    nuclei_3d,
    segment_anything,
    segment_everything,
    show_boxes,
)


def main(encoder: str = "efficientvit_l2", device: str = "auto", save: str | None = None, show: bool = False):
    """Run the example; returns the viewer and the labels layer."""
    viewer = napari.Viewer(show=show)
    data, metadata, _ = nuclei_3d()[0]  # (20, 128, 128) uint16 with a (2, 0.5, 0.5) um scale
    image = viewer.add_image(data, **metadata)
    model = {"encoder": encoder, "device": device}

    # 1. Every object of every plane, linked through z by mask IoU: one id per nucleus.
    labels = segment_everything(image, viewer, scope="stack", normalization="percentile", link_iou=0.5, **model)
    print(f"{len(labels.features)} objects in {labels.name!r}; the largest:")
    print(labels.features.nlargest(3, "area")[["index", "score", "predicted_iou", "area", "slice"]])

    # 2. Add an object with a point on plane 10; it only fills background, so no
    #    existing object changes. Points use the image's scale, so give it too.
    viewer.dims.set_current_step(0, 10)
    points = viewer.add_points(
        [[10, 64, 64]], features={"positive": [True]}, scale=image.scale, name="prompts"
    )
    segment_anything(image, viewer, points=points, output=labels, policy="fill_background", **model)

    # 3. Every write is one undo step on the labels layer (Ctrl+Z in the viewer).
    labels.undo()

    # 4. Editable box proposals: the detector's boxes as rectangles, drop the
    #    weakest, decode the rest (the plane's embedding is reused).
    boxes = show_boxes(image, viewer, conf=0.3, **model)
    if boxes.nshapes:
        boxes.selected_data = {boxes.nshapes - 1}
        boxes.remove_selected()
        decode_box_layer(image, boxes, viewer, output=labels, policy="fill_background", **model)

    if save:
        import tifffile

        tifffile.imwrite(save, labels.data, compression="zlib")
        print(f"labels saved to {save}")
    if show:
        napari.run()
    return viewer, labels


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="efficientvit_l2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--save", help="write the labels to this TIFF file")
    parser.add_argument("--show", action="store_true", help="open the viewer at the end")
    args = parser.parse_args()
    main(args.encoder, args.device, args.save, args.show)
