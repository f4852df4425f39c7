"""`train_one_epoch` and `evaluate`: plain functions with explicit arguments that return metric dicts
(torchvision references / timm). Nothing here knows about Ray; under torch.distributed the returned
numbers are already reduced across ranks."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, ContextManager, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from cls.models import multi_stage_cross_entropy

from .metrics import ClassificationMetrics, class_probabilities

# (model outputs, input images, labels) -> scalar loss. Images are an argument because the style network's
# perceptual loss compares its output with its input (seed 002 Eq. 2).
LossFn = Callable[[Any, Tensor, Tensor], Tensor]


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    """Cross-entropy, summed over stages for models that return several (seed 003 Eq. 21)."""

    def loss(outputs: Any, images: Tensor, labels: Tensor) -> Tensor:
        return multi_stage_cross_entropy(outputs, labels, label_smoothing=label_smoothing)

    return loss


def binary_cross_entropy_loss() -> LossFn:
    """Seed 002 §4.3's binary cross-entropy on one sigmoid output, fused with the sigmoid for stability."""

    def loss(outputs: Tensor, images: Tensor, labels: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(outputs.float(), labels.float())

    return loss


def _reduce(t: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def _check_finite(losses: list[Tensor], epoch: int, first_step: int) -> None:
    """Raise on the first non-finite loss among `losses` (steps first_step, first_step + 1, ...). Checking a
    batch of steps at once costs one device sync per batch instead of one per step."""
    if not losses:
        return
    stacked = torch.stack(losses)
    finite = torch.isfinite(stacked)
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0])
        raise FloatingPointError(
            f"loss is {stacked[i].item()} at epoch {epoch}, step {first_step + i}: training stopped. "
            "Lower the learning rate, check the data, or resume from the last checkpoint."
        )


def _forward(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    loss_fn: LossFn,
    device: torch.device,
    autocast: Callable[[], ContextManager],
    channels_last: bool,
) -> tuple[Any, Tensor, Tensor]:
    """(outputs, loss, labels on the device) of one batch."""
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast():
        outputs = model(images)
        loss = loss_fn(outputs, images, labels)
    return outputs, loss, labels


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    *,
    device: torch.device | str,
    epoch: int,
    scheduler: Any | None = None,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    channels_last: bool = False,
    classification: bool = True,
    nan_check_every: int = 1,
) -> dict[str, float]:
    """One pass over `loader`. `scheduler`, if given, steps after every optimizer step. Returns loss, top-1
    (classification), images (all ranks), seconds, images/s (all ranks) and the learning rate at the end."""
    model.train()
    device = torch.device(device)
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss x n, correct, n
    pending: list[Tensor] = []
    pending_from = 0
    start = time.perf_counter()
    step = -1
    for step, (images, labels) in enumerate(loader):
        outputs, loss, labels = _forward(model, images, labels, loss_fn, device, autocast, channels_last)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()

        n = labels.shape[0]
        detached = loss.detach()
        correct = (class_probabilities(outputs).argmax(1) == labels).sum() if classification else detached.new_zeros(())
        sums += torch.stack([detached.double() * n, correct.double(), detached.new_tensor(n, dtype=torch.float64)])
        if not pending:
            pending_from = step
        pending.append(detached)
        if len(pending) >= nan_check_every:
            _check_finite(pending, epoch, pending_from)
            pending = []
    _check_finite(pending, epoch, pending_from)

    _reduce(sums)
    seconds = time.perf_counter() - start
    loss_sum, correct, n = sums.tolist()
    out = {
        "loss": loss_sum / max(n, 1),
        "images": int(n),
        "seconds": seconds,
        "images_per_s": n / seconds if seconds > 0 else 0.0,
        "lr": optimizer.param_groups[0]["lr"],
        "steps": step + 1,
    }
    if classification:
        out["top1"] = correct / max(n, 1)
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    loss_fn: LossFn,
    metrics: ClassificationMetrics | None,
    *,
    device: torch.device | str,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    channels_last: bool = False,
) -> tuple[dict[str, float], Tensor | None]:
    """Loss (and, with `metrics`, the classification metrics and confusion matrix) over every sample of
    `loader` on every rank."""
    model.eval()
    device = torch.device(device)
    if metrics is not None:
        metrics.reset()
    sums = torch.zeros(2, device=device, dtype=torch.float64)  # loss x n, n
    for images, labels in loader:
        outputs, loss, labels = _forward(model, images, labels, loss_fn, device, autocast, channels_last)
        n = labels.shape[0]
        sums += torch.stack([loss.detach().double() * n, loss.new_tensor(n, dtype=torch.float64)])
        if metrics is not None:
            metrics.update(outputs, labels)
    _reduce(sums)
    loss_sum, n = sums.tolist()
    values: dict[str, float] = {"loss": loss_sum / max(n, 1), "images": int(n)}
    confusion = None
    if metrics is not None:
        computed, confusion = metrics.compute()
        values.update(computed)
    return values, confusion
