"""Parameters, MACs and batch-1 latency of the paper models, as markdown rows for docs/benchmarks.md.

    python bench/model_complexity.py [--device cuda] [--repeats 30]

Latency is the median of `--repeats` eval-mode forward passes after 3 warm-up passes.
"""

from __future__ import annotations

import argparse
import platform

import torch

from cls.models import build_model
from cls.models.complexity import measure

ROWS = [
    # label, model, options, resolution, paper (GMACs, ms, M params) or None
    ("ResNet-50", "fg_resnet50", dict(multiscale_pool=False, ma=False, ea=False), 448, (16.5, 26.4, 22.4)),
    ("ResNet-50 + pool + MA", "fg_resnet50", dict(ma=True, ea=False), 448, (18.5, 33.1, 24.6)),
    ("ResNet-50 + pool + MA + EA", "fg_resnet50", dict(), 448, (19.8, 35.6, 25.8)),
    ("ResNet-50 + pool + MA + EA (ea_rerun=full)", "fg_resnet50", dict(ea_rerun="full"), 448, None),
    ("DNFFM R50+D121, 32 px, cifar_stem", "dnffm", dict(small_input="cifar_stem"), 32, None),
    ("DNFFM R50+D121, 32 px, upsample to 224", "dnffm", dict(small_input="upsample"), 32, None),
    ("DNFFM R50+D121, 224 px", "dnffm", dict(), 224, None),
    ("ResNet-50 (single), 32 px, cifar_stem", "resnet50", dict(small_input="cifar_stem"), 32, None),
    ("DenseNet-121 (single), 32 px, cifar_stem", "densenet121", dict(small_input="cifar_stem"), 32, None),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {args.device} ({where}), batch 1\n")
    print("| model | px | GMACs | x base | paper GMACs (x) | params M | paper M | ms | paper ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = None
    for label, name, options, res, paper in ROWS:
        c = measure(build_model(name, **options), res, device=args.device, repeats=args.repeats)
        if base is None:
            base = c.macs
        ratio = f"{c.macs / base:.3f}" if name == "fg_resnet50" else ""
        p = ("-", "-", "-") if paper is None else (f"{paper[0]} ({paper[0] / ROWS[0][4][0]:.3f})", paper[2], paper[1])
        print(f"| {label} | {res} | {c.macs / 1e9:.2f} | {ratio} | {p[0]} | {c.params / 1e6:.2f} | {p[1]} | {c.latency_ms:.1f} | {p[2]} |")


if __name__ == "__main__":
    main()
