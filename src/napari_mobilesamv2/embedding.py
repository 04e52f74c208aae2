"""Image embedding: SAM preprocessing and the image encoder."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from .models.build import IMAGE_SIZE

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ImageEmbedding:
    """The encoder output for one image plus the sizes needed to map prompts and masks.

    Attributes
    ----------
    features : torch.Tensor
        (1, 256, 64, 64) image embedding.
    input_size : tuple of int
        (h, w) of the resized image inside the padded 1024x1024 input.
    original_size : tuple of int
        (H, W) of the image.
    """

    features: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]

    @property
    def device(self) -> torch.device:
        return self.features.device

    def to(self, device: torch.device | str) -> "ImageEmbedding":
        """The same embedding with its features on `device`."""
        return ImageEmbedding(self.features.to(device), self.input_size, self.original_size)


def preprocess(image_rgb: np.ndarray, device: torch.device | str = "cpu") -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize the longest side to 1024, normalise with SAM's mean/std and pad to 1024².

    Identical to ``SamPredictor.set_image`` (same resize, same arithmetic).

    Returns
    -------
    tensor : torch.Tensor
        (1, 3, 1024, 1024) float32.
    input_size : tuple of int
        (h, w) of the resized image before padding.
    """
    resized = ResizeLongestSide(IMAGE_SIZE).apply_image(image_rgb)
    x = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None, :, :, :]
    input_size = (int(x.shape[-2]), int(x.shape[-1]))
    mean = torch.tensor(PIXEL_MEAN, device=device).view(-1, 1, 1)
    std = torch.tensor(PIXEL_STD, device=device).view(-1, 1, 1)
    x = (x - mean) / std
    x = torch.nn.functional.pad(x, (0, IMAGE_SIZE - input_size[1], 0, IMAGE_SIZE - input_size[0]))
    return x, input_size


@torch.inference_mode()
def embed_image(encoder: torch.nn.Module, image_rgb: np.ndarray) -> ImageEmbedding:
    """Run the image encoder on an (H, W, 3) uint8 RGB image.

    The features are returned in one memory layout (C-contiguous) whatever the encoder
    produced: the decoder's arithmetic follows the layout, so an embedding read back from
    the on-disk cache gives exactly the masks of a freshly computed one.
    """
    device = next(encoder.parameters()).device
    x, input_size = preprocess(image_rgb, device)
    features = encoder(x).contiguous()
    return ImageEmbedding(features, input_size, (int(image_rgb.shape[0]), int(image_rgb.shape[1])))
