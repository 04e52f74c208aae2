"""The plugin as a user meets it: napari is running first, then the widgets are opened.

The other tests import torch before any window exists. Here a fresh process opens
a napari window (its OpenGL context may load Mesa's libLLVM) and only then loads the
plugin, torch, torchvision and the detector, as the Plugins menu does.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

FIXTURE = Path(__file__).parents[1] / "fixtures" / "object_aware_tiny.pt"

SCRIPT = textwrap.dedent(
    f"""
    import numpy as np
    import napari

    viewer = napari.Viewer(show=False)
    image = viewer.add_image(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    _, everything = viewer.window.add_plugin_dock_widget("napari-mobilesamv2", "Segment everything")
    viewer.window.add_plugin_dock_widget("napari-mobilesamv2", "Segment anything")

    import torch
    from napari_mobilesamv2 import MobileSAMv2
    from napari_mobilesamv2.models import build_mask_decoder, build_prompt_encoder
    from napari_mobilesamv2.models.detector import load_object_aware_model
    from napari_mobilesamv2.napari import segment_everything

    encoder = torch.nn.Conv2d(3, 256, kernel_size=16, stride=16)
    detector = load_object_aware_model({str(FIXTURE)!r})
    pipeline = MobileSAMv2(encoder, build_prompt_encoder(), build_mask_decoder(), detector)
    labels = segment_everything(image, viewer, pipeline=pipeline, conf=0.01, max_prompts=2)
    print("OK", labels.data.shape)
    """
)


def test_widgets_open_and_run_after_the_viewer_exists():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OK (64, 64)" in done.stdout


def test_scripting_api_does_not_load_the_widgets():
    """``napari_mobilesamv2.napari`` imports its Qt widgets only when they are asked for."""
    script = textwrap.dedent(
        """
        import sys
        from napari_mobilesamv2.napari import segment_everything, set_pipeline_factory
        assert "napari_mobilesamv2.napari._widgets" not in sys.modules
        assert "qtpy" not in sys.modules
        from napari_mobilesamv2.napari import SegmentEverythingWidget
        assert "napari_mobilesamv2.napari._widgets" in sys.modules
        print("OK")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "OK"
