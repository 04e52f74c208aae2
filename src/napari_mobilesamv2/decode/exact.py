"""The bitwise-exact box decoder: SAM's mask decoder restructured for many boxes on one image.

:class:`ExactBoxDecoder` runs the same operations as ``MaskDecoder.predict_masks``
in the same floating-point order, so its logits are bitwise equal to
segment-anything's ``SamPredictor.predict_torch`` run with the same batches of boxes.
Use it when results must match the reference exactly (``exact=True`` in
:func:`~napari_mobilesamv2.decode.prompted.decode_boxes`); it is slower than the
default decoder, :class:`~napari_mobilesamv2.decode.folded.FoldedBoxDecoder`.

It is faster than the reference because work that does not depend on the prompt
happens once per image (see :class:`~napari_mobilesamv2.decode.image_side.PreparedImage`:
image tokens, positional encoding, the first block's image-side projections), and
boxes run in small batches so the per-box 64x64x256 activations stay in cache.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder

from ..embedding import ImageEmbedding
from .batching import CPU_CHUNK, decode_in_chunks
from .image_side import PreparedImage, attend, split_heads


class ExactBoxDecoder:
    """Decode box prompts against one image embedding (no mask input, one mask per box).

    Logits are bitwise equal to segment-anything's for the same batches of boxes.

    Parameters
    ----------
    prompt_encoder, mask_decoder, embedding
        As for :class:`~napari_mobilesamv2.decode.image_side.PreparedImage`, which the decoder holds.
    """

    def __init__(self, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder, embedding: ImageEmbedding):
        self.mask_decoder = mask_decoder
        self.image = PreparedImage(prompt_encoder, mask_decoder, embedding)

    @torch.inference_mode()
    def decode(self, boxes: torch.Tensor, chunk: int = CPU_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits (N, 1, 256, 256) and predicted IoU (N,) for model-frame boxes (N, 4)."""
        return decode_in_chunks(self._decode_chunk, boxes, chunk, self.image.image_tokens)

    def _decode_chunk(self, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.image
        tokens = image.prompt_tokens(boxes)
        queries, keys = self._first_block(tokens)
        transformer = self.mask_decoder.transformer
        for layer in transformer.layers[1:]:
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=image.image_pe)
        attn_out = transformer.final_attn_token_to_image(q=queries + tokens, k=keys + image.image_pe, v=keys)
        queries = transformer.norm_final_attn(queries + attn_out)
        return self._masks(queries, keys)

    def _first_block(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``TwoWayAttentionBlock.forward`` (skip_first_layer_pe) with the image-side projections shared."""
        image = self.image
        queries = image.first_block_queries(tokens)
        block = image.first_block
        i2t = block.cross_attn_image_to_token
        q_tokens = queries + tokens
        k = split_heads(i2t.k_proj(q_tokens), i2t.num_heads)
        v = split_heads(i2t.v_proj(queries), i2t.num_heads)
        keys = block.norm4(image.image_tokens + attend(i2t, image.first_i2t_q, k, v))
        return queries, keys

    def _masks(self, queries: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``predict_masks``' upscaling and hypernetwork heads, returning the single-mask output."""
        decoder = self.mask_decoder
        b, c, h, w = keys.shape[0], *self.image.shape[1:]
        upscaled = decoder.output_upscaling(keys.transpose(1, 2).view(b, c, h, w))
        mask_tokens = queries[:, 1:1 + decoder.num_mask_tokens, :]
        hyper_in = torch.stack(
            [mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        iou = decoder.iou_prediction_head(queries[:, 0, :])
        return masks[:, :1], iou[:, 0]
