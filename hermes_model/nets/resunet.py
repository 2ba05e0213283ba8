"""ResUNet backbone (paper §4.1): pre-activation residual BasicBlocks, instance norm, four 2x
downsamplings, skip connections. Only nn.Modules here.

Shapes use ``(B, C, D, H, W)``; D, H, W need not be divisible by 16 (decoder stages upsample to
the skip's exact size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hermes_model.config import ModelConfig

__all__ = ["BasicBlock", "ResUNetEncoder", "ResUNetDecoder"]


def _norm_act_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    """Pre-activation unit: InstanceNorm → ReLU → 3³ conv (no bias: a norm follows)."""
    return nn.Sequential(
        nn.InstanceNorm3d(in_ch, eps=1e-4),
        nn.ReLU(inplace=False),
        nn.Conv3d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
    )


class BasicBlock(nn.Module):
    """Two pre-activation 3³ convolutions plus a residual (3³ projection if channels change)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = _norm_act_conv(in_ch, out_ch)
        self.conv2 = _norm_act_conv(out_ch, out_ch)
        self.shortcut: nn.Module = (
            nn.Identity() if in_ch == out_ch else _norm_act_conv(in_ch, out_ch)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + self.shortcut(x)


def _stage(in_ch: int, out_ch: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(
        BasicBlock(in_ch, out_ch), *[BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
    )


class ResUNetEncoder(nn.Module):
    """Stem at full resolution, then four (max-pool 2x, residual stage) steps.

    ``forward`` returns the five feature maps, full resolution first: channels
    ``config.channels(0..4)`` at scales 1x, 2x, 4x, 8x, 16x.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = [config.channels(s) for s in range(5)]
        self.stem = nn.Sequential(
            nn.Conv3d(config.in_channels, c[0], kernel_size=3, padding=1, bias=False),
            BasicBlock(c[0], c[0]),
        )
        self.stages = nn.ModuleList(
            nn.Sequential(nn.MaxPool3d(2), _stage(c[s], c[s + 1], config.num_blocks[s]))
            for s in range(4)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats


class UpStage(nn.Module):
    """Trilinear upsampling to the skip's size, concatenation, residual stage."""

    def __init__(self, in_ch: int, skip_ch: int, blocks: int, align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.blocks = _stage(in_ch + skip_ch, skip_ch, blocks)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # Half precision is upsampled in float32 (trilinear has no bf16 kernel on every
        # backend); float64 stays float64.
        wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
        up = F.interpolate(
            wide, size=skip.shape[2:], mode="trilinear", align_corners=self.align_corners
        )
        return self.blocks(torch.cat([skip, up.to(skip.dtype)], dim=1))


class ResUNetDecoder(nn.Module):
    """Four up stages from 16x back to 1x. ``ups[i]`` produces scale ``2**(3 - i)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = [config.channels(s) for s in range(5)]
        # The decoder mirrors the encoder; the last (full-resolution) stage has two blocks as in
        # the reference ResUNet.
        blocks = [config.num_blocks[2], config.num_blocks[1], config.num_blocks[0], 2]
        self.ups = nn.ModuleList(
            UpStage(c[4 - i], c[3 - i], blocks[i], config.align_corners) for i in range(4)
        )

    @staticmethod
    def scale(index: int) -> int:
        """Downsampling factor of the output of ``ups[index]`` (8, 4, 2, 1)."""
        return 2 ** (3 - index)
