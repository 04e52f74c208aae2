"""The core runs without a GUI: it imports neither napari nor Qt, checked in fresh processes."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

GUI_MODULES = ("napari", "qtpy", "PyQt5", "PySide2", "PySide6", "vispy", "magicgui")
FIXTURE = Path(__file__).parent / "fixtures" / "object_aware_tiny.pt"

REPORT_GUI_MODULES = f"""
import json, sys
print(json.dumps(sorted(m for m in {GUI_MODULES!r} if m in sys.modules)))
"""


def gui_modules_after(code: str) -> list[str]:
    """GUI packages in ``sys.modules`` after running `code` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code) + REPORT_GUI_MODULES],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_package_imports_no_gui():
    code = """
    import napari_mobilesamv2
    from napari_mobilesamv2 import MobileSAMv2
    import napari_mobilesamv2.cli
    """
    assert gui_modules_after(code) == []


def test_segmenting_with_the_detector_imports_no_gui():
    """ultralytics and OpenCV are loaded and run here; they must not pull in Qt either."""
    code = f"""
    import numpy as np
    import torch
    from napari_mobilesamv2 import MobileSAMv2
    from napari_mobilesamv2.models import build_mask_decoder, build_prompt_encoder
    from napari_mobilesamv2.models.detector import load_object_aware_model

    detector = load_object_aware_model({str(FIXTURE)!r})
    encoder = torch.nn.Conv2d(3, 256, kernel_size=16, stride=16)
    model = MobileSAMv2(encoder, build_prompt_encoder(), build_mask_decoder(), detector, device="cpu")
    image = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    assert model.segment_everything(image, conf=0.01, max_prompts=2).labels.shape == (64, 64)
    """
    assert gui_modules_after(code) == []

