"""The style network's loss (seed 002 §2.2): the perceptual loss against one style image's Gram matrices."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from cls.models.style import PerceptualLoss

from .engine import LossFn


def perceptual_loss(
    style: dict[str, Any], device: torch.device, mean: tuple[float, ...] = (0.0,) * 3, std: tuple[float, ...] = (1.0,) * 3
) -> LossFn:
    """(stylised output, content images, unused labels) -> loss. The loss network takes images in [0, 1], so
    the loader's normalisation (`mean`, `std`) is undone on the content images first."""
    if not style.get("image"):
        raise ValueError("the style network needs a style image: set style.image=PATH")
    loss = PerceptualLoss(
        tuple(style["content_layers"]), tuple(style["style_layers"]), style["content_weight"],
        style["style_weight"], style["tv_weight"], pretrained=style["pretrained_vgg"],
    ).to(device)
    image = TF.to_dtype(TF.pil_to_tensor(Image.open(style["image"]).convert("RGB")), torch.float32, scale=True)
    grams = loss.style_targets(image.unsqueeze(0).to(device))

    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def fn(outputs: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        content = images * std_t + mean_t
        return loss(outputs, content, grams)["loss"]

    return fn
