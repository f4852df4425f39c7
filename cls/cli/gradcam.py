"""`cls gradcam CHECKPOINT [CHECKPOINT2] --images IMG... --out DIR`: Grad-CAM heat maps as PNG, two
checkpoints side by side when given two (seed 003 §5 compares the baseline with MA + EA this way)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="Grad-CAM heat maps of checkpoints over images", description=__doc__)
    p.add_argument("checkpoints", nargs="+", help="a checkpoint file or run directory; two to compare")
    p.add_argument("--images", nargs="+", required=True, help="image files")
    p.add_argument("--out", required=True, help="directory for the PNGs")
    p.add_argument("--layer", help="dotted module name to explain (default: the last conv feature map)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cls.explain import write_figures

    for path in write_figures(args.checkpoints, args.images, args.out, layer=args.layer, device=args.device):
        print(path)
    return 0
