"""Losses that belong to the architectures (pure torch)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def multi_stage_cross_entropy(outputs: Tensor | tuple[Tensor, ...], target: Tensor, **kwargs) -> Tensor:
    """Cross-entropy summed over the stages a model returns in training (seed 003, Eq. 21, §3.5: "the total
    classification loss is the sum of the classification losses from each stage"). A single logits tensor
    is one stage. Eq. (21) as printed, -Σ y^p log y^p, is the predictions' entropy and uses no label; we read
    it as the cross-entropy the text describes."""
    if isinstance(outputs, Tensor):
        outputs = (outputs,)
    return sum(F.cross_entropy(logits, target, **kwargs) for logits in outputs)
