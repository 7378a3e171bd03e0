"""A convolutional stem for timm ViTs (Xiao et al., "Early Convolutions Help Transformers See Better",
NeurIPS 2021): stride-2 3x3 convolutions in place of the patchify convolution. It makes ViTs train far
better on small data; the transformer blocks, the CLS token and the FFN layers stay as they are."""

from __future__ import annotations

import math

import torch
from torch import nn


class ConvStem(nn.Module):
    """Drop-in for timm's ``PatchEmbed``: (B, C, H, W) -> (B, N, D) tokens on a grid of ``img_size / patch_size``.

    ``patch_size`` must be a power of two: log2(patch_size) conv-BN-ReLU layers of stride 2, then a
    1x1 projection to ``embed_dim``.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int | tuple[int, int] = 16,
                 in_chans: int = 3, embed_dim: int = 768, bias: bool = True, **_: object) -> None:
        super().__init__()
        img_size = img_size if isinstance(img_size, int) else img_size[0]
        patch_size = patch_size if isinstance(patch_size, int) else patch_size[0]
        steps = int(math.log2(patch_size))
        if 2 ** steps != patch_size or img_size % patch_size:
            raise ValueError(f"conv stem needs a power-of-two patch_size dividing image_size, got {patch_size}")
        layers, channels = [], in_chans
        for i in range(steps):
            out = max(16, embed_dim // 2 ** (steps - i))
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            channels = out
        layers.append(nn.Conv2d(channels, embed_dim, 1, bias=bias))
        self.proj = nn.Sequential(*layers)
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        return self.patch_size[0] if as_scalar else self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)
