"""Exact box-prompt decoding: SAM's mask decoder restructured for many boxes on one image.

Same weights, same operations as ``MaskDecoder.predict_masks`` (so bitwise the same
logits for the same batches), arranged so that work and memory traffic that do not
depend on the prompt happen once per image instead of once per box:

* the image tokens plus the "no mask" dense embedding, and their positional
  encoding, are formed once (the reference repeats them for every box);
* in the first two-way attention block the image tokens are still prompt-independent,
  so the token-to-image key/value projections and the image-to-token query projection
  (about a fifth of the decoder's FLOPs) are computed once;
* boxes run in small chunks so the per-box 64x64x256 activations stay in cache.

The default decoder, :mod:`~napari_mobilesamv2.decode.folded`, builds on this one.
"""

from __future__ import annotations

import math

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock

from ..embedding import ImageEmbedding

# Boxes per batch: on a CPU, 4 keeps a batch's 64x64x256 activations in cache (measured
# fastest among 1-16 on 2 cores); a GPU is best fed the official batch of 320.
CPU_CHUNK = 4
GPU_CHUNK = 320


def default_chunk(device: torch.device) -> int:
    """Boxes decoded together on `device`."""
    return CPU_CHUNK if device.type == "cpu" else GPU_CHUNK


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, heads, n, c = x.shape
    return x.transpose(1, 2).reshape(b, n, heads * c)


def _attend(attention: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Attention.forward`` after the projections, on head-split q, k, v (k, v may broadcast)."""
    scores = q @ k.permute(0, 1, 3, 2)
    scores = scores / math.sqrt(q.shape[-1])
    return attention.out_proj(_merge_heads(torch.softmax(scores, dim=-1) @ v))


class BoxDecoder:
    """Decode box prompts against one image embedding (no mask input, one mask per box).

    Parameters
    ----------
    prompt_encoder, mask_decoder
        segment-anything modules (any SAM/MobileSAMv2 weights).
    embedding : ImageEmbedding
        The image's embedding.
    """

    def __init__(self, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder, embedding: ImageEmbedding):
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        transformer = mask_decoder.transformer
        self.first: TwoWayAttentionBlock = transformer.layers[0]
        with torch.inference_mode():
            dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
            src = embedding.features + dense
            self.shape = tuple(src.shape)
            self.image_tokens = src.flatten(2).permute(0, 2, 1)
            self.image_pe = prompt_encoder.get_dense_pe().flatten(2).permute(0, 2, 1)
            tokens_with_pe = self.image_tokens + self.image_pe
            t2i, i2t = self.first.cross_attn_token_to_image, self.first.cross_attn_image_to_token
            self.first_t2i_k = _split_heads(t2i.k_proj(tokens_with_pe), t2i.num_heads)
            self.first_t2i_v = _split_heads(t2i.v_proj(self.image_tokens), t2i.num_heads)
            self.first_i2t_q = _split_heads(i2t.q_proj(tokens_with_pe), i2t.num_heads)

    @torch.inference_mode()
    def decode(self, boxes: torch.Tensor, chunk: int = CPU_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits (N, 1, 256, 256) and predicted IoU (N,) for model-frame boxes (N, 4)."""
        logits, ious = [], []
        for start in range(0, boxes.shape[0], max(1, int(chunk))):
            low_res, iou = self._decode_chunk(boxes[start:start + chunk])
            logits.append(low_res)
            ious.append(iou)
        if not logits:
            empty = self.image_tokens.new_zeros((0, 1, 256, 256))
            return empty, self.image_tokens.new_zeros(0)
        return torch.cat(logits), torch.cat(ious)

    def _prompt_tokens(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 7, 256) decoder tokens: IoU token, 4 mask tokens, the box's 2 corner embeddings."""
        decoder = self.mask_decoder
        sparse, _ = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        return torch.cat((output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)

    def _decode_chunk(self, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        decoder = self.mask_decoder
        tokens = self._prompt_tokens(boxes)
        queries, keys = self._first_block(tokens)
        transformer = decoder.transformer
        for layer in transformer.layers[1:]:
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=self.image_pe)
        attn_out = transformer.final_attn_token_to_image(q=queries + tokens, k=keys + self.image_pe, v=keys)
        queries = transformer.norm_final_attn(queries + attn_out)
        return self._masks(queries, keys)

    def _first_block(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``TwoWayAttentionBlock.forward`` (skip_first_layer_pe) with the image-side projections shared."""
        block = self.first
        queries = self._first_block_queries(tokens)
        i2t = block.cross_attn_image_to_token
        q_tokens = queries + tokens
        k = _split_heads(i2t.k_proj(q_tokens), i2t.num_heads)
        v = _split_heads(i2t.v_proj(queries), i2t.num_heads)
        keys = block.norm4(self.image_tokens + _attend(i2t, self.first_i2t_q, k, v))
        return queries, keys

    def _first_block_queries(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token side of the first block, up to its image-to-token attention."""
        block = self.first
        queries = block.norm1(block.self_attn(q=tokens, k=tokens, v=tokens))
        t2i = block.cross_attn_token_to_image
        q = _split_heads(t2i.q_proj(queries + tokens), t2i.num_heads)
        queries = block.norm2(queries + _attend(t2i, q, self.first_t2i_k, self.first_t2i_v))
        return block.norm3(queries + block.mlp(queries))

    def _masks(self, queries: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``predict_masks``' upscaling and hypernetwork heads, returning the single-mask output."""
        decoder = self.mask_decoder
        b, c, h, w = keys.shape[0], *self.shape[1:]
        upscaled = decoder.output_upscaling(keys.transpose(1, 2).view(b, c, h, w))
        mask_tokens = queries[:, 1:1 + decoder.num_mask_tokens, :]
        hyper_in = torch.stack(
            [mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        iou = decoder.iou_prediction_head(queries[:, 0, :])
        return masks[:, :1], iou[:, 0]
