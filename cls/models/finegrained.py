"""The fine-grained ResNet-50 of seed 003 (Lu, Yang & Yang 2024): a multi-scale stem pool (§3.4), the hybrid
attention MA (§3.2) and attention erasure EA (§3.3) with a two-stage loss (§3.5, Eq. 21).

Choices the paper leaves open, each a config value:
- `ma_after`: which ResNet stage MA follows. Default "layer3": Table 4 puts MA at +2.2 M parameters, which is
  what MA's 2C->C fusion conv and MLP cost at C = 1024 (after layer3) and not at C = 2048 (+8.9 M).
- `ea_rerun`: what the second stage re-runs on the erased input. "tail" (default) erases MA's output
  F_out = F + F' (Eqs. 4-5; Eq. 20 writes F'' = F' ⊗ M) and re-runs the stages after `ma_after` and a
  classifier. MA and EA together then cost +20% MACs at 448 px, as MA and EA together do in Table 4
  (16.5 -> 19.8 GMACs), but split differently: in Table 4 MA adds 2.0 G (16.5 -> 18.5) and EA 1.3 G
  (18.5 -> 19.8); here MA adds ~0.002 G and EA's second pass through layer4 3.2 G (docs/benchmarks.md).
  "full" erases the image (Eq. 18 upsamples the map "to the size of the original image") and re-runs the
  whole network: +100% MACs.
- `ea_head`: the second stage's classifier, "separate" (default; Table 4 adds parameters for EA) or "shared".
- `theta` (§3.3, Eq. 19) has no value in the paper; it thresholds the attention map rescaled to [0, 1] per image.
- Inference (Table 4 counts EA's MACs, so both stages run): the mean of both stages' logits, §3.5's "equal
  weighting". In training mode the model returns both stages' logits for Eq. (21).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from .attention import HybridAttention
from .backbones import check_resolution
from .registry import register_model
from .weights import load_pretrained

RESNET_STAGES = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
EA_RERUN = ("tail", "full")
EA_HEADS = ("separate", "shared")


class MultiScaleMaxPool(nn.Module):
    """§3.4: max pools of 2x2, 4x4 and 8x8 (kernel = stride), the coarser two bilinearly upsampled to the 2x2
    output's size, summed element-wise. Replaces ResNet's 3x3/2 stem pool and keeps its output shape:
    `ceil_mode` gives ceil(n/2), as the padded 3x3/2 pool does, for odd sizes too."""

    def __init__(self, kernels: tuple[int, ...] = (2, 4, 8)) -> None:
        super().__init__()
        if not kernels:
            raise ValueError("MultiScaleMaxPool needs at least one kernel size")
        self.kernels = tuple(kernels)

    def forward(self, x: Tensor) -> Tensor:
        k0 = self.kernels[0]
        out = F.max_pool2d(x, k0, k0, ceil_mode=True)
        for k in self.kernels[1:]:
            coarse = F.max_pool2d(x, k, k, ceil_mode=True)
            out = out + F.interpolate(coarse, size=out.shape[-2:], mode="bilinear", align_corners=False)
        return out


def check_theta(theta: float) -> None:
    if not 0.0 <= theta <= 1.0:
        raise ValueError(
            f"theta must lie in [0, 1]: it thresholds the attention map rescaled to [0, 1] (seed 003, Eq. 19); got {theta}"
        )


@torch.no_grad()
def attention_map(attention: Tensor, size: tuple[int, int]) -> Tensor:
    """Eq. (18): the attention features (B, C, h, w) averaged over channels, upsampled to `size`, and rescaled
    to [0, 1] per image (min-max) so that one θ means the same for every image and layer. -> (B, 1, H, W)."""
    a = F.interpolate(attention.float().mean(1, keepdim=True), size=size, mode="bilinear", align_corners=False)
    lo, hi = a.amin((2, 3), keepdim=True), a.amax((2, 3), keepdim=True)
    return (a - lo) / (hi - lo).clamp_min(1e-12)


def erasure_mask(attention: Tensor, size: tuple[int, int], theta: float) -> Tensor:
    """Eq. (19): 0 where the upsampled map exceeds θ (the salient region, erased), 1 elsewhere. (B, 1, H, W)."""
    check_theta(theta)
    return (attention_map(attention, size) <= theta).to(attention.dtype)


class FineGrainedResNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 200,
        *,
        multiscale_pool: bool = True,
        pool_kernels: tuple[int, ...] = (2, 4, 8),
        ma: bool = True,
        ma_after: str = "layer3",
        ma_reduction: int = 16,
        aspp_dilations: tuple[int, ...] = (2, 4, 8),
        ea: bool = True,
        theta: float = 0.7,
        ea_rerun: str = "tail",
        ea_head: str = "separate",
        pretrained: bool | str = False,
    ) -> None:
        super().__init__()
        if ma_after not in RESNET_STAGES:
            raise ValueError(f"ma_after must be one of {list(RESNET_STAGES)}, got {ma_after!r}")
        if ea_rerun not in EA_RERUN:
            raise ValueError(f"ea_rerun must be one of {EA_RERUN}, got {ea_rerun!r}")
        if ea_head not in EA_HEADS:
            raise ValueError(f"ea_head must be one of {EA_HEADS}, got {ea_head!r}")
        check_theta(theta)

        net = torchvision.models.resnet50(weights=None)
        if pretrained:
            load_pretrained(net, "resnet50", pretrained)
        pool = MultiScaleMaxPool(pool_kernels) if multiscale_pool else net.maxpool
        self.stem = nn.Sequential(OrderedDict(conv1=net.conv1, bn1=net.bn1, relu=net.relu, pool=pool))
        split = list(RESNET_STAGES).index(ma_after) + 1
        stages = [(name, getattr(net, name)) for name in RESNET_STAGES]
        self.trunk = nn.Sequential(OrderedDict(stages[:split]))  # up to MA
        self.tail = nn.Sequential(OrderedDict(stages[split:]))  # after MA; what EA's "tail" stage re-runs
        self.ma = HybridAttention(RESNET_STAGES[ma_after], ma_reduction, tuple(aspp_dilations)) if ma else None
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2048, num_classes)
        self.fc_erased = nn.Linear(2048, num_classes) if ea and ea_head == "separate" else None
        self.ea, self.theta, self.ea_rerun = ea, theta, ea_rerun

    def _features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Stem and stages up to `ma_after`, then MA. Returns (F_out, the map EA reads)."""
        f = self.trunk(self.stem(x))
        if self.ma is None:
            return f, f  # EA without MA reads the plain features
        attended = self.ma.attend(f)
        return f + attended, attended  # Eq. (5)

    def _classify(self, f: Tensor, fc: nn.Linear) -> Tensor:
        return fc(self.pool(self.tail(f)))

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        check_resolution("fg_resnet50", x, 32)
        f, attention = self._features(x)
        logits = self._classify(f, self.fc)
        if not self.ea:
            return logits
        if self.ea_rerun == "tail":
            # Eq. (20) on what MA outputs: f is F_out = F + F' (Eq. 5), not the attention term F' alone.
            erased = f * erasure_mask(attention, f.shape[-2:], self.theta)
        else:
            erased, _ = self._features(x * erasure_mask(attention, x.shape[-2:], self.theta))
        logits_erased = self._classify(erased, self.fc_erased if self.fc_erased is not None else self.fc)
        if self.training:
            return logits, logits_erased  # both stages' losses are summed: Eq. (21)
        return (logits + logits_erased) / 2


@register_model("fg_resnet50")
def fg_resnet50(
    *,
    num_classes: int = 200,
    multiscale_pool: bool = True,
    pool_kernels: tuple[int, ...] = (2, 4, 8),
    ma: bool = True,
    ma_after: str = "layer3",
    ma_reduction: int = 16,
    aspp_dilations: tuple[int, ...] = (2, 4, 8),
    ea: bool = True,
    theta: float = 0.7,
    ea_rerun: str = "tail",
    ea_head: str = "separate",
    pretrained: bool | str = False,
) -> FineGrainedResNet:
    """Seed 003's model; with multiscale_pool, ma and ea all false it is a plain ResNet-50 (Table 3, row 1)."""
    return FineGrainedResNet(
        num_classes,
        multiscale_pool=multiscale_pool,
        pool_kernels=tuple(pool_kernels),
        ma=ma,
        ma_after=ma_after,
        ma_reduction=ma_reduction,
        aspp_dilations=tuple(aspp_dilations),
        ea=ea,
        theta=theta,
        ea_rerun=ea_rerun,
        ea_head=ea_head,
        pretrained=pretrained,
    )
