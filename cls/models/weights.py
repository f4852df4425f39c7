"""Pretrained ImageNet weights, read from the local torch cache only.

Compute nodes are often offline, and a silent multi-hundred-megabyte download inside 64 DDP ranks
is worse than a clear error: a missing file raises `PretrainedWeightsMissing`, naming the file, the
directory it belongs in and the command that puts it there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import get_model_weights


class PretrainedWeightsMissing(FileNotFoundError):
    pass


def resolve_weights(arch: str, pretrained: bool | str):
    """`True` means torchvision's DEFAULT weights for `arch`; a string names them (e.g. "IMAGENET1K_V1")."""
    enum = get_model_weights(arch)
    if pretrained is True:
        return enum.DEFAULT
    try:
        return enum[str(pretrained)]
    except KeyError:
        raise ValueError(
            f"{arch} has no pretrained weights {pretrained!r}; choose one of {[w.name for w in enum]} or true"
        ) from None


def cache_path(weights) -> Path:
    """Where torchvision keeps `weights`: $TORCH_HOME/hub/checkpoints/<file name of the URL>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


# DenseNet checkpoints predate the ban on '.' in module names: 'denselayer1.norm.1.weight'
# is 'denselayer1.norm1.weight' in today's module.
_LEGACY_DENSENET_KEY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


def load_pretrained(model: nn.Module, arch: str, pretrained: bool | str) -> None:
    """Load torchvision's ImageNet weights for `arch` into `model` (an unmodified torchvision `arch`)."""
    weights = resolve_weights(arch, pretrained)
    path = cache_path(weights)
    if not path.is_file():
        raise PretrainedWeightsMissing(
            f"pretrained weights {type(weights).__name__}.{weights.name} for {arch} are not in the local cache: "
            f"{path} does not exist, and cls never downloads weights by itself.\n"
            f"On a machine with internet, fetch them into that cache with\n"
            f"    python -c \"import torchvision; torchvision.models.get_weight('{type(weights).__name__}.{weights.name}').get_state_dict()\"\n"
            f"or download {weights.url} to {path} (set TORCH_HOME to use another cache), "
            f"or build the model with pretrained=false."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {_LEGACY_DENSENET_KEY.sub(r"\1\2.", k): v for k, v in state.items()}
    model.load_state_dict(state)
