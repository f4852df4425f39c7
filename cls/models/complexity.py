"""Parameters, MACs and latency of a model: the columns of seed 003 Table 4."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Complexity:
    params: int
    macs: int
    latency_ms: float | None  # median of batch-size-1 forward passes; None when not measured


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one eval-mode forward pass. torch's counter reports FLOPs = 2 x MACs for
    convolutions and matmuls (the "FLOPs" papers report, seed 003 Table 4 included, are MACs)."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(inputs)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@torch.inference_mode()
def measure_latency(model: nn.Module, inputs: torch.Tensor, *, warmup: int = 3, repeats: int = 20) -> float:
    """Median wall time of one eval-mode forward pass, in milliseconds (CUDA synchronised)."""
    model.eval()
    sync = torch.cuda.synchronize if inputs.is_cuda else (lambda: None)
    for _ in range(warmup):
        model(inputs)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(inputs)
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(
    model: nn.Module,
    resolution: int,
    *,
    device: str = "cpu",
    latency: bool = True,
    warmup: int = 3,
    repeats: int = 20,
) -> Complexity:
    """Complexity of `model` on one (1, 3, resolution, resolution) image."""
    model = model.to(device)
    x = torch.randn(1, 3, resolution, resolution, device=device)
    ms = measure_latency(model, x, warmup=warmup, repeats=repeats) if latency else None
    return Complexity(count_params(model), count_macs(model, x), ms)
