"""A picklable recipe of the small random-weight pipeline, for dask worker processes."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class TinyRecipe:
    """Builds the `tiny_pipeline` of conftest.py in any process (seeded: the same weights everywhere).

    `delay` seconds are added to every embedding, so that a task lasts long enough to be
    interrupted; the results do not change.
    """

    delay: float = 0.0
    torch_threads: int | None = None

    def build(self):
        import torch

        from napari_mobilesamv2 import MobileSAMv2
        from napari_mobilesamv2.models import build_mask_decoder, build_prompt_encoder
        from napari_mobilesamv2.models.detector import load_object_aware_model

        from .conftest import DETECTOR_FIXTURE, TinyImageEncoder, seeded

        if self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)
        model = MobileSAMv2(seeded(TinyImageEncoder, 3), seeded(build_prompt_encoder, 1),
                            seeded(build_mask_decoder, 2), load_object_aware_model(DETECTOR_FIXTURE), device="cpu",
                            encoder_name="tiny-test")
        if self.delay:
            embed = model.embed

            def slow_embed(image_rgb):
                time.sleep(self.delay)
                return embed(image_rgb)

            model.embed = slow_embed
        return model
