"""The VGG-16 transfer-learning binary classifier of seed 002 §4.2 (Fig. 9): the ImageNet convolutional base
"is retained, all dense connection layers are deleted, and then a two-layer dense connection layer and sigmoid
activation function are added after the convolution base".

What the paper leaves open, each a model option (config `model.*`), our choices:
- `freeze_base` (default true): "retained" does not say frozen or fine-tuned; we freeze it, the usual
  Keras transfer recipe the paper's setting (lr 1e-5, 30 epochs) suggests, and `freeze_base=false` fine-tunes it.
- `hidden` (default 256) and `dropout` (default 0.5): the paper gives neither the first dense layer's width nor
  any dropout; Dense(256) + Dropout(0.5) before the one-unit sigmoid layer is that same recipe's head.

The model returns the logit (B,); the sigmoid is applied by `predict_proba` and, fused for numerical
stability, by `BCEWithLogitsLoss` (the paper's binary cross-entropy, §4.3).
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

from .backbones import check_resolution
from .registry import register_model
from .weights import load_pretrained


class VGG16Transfer(nn.Module):
    def __init__(self, hidden: int = 256, dropout: float = 0.5, pretrained: bool | str = True, freeze_base: bool = True) -> None:
        super().__init__()
        vgg = torchvision.models.vgg16(weights=None)
        if pretrained:
            load_pretrained(vgg, "vgg16", pretrained)
        self.features = vgg.features
        if freeze_base:
            self.features.requires_grad_(False)
        # torchvision's 7x7 adaptive pool: at 224 px a no-op, and any size >= 32 reaches the dense layers.
        self.pool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(512 * 7 * 7, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        check_resolution("vgg16_transfer", x, 32)
        return self.classifier(self.pool(self.features(x))).squeeze(1)

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        """P(class 1) per image, (B,)."""
        return torch.sigmoid(self(x))


@register_model("vgg16_transfer")
def vgg16_transfer(
    *, hidden: int = 256, dropout: float = 0.5, pretrained: bool | str = True, freeze_base: bool = True
) -> VGG16Transfer:
    """Seed 002's binary classifier; transfer learning needs the ImageNet weights, hence pretrained=True.
    `hidden`, `dropout` and `freeze_base` are our choices (module docstring): the paper gives none of them."""
    return VGG16Transfer(hidden, dropout, pretrained, freeze_base)
