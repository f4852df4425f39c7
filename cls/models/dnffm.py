"""DNFFM: the dual network feature fusion model of seed 000 (Jiang & Luo), §3.

Two backbones (each with CBAM, §3.1) see the same image; their pooled features are projected to one
width, fused by Eqs. (1)-(3), concatenated, and classified.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .backbones import Backbone
from .registry import register_model


def mlp(in_features: int, out_features: int) -> nn.Sequential:
    """One of the three dimension-matching MLPs of §3.2: BN -> ReLU -> Linear."""
    return nn.Sequential(nn.BatchNorm1d(in_features), nn.ReLU(inplace=True), nn.Linear(in_features, out_features))


class FusionHead(nn.Module):
    """Eqs. (1)-(3) of DNFFM on two (B, D) feature vectors; returns Concat(f1s, f2s, f_avg), (B, 3D).

    τ, λ, γ are "proportional coefficients" the paper does not give values for: fixed hyper-parameters by
    default (swept by `sweeps/dnffm_ablation.yaml`), or learnable scalars. Note that with τ = 1, Eqs. (2)
    and (3) give f2s = -(γ/λ)·f1s: the two "unique" vectors carry the same information up to sign.
    """

    def __init__(self, tau: float = 1.0, lam: float = 1.0, gamma: float = 1.0, learnable: bool = False) -> None:
        super().__init__()
        values = torch.tensor([tau, lam, gamma], dtype=torch.float32)
        if learnable:
            self.coefficients = nn.Parameter(values)
        else:
            self.register_buffer("coefficients", values)

    def forward(self, f1: Tensor, f2: Tensor) -> Tensor:
        if f1.shape != f2.shape:
            raise ValueError(f"Eq. (1) adds f1 and f2, so their shapes must match; got {tuple(f1.shape)} and {tuple(f2.shape)}")
        tau, lam, gamma = self.coefficients.to(f1.dtype)
        f_avg = tau * (f1 + f2) / 2  # Eq. (1): the redundant reference vector
        f1s = lam * (f1 - f_avg)  # Eq. (2): what only backbone 1 sees
        f2s = gamma * (f2 - f_avg)  # Eq. (3): what only backbone 2 sees
        return torch.cat([f1s, f2s, f_avg], dim=1)


class DNFFM(nn.Module):
    """Where the three MLPs sit is not drawn in the text (Fig. 1 is an image): Eq. (1) adds f1 and f2, so two
    MLPs first bring each backbone's features to `fusion_dim`, and the third maps the fused 3·fusion_dim
    vector to the classes."""

    def __init__(
        self,
        backbone1: Backbone,
        backbone2: Backbone,
        num_classes: int,
        fusion_dim: int = 512,
        fusion: FusionHead | None = None,
    ) -> None:
        super().__init__()
        self.backbone1, self.backbone2 = backbone1, backbone2
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.project1 = mlp(backbone1.width, fusion_dim)
        self.project2 = mlp(backbone2.width, fusion_dim)
        self.fusion = fusion or FusionHead()
        self.classifier = mlp(3 * fusion_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        f1 = self.project1(self.pool(self.backbone1(x)))
        f2 = self.project2(self.pool(self.backbone2(x)))
        return self.classifier(self.fusion(f1, f2))


@register_model("dnffm")
def dnffm(
    *,
    backbone1: str = "resnet50",
    backbone2: str = "densenet121",
    num_classes: int = 10,
    fusion_dim: int = 512,
    tau: float = 1.0,
    lam: float = 1.0,
    gamma: float = 1.0,
    learnable_coefficients: bool = False,
    cbam: bool = True,
    cbam_reduction: int = 16,
    pretrained: bool | str = False,
    small_input: str | None = None,
    upsample_size: int = 224,
) -> DNFFM:
    """DNFFM with any two of the six backbones; the paper's pair (§4) is ResNet-50 + DenseNet-121."""

    def backbone(name: str) -> Backbone:
        return Backbone(
            name,
            pretrained=pretrained,
            cbam=cbam,
            cbam_reduction=cbam_reduction,
            small_input=small_input,
            upsample_size=upsample_size,
        )

    fusion = FusionHead(tau, lam, gamma, learnable=learnable_coefficients)
    return DNFFM(backbone(backbone1), backbone(backbone2), num_classes, fusion_dim, fusion)
