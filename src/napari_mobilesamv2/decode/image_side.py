"""The prompt-independent half of SAM's mask decoder, computed once per image.

Both box decoders, :class:`~napari_mobilesamv2.decode.exact.ExactBoxDecoder` and
:class:`~napari_mobilesamv2.decode.folded.FoldedBoxDecoder`, hold a
:class:`PreparedImage`. It forms, once per image instead of once per box as
``MaskDecoder.predict_masks`` does:

* the image tokens (the embedding plus the "no mask" dense embedding) and their
  positional encoding;
* the image-side projections of the first two-way attention block, whose image
  tokens do not depend on the prompt yet: the token-to-image keys and values and the
  image-to-token queries (about a fifth of the decoder's FLOPs).

It also builds the 7 prompt tokens of a box and runs the first block's token side,
which both decoders compute the same way. The head helpers split and merge the
attention heads as ``segment_anything.modeling.transformer.Attention`` does.
"""

from __future__ import annotations

import math

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock

from ..embedding import ImageEmbedding


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads * d) -> (B, heads, N, d)."""
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    b, heads, n, c = x.shape
    return x.transpose(1, 2).reshape(b, n, heads * c)


def attend(attention: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Attention.forward`` after the projections, on head-split q, k, v (k, v may broadcast)."""
    scores = q @ k.permute(0, 1, 3, 2)
    scores = scores / math.sqrt(q.shape[-1])
    return attention.out_proj(merge_heads(torch.softmax(scores, dim=-1) @ v))


class PreparedImage:
    """One image's prompt-independent decoder inputs, shared by every box on it.

    Parameters
    ----------
    prompt_encoder, mask_decoder
        segment-anything modules (any SAM/MobileSAMv2 weights).
    embedding : ImageEmbedding
        The image's embedding.

    Attributes
    ----------
    shape : tuple of int
        (1, 256, 64, 64), the shape of the image tokens as a feature map.
    image_tokens : torch.Tensor
        (1, 4096, 256) embedding plus the "no mask" dense embedding (a view, not contiguous).
    image_pe : torch.Tensor
        (1, 4096, 256) positional encoding of the image tokens (a view, not contiguous).
    first_block : TwoWayAttentionBlock
        The decoder's first attention block.
    first_t2i_k, first_t2i_v : torch.Tensor
        (1, heads, 4096, d) keys and values of the first block's token-to-image attention.
    first_i2t_q : torch.Tensor
        (1, heads, 4096, d) queries of the first block's image-to-token attention.
    """

    def __init__(self, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder, embedding: ImageEmbedding):
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.first_block: TwoWayAttentionBlock = mask_decoder.transformer.layers[0]
        with torch.inference_mode():
            dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
            src = embedding.features + dense
            self.shape = tuple(src.shape)
            self.image_tokens = src.flatten(2).permute(0, 2, 1)
            self.image_pe = prompt_encoder.get_dense_pe().flatten(2).permute(0, 2, 1)
            tokens_with_pe = self.image_tokens + self.image_pe
            t2i, i2t = self.first_block.cross_attn_token_to_image, self.first_block.cross_attn_image_to_token
            self.first_t2i_k = split_heads(t2i.k_proj(tokens_with_pe), t2i.num_heads)
            self.first_t2i_v = split_heads(t2i.v_proj(self.image_tokens), t2i.num_heads)
            self.first_i2t_q = split_heads(i2t.q_proj(tokens_with_pe), i2t.num_heads)

    def prompt_tokens(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 7, 256) decoder tokens: IoU token, 4 mask tokens, the box's 2 corner embeddings."""
        decoder = self.mask_decoder
        sparse, _ = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        return torch.cat((output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)

    def first_block_queries(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token side of the first block (skip_first_layer_pe), up to its image-to-token attention."""
        block = self.first_block
        queries = block.norm1(block.self_attn(q=tokens, k=tokens, v=tokens))
        t2i = block.cross_attn_token_to_image
        q = split_heads(t2i.q_proj(queries + tokens), t2i.num_heads)
        queries = block.norm2(queries + attend(t2i, q, self.first_t2i_k, self.first_t2i_v))
        return block.norm3(queries + block.mlp(queries))
