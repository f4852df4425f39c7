"""What only a GPU can show and the seeds quote, on one GPU, with plain torch (no Ray, DALI or Hydra):

- batch-1 latency of seed 003 Table 4's three models at 448 px (ResNet-50; + multi-scale pool + MA;
  + MA + EA), beside the paper's milliseconds (an RTX 3090);
- ResNet-50 training images/s at 224 px, bf16 autocast, channels-last, SGD: the anchor is NVIDIA's published
  2,470 img/s on one A100 (DeepLearningExamples, ResNet-50 v1.5, mixed precision);
- DNFFM (ResNet-50 + DenseNet-121 with CBAM, the CIFAR stem) training images/s at 32 px, same recipe.

    python bench/gpu_check.py [--out docs/gpu_check.md]      # on a GPU machine: about 2 minutes, at most 8
    python bench/gpu_check.py --device cpu --tiny            # seconds: small inputs and batches (the test)

It prints a markdown table and writes it to --out. Each measurement is skipped (its row says so) once the
time budget (--budget-s, 480 s by default) is spent, so the whole check ends within it.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from cls.models import build_model

# Seed 003 Table 4 (CUB-200-2011, 448 px, RTX 3090): label, fg_resnet50 options, paper inference ms.
TABLE_4 = [
    ("ResNet-50", dict(multiscale_pool=False, ma=False, ea=False), 26.4),
    ("ResNet-50 + MA", dict(multiscale_pool=True, ma=True, ea=False), 33.1),
    ("ResNet-50 + MA + EA", dict(multiscale_pool=True, ma=True, ea=True), 35.6),
]
RESNET50_A100_IMG_S = 2470  # NVIDIA DeepLearningExamples, ResNet-50 v1.5 training, AMP, 1x A100 80GB
COLUMNS = ("measurement", "model", "px", "batch", "precision", "value", "unit", "paper / anchor")


@dataclass(frozen=True)
class Settings:
    latency_px: int
    latency_warmup: int
    latency_repeats: int
    train_px: int
    train_batch: int
    dnffm_px: int
    dnffm_batch: int
    dnffm_backbones: tuple[str, str]
    train_warmup: int
    train_steps: int


FULL = Settings(448, 10, 50, 224, 256, 32, 256, ("resnet50", "densenet121"), 10, 30)
# --tiny: the same code paths on inputs and batches small enough for a CPU in seconds (its numbers mean nothing).
TINY = Settings(64, 1, 2, 64, 2, 32, 2, ("shufflenet_v2_x0_5", "regnet_y_400mf"), 1, 2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def latency_ms(model: nn.Module, px: int, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of one eval-mode fp32 forward pass of a (1, 3, px, px) image, CUDA synchronised; what
    Table 4 calls the time "to classify a single image"."""
    model.eval()
    x = torch.randn(1, 3, px, px, device=device)
    for _ in range(warmup):
        model(x)
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def train_images_per_s(model: nn.Module, px: int, batch: int, classes: int, device: torch.device,
                       warmup: int, steps: int) -> float:
    """Training images/s of SGD steps on random (batch, 3, px, px) images: bf16 autocast and channels-last on a
    GPU (fp32 on a CPU), timed over `steps` steps after `warmup` (cuDNN autotuning happens there)."""
    cuda = device.type == "cuda"
    model.train()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, px, px, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def run(device: torch.device, settings: Settings, budget_s: float) -> list[tuple[str, ...]]:
    """The table's rows, one per measurement; a measurement started after the budget is spent is skipped."""
    deadline = time.monotonic() + budget_s
    precision = "bf16, channels-last" if device.type == "cuda" else "fp32"
    rows: list[tuple[str, ...]] = []

    def measure(row: tuple[str, ...], fn: Callable[[], float], unit: str, fmt: str, anchor: str) -> None:
        if time.monotonic() > deadline:
            rows.append((*row, "skipped (time budget spent)", unit, anchor))
            return
        rows.append((*row, format(fn(), fmt), unit, anchor))

    s = settings
    for label, options, paper_ms in TABLE_4:
        model = build_model("fg_resnet50", num_classes=200, **options).to(device)
        measure(("batch-1 latency", label, str(s.latency_px), "1", "fp32"),
                lambda: latency_ms(model, s.latency_px, device, s.latency_warmup, s.latency_repeats),
                "ms", ".2f", f"{paper_ms} ms (seed 003 Table 4, RTX 3090, 448 px)")
        del model
    model = build_model("resnet50", num_classes=1000).to(device)
    measure(("training", "ResNet-50", str(s.train_px), str(s.train_batch), precision),
            lambda: train_images_per_s(model, s.train_px, s.train_batch, 1000, device, s.train_warmup, s.train_steps),
            "images/s", ".0f", f"{RESNET50_A100_IMG_S:,} images/s (NVIDIA, 1x A100, AMP, 224 px)")
    del model
    b1, b2 = s.dnffm_backbones
    model = build_model("dnffm", backbone1=b1, backbone2=b2, num_classes=10, small_input="cifar_stem").to(device)
    measure(("training", f"DNFFM {b1} + {b2}, cifar_stem", str(s.dnffm_px), str(s.dnffm_batch), precision),
            lambda: train_images_per_s(model, s.dnffm_px, s.dnffm_batch, 10, device, s.train_warmup, s.train_steps),
            "images/s", ".0f", "- (seed 000 gives no speed)")
    return rows


def markdown(rows: list[tuple[str, ...]], device: torch.device, tiny: bool) -> str:
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    lines = [
        f"`bench/gpu_check.py{' --tiny' if tiny else ''}` on {device.type} ({where}), torch {torch.__version__}, {today}"
        + (" (--tiny: small inputs, numbers not comparable)" if tiny else ""),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="default %(default)s")
    parser.add_argument("--tiny", action="store_true", help="small inputs and batches: seconds on a CPU")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip what would start after this (default 480)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device here; run it on a GPU machine, or with --device cpu --tiny", file=sys.stderr)
            return 2
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels in the warm-up
    torch.manual_seed(0)
    text = markdown(run(device, TINY if args.tiny else FULL, args.budget_s), device, args.tiny)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
