"""Attention blocks: CBAM (Woo et al. 2018, used by DNFFM §3.1) and the hybrid attention MA of seed 003 §3.2.

Shapes: feature maps are (B, C, H, W); channel maps (B, C, 1, 1); spatial maps (B, 1, H, W).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _mlp(channels: int, reduction: int) -> nn.Sequential:
    """Two fully connected layers C -> C/r -> C, as 1x1 convolutions on (B, C, 1, 1)."""
    hidden = max(channels // reduction, 1)
    return nn.Sequential(
        nn.Conv2d(channels, hidden, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, channels, 1),
    )


class ChannelGate(nn.Module):
    """CBAM channel attention: avg- and max-pooled descriptors through one shared MLP, summed, sigmoid."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.mlp = _mlp(channels, reduction)

    def forward(self, x: Tensor) -> Tensor:
        avg, mx = x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
        # One MLP call on both descriptors stacked along the batch: the same weights, half the launches.
        both = self.mlp(torch.cat([avg, mx]))
        return torch.sigmoid(both[: x.shape[0]] + both[x.shape[0] :])


class SpatialGate(nn.Module):
    """CBAM spatial attention: [max, mean] over channels -> 7x7 conv -> BN -> sigmoid."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return torch.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    """Channel gate then spatial gate, applied in sequence (Woo et al. 2018, §3)."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.channel(x)
        return x * self.spatial(x)


class ASPP(nn.Module):
    """Atrous spatial pyramid of seed 003 §3.2.1, Eq. (9): a 1x1 branch and one dilated 3x3 branch per rate,
    each conv -> BN -> ReLU with `out_channels` outputs, concatenated along channels.

    The paper names "three 3x3 atrous convolution layers with dilation rates of 4 and 8": three layers, two
    rates. Our default (2, 4, 8) keeps three layers and both named rates; `dilations` makes it a config value.
    """

    def __init__(self, in_channels: int = 2, out_channels: int = 1, dilations: tuple[int, ...] = (2, 4, 8)) -> None:
        super().__init__()

        def branch(kernel: int, dilation: int) -> nn.Sequential:
            pad = dilation * (kernel // 2)
            return nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel, padding=pad, dilation=dilation, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            )

        self.branches = nn.ModuleList([branch(1, 1)] + [branch(3, d) for d in dilations])
        self.out_channels = out_channels * len(self.branches)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


class MASpatial(nn.Module):
    """M_s of seed 003, Eq. (11): Concat(Maxpool_c(F), Avgpool_c(F)) -> ASPP -> 7x7 conv -> BN -> sigmoid.

    §3.2.1 also mentions a ReLU after the 7x7 conv's BN; a ReLU before a sigmoid would pin every weight
    to [0.5, 1) and the map could never suppress background, so we follow Eq. (10)/(11), which have none.
    """

    def __init__(self, dilations: tuple[int, ...] = (2, 4, 8), kernel_size: int = 7) -> None:
        super().__init__()
        self.aspp = ASPP(2, 1, dilations)
        self.conv = nn.Conv2d(self.aspp.out_channels, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)  # Eqs. (6)-(8)
        return torch.sigmoid(self.bn(self.conv(self.aspp(pooled))))  # Eqs. (9)-(10)


class MAChannel(nn.Module):
    """M_c of seed 003, Eq. (17): Concat(Avgpool(F), Maxpool(F)) -> 1x1 conv 2C->C -> MLP -> sigmoid.

    Unlike CBAM, the two descriptors are fused by a learned 1x1 conv (Eq. 15) rather than summed.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(2 * channels, channels, 1)  # Eq. (15)
        self.mlp = _mlp(channels, reduction)  # Eq. (16)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)], dim=1)  # Eqs. (12)-(14)
        return torch.sigmoid(self.mlp(self.fuse(pooled)))


class HybridAttention(nn.Module):
    """MA of seed 003 §3.2: both maps are computed from the same input F (not one after the other as in
    CBAM), and F_out = F + F ⊗ M_s(F) ⊗ M_c(F) (Eq. 5)."""

    def __init__(self, channels: int, reduction: int = 16, dilations: tuple[int, ...] = (2, 4, 8)) -> None:
        super().__init__()
        self.channel = MAChannel(channels, reduction)
        self.spatial = MASpatial(dilations)

    def attend(self, x: Tensor) -> Tensor:
        """The attention term F ⊗ M_s ⊗ M_c of Eq. (5) (Eqs. 1-3 with the maps applied to F once)."""
        return x * self.spatial(x) * self.channel(x)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.attend(x)  # Eq. (4)/(5)
