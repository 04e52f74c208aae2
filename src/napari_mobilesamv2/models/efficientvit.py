"""EfficientViT-SAM L2 image encoder, as used by MobileSAMv2.

A compact port of the EfficientViT-L2 backbone, the SAM neck and the final
channel-wise layer norm. Module attribute names follow the official
implementation so that the official ``l2.pt`` weights (keys prefixed with
``image_encoder.``, prefix stripped) load with ``strict=True``.

Architecture summary (MobileSAMv2 variant):

* all activations are tanh-approximated GELU, all norms use ``eps=1e-6``;
* stage 0: stride-2 3x3 conv stem + 1 residual double-3x3 block (32 ch);
* stages 1-2: fused MBConv blocks (expand 16 for the stride-2 block, 4 after);
* stage 3: MBConv blocks (expand 16 / 4), bias instead of norm except at the end;
* stage 4: stride-2 MBConv (expand 24) + 8 EfficientViT blocks (LiteMLA
  linear attention with 5x5 multi-scale aggregation, then MBConv expand 6);
* neck: 1x1 conv + BN of stages 4/3/2 each resized bicubically to 64x64,
  summed, 12 residual fused-MBConv blocks, 1x1 conv with bias to 256 ch;
* the encoder resizes its 1024x1024 input bilinearly to 512x512 first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EFFICIENTVIT_L2_NUM_TENSORS",
    "EfficientViTLargeBackbone",
    "EfficientViTSamImageEncoder",
    "LayerNorm2d",
    "LiteMLA",
    "SamNeck",
    "build_efficientvit_l2_encoder",
]

#: Number of entries in the L2 encoder ``state_dict`` (BN buffers included).
EFFICIENTVIT_L2_NUM_TENSORS = 508

#: Epsilon of every BatchNorm / LayerNorm in the encoder.
NORM_EPS = 1e-6

_L2_WIDTHS = (32, 64, 128, 256, 512)
_L2_DEPTHS = (1, 2, 2, 8, 8)


class ConvNormAct(nn.Module):
    """``same``-padded conv, optional BatchNorm, optional GELU (tanh).

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    kernel_size : int
        Odd square kernel size.
    stride : int
        Convolution stride.
    groups : int
        Convolution groups.
    bias : bool
        Whether the convolution has a bias.
    norm : bool
        Whether a ``BatchNorm2d`` follows the convolution.
    act : bool
        Whether a GELU follows (after the norm, if any).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm: bool = True,
        act: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=bias,
        )
        self.norm = nn.BatchNorm2d(out_channels, eps=NORM_EPS) if norm else None
        self.act = nn.GELU(approximate="tanh") if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class OpSequential(nn.Module):
    """Apply ``op_list`` in order (kept as a named list for checkpoint keys)."""

    def __init__(self, ops: Sequence[nn.Module]) -> None:
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


class Residual(nn.Module):
    """``main(x) + x`` when ``shortcut`` else just ``main(x)``."""

    def __init__(self, main: nn.Module, shortcut: bool = True) -> None:
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.main(x)
        return out + x if self.shortcut else out


class ResBlock(nn.Module):
    """Two 3x3 conv+BN layers, GELU in between (stride 1, no expansion)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(channels, channels, 3, act=True)
        self.conv2 = ConvNormAct(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class FusedMBConv(nn.Module):
    """Fused inverted residual: 3x3 conv+BN+GELU expand, 1x1 conv+BN project."""

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: float, stride: int = 1) -> None:
        super().__init__()
        mid = round(in_channels * expand_ratio)
        self.spatial_conv = ConvNormAct(in_channels, mid, 3, stride=stride, act=True)
        self.point_conv = ConvNormAct(mid, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.spatial_conv(x))


class MBConv(nn.Module):
    """Inverted residual with biased (norm-free) expand/depthwise convs.

    1x1 conv+bias+GELU, 3x3 depthwise conv+bias+GELU, 1x1 conv+BN.
    """

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: float, stride: int = 1) -> None:
        super().__init__()
        mid = round(in_channels * expand_ratio)
        self.inverted_conv = ConvNormAct(in_channels, mid, 1, bias=True, norm=False, act=True)
        self.depth_conv = ConvNormAct(mid, mid, 3, stride=stride, groups=mid, bias=True, norm=False, act=True)
        self.point_conv = ConvNormAct(mid, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class LiteMLA(nn.Module):
    """Lightweight multi-scale ReLU linear attention.

    Parameters
    ----------
    channels : int
        Input and output channels.
    dim : int
        Per-head dimension; ``channels // dim`` heads.
    scales : tuple of int
        Kernel sizes of the depthwise token-aggregation branches.
    eps : float
        Added to the attention normaliser.
    """

    def __init__(self, channels: int, dim: int = 32, scales: tuple[int, ...] = (5,), eps: float = 1e-15) -> None:
        super().__init__()
        heads = channels // dim
        qkv_ch = 3 * heads * dim
        self.dim = dim
        self.eps = eps
        self.qkv = ConvNormAct(channels, qkv_ch, 1, norm=False)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(qkv_ch, qkv_ch, k, padding=k // 2, groups=qkv_ch, bias=False),
                nn.Conv2d(qkv_ch, qkv_ch, 1, groups=3 * heads, bias=False),
            )
            for k in scales
        )
        self.proj = ConvNormAct(heads * dim * (1 + len(scales)), channels, 1)

    def _linear_attention(self, qkv: torch.Tensor) -> torch.Tensor:
        b, _, h, w = qkv.shape
        in_dtype = qkv.dtype
        with torch.autocast(device_type=qkv.device.type, enabled=False):
            if in_dtype in (torch.float16, torch.bfloat16):
                qkv = qkv.float()
            # (B, groups, 3*dim, N) -> (B, groups, N, 3*dim)
            qkv = qkv.reshape(b, -1, 3 * self.dim, h * w).transpose(-1, -2)
            q, k, v = qkv.split(self.dim, dim=-1)
            q, k = F.relu(q), F.relu(k)
            v = F.pad(v, (0, 1), value=1.0)  # extra ones column yields the normaliser
            out = q @ (k.transpose(-1, -2) @ v)
            out = out[..., :-1] / (out[..., -1:] + self.eps)
            out = out.transpose(-1, -2).reshape(b, -1, h, w)
        return out.to(in_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        qkv = torch.cat([qkv] + [op(qkv) for op in self.aggreg], dim=1)
        return self.proj(self._linear_attention(qkv))


class EfficientViTBlock(nn.Module):
    """Residual LiteMLA (context) followed by residual MBConv (local)."""

    def __init__(self, channels: int, dim: int = 32, expand_ratio: float = 6) -> None:
        super().__init__()
        self.context_module = Residual(LiteMLA(channels, dim=dim))
        self.local_module = Residual(MBConv(channels, channels, expand_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


class EfficientViTLargeBackbone(nn.Module):
    """EfficientViT-L backbone (L2 configuration by default).

    Parameters
    ----------
    widths : sequence of int
        Output channels of stages 0-4.
    depths : sequence of int
        Block counts of stages 0-4 (stages 1-3 get one extra stride-2 block).
    in_channels : int
        Input image channels.
    qkv_dim : int
        Per-head dimension of the attention in stage 4.
    """

    def __init__(
        self,
        widths: Sequence[int] = _L2_WIDTHS,
        depths: Sequence[int] = _L2_DEPTHS,
        in_channels: int = 3,
        qkv_dim: int = 32,
    ) -> None:
        super().__init__()
        stem = [ConvNormAct(in_channels, widths[0], 3, stride=2, act=True)]
        stem += [Residual(ResBlock(widths[0])) for _ in range(depths[0])]
        stages = [OpSequential(stem)]
        cin = widths[0]
        for sid in (1, 2, 3):
            block_cls = FusedMBConv if sid <= 2 else MBConv
            blocks = []
            for i in range(depths[sid] + 1):
                first = i == 0
                blocks.append(
                    Residual(block_cls(cin, widths[sid], 16 if first else 4, stride=2 if first else 1), not first)
                )
                cin = widths[sid]
            stages.append(OpSequential(blocks))
        last = [Residual(MBConv(cin, widths[4], 24, stride=2), shortcut=False)]
        last += [EfficientViTBlock(widths[4], dim=qkv_dim, expand_ratio=6) for _ in range(depths[4])]
        stages.append(OpSequential(last))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the feature map of every stage as ``{"stage0": ..., "stage4": ...}``."""
        feats = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            feats[f"stage{i}"] = x
        return feats


class _Resize(nn.Module):
    """Bicubic resize (``align_corners=False``) to a fixed spatial size."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(x, size=self.size, mode="bicubic", align_corners=False)


class SamNeck(nn.Module):
    """Fuse multi-stage backbone features into a SAM image embedding.

    Parameters
    ----------
    feature_ids : sequence of str
        Backbone stages consumed, in order.
    in_channels : sequence of int
        Channels of those stages.
    head_width : int
        Width of the fused feature and of the middle blocks.
    head_depth : int
        Number of residual fused-MBConv blocks.
    expand_ratio : float
        Expansion ratio of the middle blocks.
    out_dim : int
        Output channels.
    size : tuple of int
        Spatial size every input is resized to.
    """

    def __init__(
        self,
        feature_ids: Sequence[str] = ("stage4", "stage3", "stage2"),
        in_channels: Sequence[int] = (512, 256, 128),
        head_width: int = 256,
        head_depth: int = 12,
        expand_ratio: float = 1,
        out_dim: int = 256,
        size: tuple[int, int] = (64, 64),
    ) -> None:
        super().__init__()
        self.input_keys = tuple(feature_ids)
        self.input_ops = nn.ModuleList(
            OpSequential([ConvNormAct(c, head_width, 1), _Resize(size)]) for c in in_channels
        )
        self.middle = OpSequential(
            [Residual(FusedMBConv(head_width, head_width, expand_ratio)) for _ in range(head_depth)]
        )
        self.output_ops = nn.ModuleList([OpSequential([ConvNormAct(head_width, out_dim, 1, bias=True, norm=False)])])

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """Map backbone stage features to a ``(B, out_dim, *size)`` embedding."""
        inputs = [op(feats[k]) for k, op in zip(self.input_keys, self.input_ops)]
        fused = inputs[-1]
        for t in reversed(inputs[:-1]):  # a + (b + c), the official summation order
            fused = t + fused
        return self.output_ops[0](self.middle(fused))


class LayerNorm2d(nn.Module):
    """Layer norm over the channel dimension of an NCHW tensor."""

    def __init__(self, channels: int, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=1, keepdim=True)
        x = x / torch.sqrt(x.square().mean(dim=1, keepdim=True) + self.eps)
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class EfficientViTSamImageEncoder(nn.Module):
    """Backbone + SAM neck + LayerNorm2d, taking the padded 1024x1024 SAM input.

    Parameters
    ----------
    backbone : EfficientViTLargeBackbone
        Feature extractor.
    neck : SamNeck
        Feature fusion head.
    embed_dim : int
        Channels of the output embedding.
    """

    #: Side of the (padded, normalised) square input expected by SAM.
    img_size = 1024
    #: Side the input is resized to before the backbone.
    backbone_size = 512

    def __init__(self, backbone: nn.Module, neck: nn.Module, embed_dim: int = 256) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.norm = LayerNorm2d(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, 3, 1024, 1024)`` images into ``(B, 256, 64, 64)`` embeddings."""
        size = (self.backbone_size, self.backbone_size)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.norm(self.neck(self.backbone(x)))


def build_efficientvit_l2_encoder() -> nn.Module:
    """Build the randomly initialised EfficientViT-SAM L2 image encoder.

    Returns
    -------
    torch.nn.Module
        The encoder in eval mode. Its ``state_dict`` has
        :data:`EFFICIENTVIT_L2_NUM_TENSORS` entries whose keys match the
        official checkpoint's ``image_encoder.*`` keys with the prefix removed.
    """
    encoder = EfficientViTSamImageEncoder(EfficientViTLargeBackbone(), SamNeck())
    return encoder.eval()
