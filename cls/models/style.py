"""Fast style transfer of seed 002 (Zheng et al.), §2: an image transformation network f_W (a deep residual
network, §2.1) trained against a perceptual loss on a frozen ImageNet VGG-19 (§2.2, Eqs. 2-3).

The transformation network follows Johnson et al. (2016), which seed 002 builds on: 9x9 conv, two stride-2
downsampling convs, five residual blocks, two nearest-upsample convs, 9x9 conv; instance norm and
reflection padding. It takes images in [0, 1] and keeps H x W for any size divisible by 4 (at least 8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from .backbones import check_resolution
from .registry import register_model
from .weights import load_pretrained


class ConvLayer(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, norm: bool = True, relu: bool = True) -> None:
        layers: list[nn.Module] = [nn.ReflectionPad2d(kernel // 2), nn.Conv2d(cin, cout, kernel, stride)]
        if norm:
            layers.append(nn.InstanceNorm2d(cout, affine=True))
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """Fig. 2 of seed 002: H(x) = F(x) + x."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvLayer(channels, channels, 3), ConvLayer(channels, channels, 3, relu=False))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class UpsampleConv(nn.Sequential):
    """Nearest x2 upsampling then a conv: no checkerboard artefacts of transposed convs."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), ConvLayer(cin, cout, 3))


class TransformerNet(nn.Module):
    """f_W of seed 002 §2.1: (B, 3, H, W) in [0, 1] -> (B, 3, H, W); H and W divisible by 4, at least 8."""

    def __init__(self, channels: int = 32, residual_blocks: int = 5) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            ConvLayer(3, c, 9),
            ConvLayer(c, 2 * c, 3, stride=2),
            ConvLayer(2 * c, 4 * c, 3, stride=2),
            *[ResidualBlock(4 * c) for _ in range(residual_blocks)],
            UpsampleConv(4 * c, 2 * c),
            UpsampleConv(2 * c, c),
            ConvLayer(c, 3, 9, norm=False, relu=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        # Reflection padding must be smaller than the map: 9x9 convs pad 4, the 1/4-size map's 3x3 convs pad 1.
        check_resolution("style_transformer", x, min_size=8, multiple=4)
        return self.net(x)


@register_model("style_transformer", task="image-to-image")
def style_transformer(*, channels: int = 32, residual_blocks: int = 5) -> TransformerNet:
    """The image transformation network of seed 002 §2.1."""
    return TransformerNet(channels, residual_blocks)


# VGG-19's conv layers as conv{block}_{index}, in torchvision's `features` order. Seed 002 §3.1 names conv1_2,
# conv2_2, conv3_3, conv4_3, conv5_3: the block-final layers of VGG-16 (Johnson et al.'s relu3_3 etc.), while the
# paper says its loss network is VGG-19 (§2.2), where blocks 3-5 have four convs. We read the names literally in
# VGG-19: conv3_3 is the third of block 3's four convs, not its last (that is conv3_4, also available here).
_VGG19_BLOCKS = (2, 2, 4, 4, 4)


def vgg19_layer_indices() -> dict[str, int]:
    """conv name -> index of the ReLU that follows it in torchvision's vgg19().features."""
    names, i = {}, 0
    for block, convs in enumerate(_VGG19_BLOCKS, start=1):
        for k in range(1, convs + 1):
            names[f"conv{block}_{k}"] = i + 1  # the conv is at i, its ReLU at i + 1
            i += 2
        i += 1  # the max pool closing the block
    return names


def gram_matrix(features: Tensor) -> Tensor:
    """Eq. (3) of seed 002: G_{c,c'} = Σ_{h,w} φ_{h,w,c} φ_{h,w,c'} / (C·H·W). (B, C, H, W) -> (B, C, C)."""
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def content_loss(output_features: Tensor, target_features: Tensor) -> Tensor:
    """Eq. (2) of seed 002: ||φ_j(ŷ) - φ_j(y)||²₂ / (C_j·H_j·W_j), averaged over the batch."""
    return F.mse_loss(output_features, target_features)


class PerceptualLoss(nn.Module):
    """Content + style loss of seed 002 §2.2 on a frozen VGG-19 (ImageNet weights unless pretrained=False).

    Defaults are our choice: §3.1 names no single best set; it finds that "multiple consecutive layers from the
    low-level to the high-level" as style layers and "the layer closer to the middle" as content layer work best,
    and Fig. 7 tries five style sets with content conv3_3. We take content conv3_3 and the Fig. 7 set conv1_2,
    conv2_2, conv3_3, conv4_3, which fits that description (layer names: see `_VGG19_BLOCKS`). Features are taken after each named
    conv's ReLU. The style loss is the squared Frobenius distance of the Gram matrices (Eq. 3), summed over
    layers (Johnson et al. 2016, Eq. 4); a total-variation term is optional.
    """

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(
        self,
        content_layers: tuple[str, ...] = ("conv3_3",),
        style_layers: tuple[str, ...] = ("conv1_2", "conv2_2", "conv3_3", "conv4_3"),
        content_weight: float = 1.0,
        style_weight: float = 1e5,
        tv_weight: float = 0.0,
        pretrained: bool | str = True,
    ) -> None:
        super().__init__()
        index = vgg19_layer_indices()
        unknown = [n for n in (*content_layers, *style_layers) if n not in index]
        if unknown:
            raise ValueError(f"unknown VGG-19 layer(s) {unknown}; VGG-19 has {list(index)}")
        if not content_layers and not style_layers:
            raise ValueError("PerceptualLoss needs at least one content or style layer")
        vgg = torchvision.models.vgg19(weights=None)
        if pretrained:
            load_pretrained(vgg, "vgg19", pretrained)
        last = max(index[n] for n in (*content_layers, *style_layers))
        self.vgg = vgg.features[: last + 1].eval().requires_grad_(False)  # the loss network is never trained
        self.taps = {index[n]: n for n in (*content_layers, *style_layers)}
        self.content_layers, self.style_layers = tuple(content_layers), tuple(style_layers)
        self.content_weight, self.style_weight, self.tv_weight = content_weight, style_weight, tv_weight
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.vgg.eval()  # VGG has no BN or dropout, but keep the frozen net in eval whatever the caller does
        return self

    def features(self, images: Tensor) -> dict[str, Tensor]:
        """Activations at the named layers for images in [0, 1]."""
        x, out = (images - self.mean) / self.std, {}
        for i, layer in enumerate(self.vgg):
            x = layer(x)
            if i in self.taps:
                out[self.taps[i]] = x
        return out

    def style_targets(self, style_image: Tensor) -> dict[str, Tensor]:
        """Gram matrices of the style image (1, 3, H, W), computed once per training run."""
        with torch.no_grad():
            feats = self.features(style_image)
        return {n: gram_matrix(feats[n]) for n in self.style_layers}

    def forward(self, output: Tensor, content: Tensor, style_grams: dict[str, Tensor]) -> dict[str, Tensor]:
        """Loss terms for stylised `output` of `content` images; `style_grams` from `style_targets`."""
        out_f = self.features(output)
        with torch.no_grad():
            content_f = self.features(content)
        c = sum((content_loss(out_f[n], content_f[n]) for n in self.content_layers), output.new_zeros(()))
        s = sum(
            (((gram_matrix(out_f[n]) - style_grams[n]) ** 2).sum((1, 2)).mean() for n in self.style_layers),
            output.new_zeros(()),
        )
        tv = (output[..., 1:, :] - output[..., :-1, :]).abs().mean() + (output[..., 1:] - output[..., :-1]).abs().mean()
        loss = self.content_weight * c + self.style_weight * s + self.tv_weight * tv
        return {"loss": loss, "content": c.detach(), "style": s.detach(), "tv": tv.detach()}
