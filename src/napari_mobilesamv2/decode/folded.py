"""The default box decoder: the attention projections folded into the 7 prompt tokens.

:class:`FoldedBoxDecoder` is what :func:`~napari_mobilesamv2.decode.prompted.decode_boxes`
uses unless ``exact=True``. It computes the same function as segment-anything's mask
decoder with about half the arithmetic per box, in another floating-point order (see
below); :class:`~napari_mobilesamv2.decode.exact.ExactBoxDecoder` is the slower,
bitwise-exact one. Both start from the same
:class:`~napari_mobilesamv2.decode.image_side.PreparedImage`.

Each box prompt has only 7 tokens (IoU token, 4 mask tokens, 2 box corners), and
every attention between them and the 4096 image tokens has 8 heads, so it passes
through at most 8 x 7 = 56 directions. Moving the linear projections to the token
side turns the per-box 4096 x 256 x 128 projection matrices into 4096 x 256 x 56
products:

* token-to-image: the scores ``q_h · (W_k,h x + b_k,h)`` are ``(q_h W_k,h) · x``
  plus a per-row constant that softmax ignores; because every softmax row sums
  to 1, ``softmax · (x W_v,hᵀ + b_v,h)`` is ``(softmax · x) W_v,hᵀ + b_v,h``;
* image-to-token: the scores are ``x · (W_q,hᵀ k_h)`` plus ``b_q,h · k_h``, and
  the output projection of each head's value mix is the mix of the 56 projected
  token values, whose 8 softmax groups each sum to 1, so ``b_out / 8`` per row
  adds ``b_out`` exactly once;
* the first upscaling transposed convolution (kernel 2, stride 2) is one matrix
  product per pixel, as is the second, and only mask token 0 (the single-mask
  output) is computed. On a CPU the upscaling runs in row tiles that stay in cache.

This is the same function as ``MaskDecoder.predict_masks`` with the same weights;
only the order of floating-point operations differs. Logits move by ~4e-7 on
random weights (tests compare with segment-anything's ``predict_torch``), the
same size as the changes PyTorch's own kernels make for another batch size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock

from ..embedding import ImageEmbedding
from .batching import CPU_CHUNK, decode_in_chunks
from .image_side import PreparedImage, split_heads

# Image tokens (of 64x64) handled together in the row-wise steps on a CPU: 512 keep a
# tile's activations (0.5-1 MB each) in a core's L2 cache; the mask upscaling ran 2x
# faster than on whole masks.
CPU_TILE_ROWS = 512


def _per_head(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """A projection's (heads * d, c) weight as (heads, d, c)."""
    return weight.view(heads, weight.shape[0] // heads, weight.shape[1])


def _scaled_key_heads(attention: Attention, tokens: torch.Tensor) -> torch.Tensor:
    """Image-to-token keys from the tokens, per head, with the 1/sqrt(d) score scale applied."""
    keys = split_heads(attention.k_proj(tokens), attention.num_heads)
    return keys / math.sqrt(keys.shape[-1])


class FoldedBoxDecoder:
    """Decode box prompts against one image embedding (no mask input, one mask per box).

    Same interface as :class:`~napari_mobilesamv2.decode.exact.ExactBoxDecoder`, about
    half the arithmetic per box; see the module docstring for the algebra.

    Parameters
    ----------
    prompt_encoder, mask_decoder, embedding
        As for :class:`~napari_mobilesamv2.decode.image_side.PreparedImage`, which the decoder holds.
    tile_rows : int, optional
        Image tokens (of 4096) processed together in the row-wise steps. Default:
        512 on a CPU (cache-sized), all of them elsewhere.
    """

    def __init__(
        self, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder, embedding: ImageEmbedding,
        tile_rows: int | None = None,
    ):
        self.mask_decoder = mask_decoder
        self.image = PreparedImage(prompt_encoder, mask_decoder, embedding)
        with torch.inference_mode():
            self.image_tokens = self.image.image_tokens.contiguous()
            self.image_pe = self.image.image_pe.contiguous()
            first_conv, norm, _, second_conv, _ = mask_decoder.output_upscaling
            self.upscale_norm = norm
            self.first_conv_weight, self.first_conv_bias = self._conv_as_linear(first_conv)
            self.second_conv_weight, self.second_conv_bias = self._conv_as_linear(second_conv)
        tokens = self.image_tokens.shape[1]
        if tile_rows is None:
            tile_rows = CPU_TILE_ROWS if embedding.device.type == "cpu" else tokens
        self.tile_rows = min(max(1, int(tile_rows)), tokens)
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.inference_mode()
    def decode(self, boxes: torch.Tensor, chunk: int = CPU_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits (N, 1, 256, 256) and predicted IoU (N,) for model-frame boxes (N, 4)."""
        return decode_in_chunks(self._decode_chunk, boxes, chunk, self.image_tokens)

    @staticmethod
    def _conv_as_linear(conv: torch.nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernel-2 stride-2 transposed convolution as a linear map to (2, 2, out) sub-pixels."""
        c_in, c_out, kh, kw = conv.weight.shape
        weight = conv.weight.permute(2, 3, 1, 0).reshape(kh * kw * c_out, c_in).contiguous()
        return weight, conv.bias.repeat(kh * kw)

    def _workspace(self, boxes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two (boxes, 4096, 256) buffers kept between chunks: image tokens, and tokens plus encoding.

        Fresh 4 MB tensors per box and layer cost page faults that took as long as the
        arithmetic on a CPU, so the image-token states live in buffers updated tile by tile.
        """
        if self._buffers is None or self._buffers[0].shape[0] < boxes:
            self._buffers = (self.image_tokens.new_empty((boxes, *self.image_tokens.shape[1:])),
                             self.image_tokens.new_empty((boxes, *self.image_tokens.shape[1:])))
        return self._buffers[0][:boxes], self._buffers[1][:boxes]

    def _decode_chunk(self, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        decoder = self.mask_decoder
        transformer = decoder.transformer
        image = self.image
        tokens = image.prompt_tokens(boxes)
        keys, keys_with_pe = self._workspace(tokens.shape[0])

        queries = image.first_block_queries(tokens)
        i2t = image.first_block.cross_attn_image_to_token
        keys_by_head = _scaled_key_heads(i2t, queries + tokens)
        scores = keys_by_head @ image.first_i2t_q.transpose(2, 3)  # (B, heads, 7, 4096)
        residual = self.image_tokens.expand_as(keys)
        self._image_to_token_update(image.first_block, scores, queries, residual, keys, keys_with_pe)

        for block in transformer.layers[1:]:
            queries = self._block(block, queries, keys, keys_with_pe, tokens)
        attn_out = self._token_to_image(transformer.final_attn_token_to_image, queries + tokens, keys, keys_with_pe)
        queries = transformer.norm_final_attn(queries + attn_out)

        hyper = decoder.output_hypernetworks_mlps[0](queries[:, 1, :])
        iou = decoder.iou_prediction_head(queries[:, 0, :])
        return self._mask_logits(keys, hyper), iou[:, 0]

    def _block(
        self, block: TwoWayAttentionBlock, queries: torch.Tensor, keys: torch.Tensor, keys_with_pe: torch.Tensor,
        tokens: torch.Tensor,
    ) -> torch.Tensor:
        """``TwoWayAttentionBlock.forward`` with positional encodings, folded; updates `keys` in place."""
        q = queries + tokens
        queries = block.norm1(queries + block.self_attn(q=q, k=q, v=queries))
        attn_out = self._token_to_image(block.cross_attn_token_to_image, queries + tokens, keys, keys_with_pe)
        queries = block.norm2(queries + attn_out)
        queries = block.norm3(queries + block.mlp(queries))

        i2t = block.cross_attn_image_to_token
        heads = i2t.num_heads
        keys_by_head = _scaled_key_heads(i2t, queries + tokens)
        query_weight = _per_head(i2t.q_proj.weight, heads)
        directions = torch.einsum("bhtd,hdc->bhtc", keys_by_head, query_weight).flatten(1, 2)
        offsets = torch.einsum("bhtd,hd->bht", keys_by_head, i2t.q_proj.bias.view(heads, -1)).flatten(1, 2)
        scores = torch.baddbmm(offsets.unsqueeze(-1), directions, keys_with_pe.transpose(1, 2))
        self._image_to_token_update(block, scores, queries, keys, keys, keys_with_pe)
        return queries

    @staticmethod
    def _token_to_image(
        attention: Attention, q_in: torch.Tensor, keys: torch.Tensor, keys_with_pe: torch.Tensor
    ) -> torch.Tensor:
        """``attention(q=q_in, k=keys_with_pe, v=keys)`` for 7 query tokens, projections on the token side."""
        heads = attention.num_heads
        b, t, _ = q_in.shape
        q = split_heads(attention.q_proj(q_in), heads)
        q = q / math.sqrt(q.shape[-1])
        directions = torch.einsum("bhtd,hdc->bhtc", q, _per_head(attention.k_proj.weight, heads))
        scores = directions.flatten(1, 2) @ keys_with_pe.transpose(1, 2)  # k_proj's bias: constant per row
        mixed = (torch.softmax(scores, dim=-1) @ keys).view(b, heads, t, -1)
        values = torch.einsum("bhtc,hdc->bthd", mixed, _per_head(attention.v_proj.weight, heads))
        return attention.out_proj(values.reshape(b, t, -1) + attention.v_proj.bias)

    def _image_to_token_update(
        self, block: TwoWayAttentionBlock, scores: torch.Tensor, queries: torch.Tensor, residual: torch.Tensor,
        keys: torch.Tensor, keys_with_pe: torch.Tensor,
    ) -> None:
        """``keys = norm4(residual + cross_attn_image_to_token(...))`` from (B, heads * 7, 4096) scaled scores.

        Writes `keys` and `keys_with_pe` tile by tile (`residual` may be `keys` itself).
        """
        attention = block.cross_attn_image_to_token
        heads = attention.num_heads
        b, n = keys.shape[:2]
        weights = torch.softmax(scores.view(b, heads, -1, n), dim=2).flatten(1, 2).transpose(1, 2)  # (B, 4096, heads * 7)
        values = split_heads(attention.v_proj(queries), heads)  # (B, heads, 7, d)
        out_weight = attention.out_proj.weight.view(-1, heads, values.shape[-1])
        projected = torch.einsum("bhtd,ohd->bhto", values, out_weight).flatten(1, 2)
        projected = projected + attention.out_proj.bias / heads  # each head's weights sum to 1
        for rows in self._row_tiles(n):
            updated = torch.baddbmm(residual[:, rows], weights[:, rows], projected)
            keys[:, rows] = block.norm4(updated)
            torch.add(keys[:, rows], self.image_pe[:, rows], out=keys_with_pe[:, rows])

    def _row_tiles(self, n: int) -> list[slice]:
        return [slice(start, min(n, start + self.tile_rows)) for start in range(0, n, self.tile_rows)]

    def _mask_logits(self, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """(B, 1, 256, 256) logits: upscale keys (B, 4096, 256) and project on the hypernetwork output (B, 32)."""
        b, n, c = keys.shape
        side = self.image.shape[-1]
        rows = keys.reshape(b * n, c)
        tile = self.tile_rows if n % self.tile_rows == 0 and self.tile_rows < n else b * n  # one box or all
        norm = self.upscale_norm
        logits = keys.new_empty(b * n * 16)
        first = keys.new_empty((tile, self.first_conv_weight.shape[0]))
        second = keys.new_empty((tile * 4, self.second_conv_weight.shape[0]))
        for start in range(0, b * n, tile):
            torch.addmm(self.first_conv_bias, rows[start:start + tile], self.first_conv_weight.t(), out=first)
            pixels = first.view(-1, norm.weight.shape[0])
            pixels = torch.ops.aten.gelu_(F.layer_norm(pixels, pixels.shape[-1:], norm.weight, norm.bias, norm.eps))
            torch.ops.aten.gelu_(torch.addmm(self.second_conv_bias, pixels, self.second_conv_weight.t(), out=second))
            box_hyper = hyper[start // n:(start + tile - 1) // n + 1].unsqueeze(-1)  # the tile's boxes
            torch.bmm(second.view(len(box_hyper), -1, hyper.shape[-1]), box_hyper,
                      out=logits[start * 16:(start + tile) * 16].view(len(box_hyper), -1, 1))
        # rows were (y, x, first sub-pixel dy, dx, second dy, dx); the mask row is 4y + 2dy1 + dy2
        logits = logits.view(b, side, side, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)
        return logits.reshape(b, 1, side * 4, side * 4)
