"""The six backbones of DNFFM (seed 000, §3.2 and Tables 1-3) as feature extractors, and their
single-backbone classifiers (the baselines of Tables 1-3).

A `Backbone` maps images (B, 3, H, W) to a feature map (B, width, h, w). Options:
- `cbam`: a CBAM block on the final feature map. DNFFM §3.1 "integrates CBAM" into each backbone but its
  Fig. 2 is not in the text; on the final map the ImageNet weights of every stage stay usable.
- `small_input` for 32-px data (CIFAR, SVHN): "cifar_stem" makes the stem stride 1 and drops its max pool
  where it has one (the usual CIFAR adaptation; a replaced 7x7 conv is newly initialised), "upsample"
  resizes inputs to `upsample_size` before an unchanged network (keeps every pretrained weight, costs MACs).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from .attention import CBAM
from .registry import register_model
from .weights import load_pretrained

SMALL_INPUT_MODES = (None, "cifar_stem", "upsample")


def _conv_stride_1(conv: nn.Conv2d) -> None:
    conv.stride = (1, 1)


def _resnet_features(m: nn.Module) -> nn.Sequential:
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    return nn.Sequential(OrderedDict((n, getattr(m, n)) for n in names))


def _resnet_cifar(f: nn.Sequential) -> None:
    f.conv1 = nn.Conv2d(3, f.conv1.out_channels, 3, 1, 1, bias=False)
    f.maxpool = nn.Identity()


def _densenet_features(m: nn.Module) -> nn.Sequential:
    # torchvision applies a ReLU after `features` in forward(); it belongs to the extractor.
    return nn.Sequential(OrderedDict(features=m.features, relu=nn.ReLU(inplace=True)))


def _densenet_cifar(f: nn.Sequential) -> None:
    f.features.conv0 = nn.Conv2d(3, f.features.conv0.out_channels, 3, 1, 1, bias=False)
    f.features.pool0 = nn.Identity()


def _shufflenet_features(m: nn.Module) -> nn.Sequential:
    names = ["conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"]
    return nn.Sequential(OrderedDict((n, getattr(m, n)) for n in names))


def _shufflenet_cifar(f: nn.Sequential) -> None:
    _conv_stride_1(f.conv1[0])
    f.maxpool = nn.Identity()


def _no_change(f: nn.Sequential) -> None:
    """VGG's 3x3 stride-1 stem already suits 32 px (CIFAR VGGs keep all five pools: 32 -> 1x1)."""


@dataclass(frozen=True)
class BackboneSpec:
    width: int  # channels of the final feature map
    stride: int  # total downsampling with the ImageNet stem
    cifar_stride: int  # ... with the CIFAR stem
    features: Callable[[nn.Module], nn.Sequential]
    cifar_stem: Callable[[nn.Sequential], None]


BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec(2048, 32, 8, _resnet_features, _resnet_cifar),
    "vgg16": BackboneSpec(512, 32, 32, lambda m: m.features, _no_change),
    "densenet121": BackboneSpec(1024, 32, 8, _densenet_features, _densenet_cifar),
    "mobilenet_v3_large": BackboneSpec(
        960, 32, 16, lambda m: m.features, lambda f: _conv_stride_1(f[0][0])
    ),
    "regnet_y_400mf": BackboneSpec(
        440,
        32,
        16,
        lambda m: nn.Sequential(OrderedDict(stem=m.stem, trunk_output=m.trunk_output)),
        lambda f: _conv_stride_1(f.stem[0]),
    ),
    "shufflenet_v2_x0_5": BackboneSpec(1024, 32, 8, _shufflenet_features, _shufflenet_cifar),
}


def check_small_input(small_input: str | None) -> None:
    if small_input not in SMALL_INPUT_MODES:
        raise ValueError(f"small_input must be one of {SMALL_INPUT_MODES}, got {small_input!r}")


def check_resolution(model_name: str, x: Tensor, min_size: int, multiple: int = 1) -> None:
    """Raise a ValueError that names the model and the sizes it takes, instead of a conv shape error."""
    h, w = x.shape[-2:]
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{model_name} takes images of shape (B, 3, H, W); got {tuple(x.shape)}")
    if min(h, w) < min_size:
        raise ValueError(
            f"{model_name} needs inputs of at least {min_size}x{min_size} px (it downsamples {min_size}x); "
            f"got {h}x{w}. Use a larger resolution, or small_input='upsample'."
        )
    if h % multiple or w % multiple:
        raise ValueError(f"{model_name} needs H and W divisible by {multiple}; got {h}x{w}")


class Backbone(nn.Module):
    """A torchvision classification network cut before its pooling: (B, 3, H, W) -> (B, width, h, w)."""

    def __init__(
        self,
        name: str,
        *,
        pretrained: bool | str = False,
        cbam: bool = False,
        cbam_reduction: int = 16,
        small_input: str | None = None,
        upsample_size: int = 224,
    ) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(BACKBONES)}")
        check_small_input(small_input)
        spec = BACKBONES[name]
        net = torchvision.models.get_model(name, weights=None)
        if pretrained:
            load_pretrained(net, name, pretrained)  # before the stem changes, so every key still matches
        self.features = spec.features(net)
        if small_input == "cifar_stem":
            spec.cifar_stem(self.features)
        self.cbam = CBAM(spec.width, cbam_reduction) if cbam else nn.Identity()
        self.name = name
        self.width = spec.width
        self.small_input = small_input
        self.upsample_size = upsample_size
        self.min_resolution = {None: spec.stride, "cifar_stem": spec.cifar_stride, "upsample": 1}[small_input]

    def forward(self, x: Tensor) -> Tensor:
        check_resolution(self.name, x, self.min_resolution)
        if self.small_input == "upsample":
            x = F.interpolate(x, size=(self.upsample_size, self.upsample_size), mode="bilinear", align_corners=False)
        return self.cbam(self.features(x))


class BackboneClassifier(nn.Module):
    """Backbone -> global average pool -> dropout -> linear: the single-network baselines of DNFFM
    Tables 1-3 (the paper does not give their heads; this is torchvision's head without its hidden layers)."""

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(backbone.width, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def _register_classifier(arch: str) -> None:
    def build(
        *,
        num_classes: int = 10,
        pretrained: bool | str = False,
        cbam: bool = False,
        cbam_reduction: int = 16,
        small_input: str | None = None,
        upsample_size: int = 224,
        dropout: float = 0.0,
    ) -> BackboneClassifier:
        backbone = Backbone(
            arch,
            pretrained=pretrained,
            cbam=cbam,
            cbam_reduction=cbam_reduction,
            small_input=small_input,
            upsample_size=upsample_size,
        )
        return BackboneClassifier(backbone, num_classes, dropout)

    build.__name__ = arch
    build.__doc__ = f"{arch} classifier: one of the single-backbone baselines of DNFFM Tables 1-3."
    register_model(arch)(build)


for _arch in BACKBONES:
    _register_classifier(_arch)
