"""What each transform family does to an image, written once for both loaders.

`TransformConfig` is backend-free: `cls.data.dali` builds it as DALI operators and `cls.data.torch_loader` as
torchvision v2 transforms, and tests hold the two to the same pixels in evaluation. Every family ends in
float32 CHW, (x / 255 - mean) / std.

- "32px" (seed 000): train zero-pads `padding`, crops `size` at random and flips; eval crops the centre `size`
  (a no-op at 32 px).
- "imagenet" (seed 002): train takes a random resized crop to `size` (area fraction `scale`, aspect `ratio`) and
  flips; eval resizes the shorter side to `resize` and crops the centre `size`.
- "fine_grained" (seed 003 §4.2): both resize to `resize` x `resize`; train crops `size` at random and flips,
  eval crops the centre `size`. With resize = size it is a plain square resize (seed 002's 224 x 224).

`augment=False` gives training the evaluation transforms (no online augmentation) in every family.

Two integer rules are fixed here so both backends agree to the pixel: a shorter-side resize gives the long side
`floor(resize * long / short)` (torchvision's rule; DALI would round), and a centre crop starts at
half the margin `extent - size` rounded half away from zero (DALI's rule; torchvision's `CenterCrop` rounds half
to even, one pixel off for odd margins). Windows that leave the image are zero-padded (pixel value 0, before
normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from cls.data.layout import FAMILIES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "32px": dict(size=32, padding=4),  # seed 000: CIFAR / SVHN / digits
    "imagenet": dict(size=224, resize=256),  # seed 002: cats vs dogs, ImageNet-pretrained backbones
    "fine_grained": dict(size=448, resize=550),  # seed 003 §4.2
}


@dataclass(frozen=True)
class TransformConfig:
    """The image transforms of one family; build one with `transform_config(family, **overrides)`.

    `hflip` is on in every family because it is standard for natural images (CIFAR, ImageNet, birds, cars);
    turn it off for digits and SVHN, where a mirrored 2 or 5 is not the same glyph.
    """

    family: str
    size: int  # side of the square output
    resize: int | None = None  # imagenet: eval shorter side; fine_grained: square side before either crop
    padding: int = 0  # 32px: zero padding on every side before the random crop
    scale: tuple[float, float] = (0.08, 1.0)  # imagenet: area fraction of the random resized crop
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # imagenet: aspect ratio (w / h) of that crop
    hflip: bool = True  # random horizontal flip in training
    # Online augmentation in training (the family's random crop and flip). False: training images get the
    # evaluation transforms, as seed 002 trains (its §5: no processing "during the training process").
    augment: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown transform family {self.family!r}; known: {', '.join(FAMILIES)}")
        if self.size < 1 or self.padding < 0:
            raise ValueError(f"size must be >= 1 and padding >= 0, got size={self.size}, padding={self.padding}")
        if self.family != "32px" and (self.resize is None or self.resize < 1):
            raise ValueError(f"family {self.family!r} needs resize >= 1, got {self.resize}")
        if self.family == "fine_grained" and self.resize < self.size:  # type: ignore[operator]
            raise ValueError(f"fine_grained crops {self.size} px out of {self.resize} px: resize must be >= size")
        if not (0 < self.scale[0] <= self.scale[1] <= 1 and 0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], got {self}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values each, std > 0")


def transform_config(family: str, **overrides: Any) -> TransformConfig:
    """The defaults of `family` with `overrides` (any `TransformConfig` field); an unknown key raises."""
    if family not in _FAMILY_DEFAULTS:
        raise ValueError(f"unknown transform family {family!r}; known: {', '.join(FAMILIES)}")
    known = {f.name for f in fields(TransformConfig)} - {"family"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"TransformConfig has no field {', '.join(map(repr, unknown))}; fields: {', '.join(sorted(known))}"
        )
    config = TransformConfig(family=family, **_FAMILY_DEFAULTS[family])
    return replace(config, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def shorter_side_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """(h, w) after resizing the shorter side to `shorter`, aspect kept, long side floored (torchvision's rule)."""
    if height <= width:
        return shorter, shorter * width // height
    return shorter * height // width, shorter


def centre_offset(extent: int, size: int) -> int:
    """Start of a centred `size` window in `extent` pixels; negative when the window is larger (then padded)."""
    margin = extent - size
    return (margin + 1) // 2 if margin >= 0 else -((1 - margin) // 2)  # half away from zero
