"""`cls model-info NAME [--resolution R] [key=value ...]`: parameters, MACs and batch-1 latency as a table;
`--paper` sets seed 003 Table 4 beside ours."""

from __future__ import annotations

import argparse
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.table import Table

from cls.models import build_model, list_models
from cls.models.complexity import Complexity, measure

# Seed 003, Table 4 (CUB-200-2011, 448 px): "FLOPs" (which are MACs) in 1e9, inference ms, parameters in M.
# "+ MA" follows Table 3's order, where the improved pool comes in before MA.
PAPER_TABLE_4 = [
    ("ResNet50", dict(multiscale_pool=False, ma=False, ea=False), 16.5, 26.4, 22.4),
    ("+ MA", dict(multiscale_pool=True, ma=True, ea=False), 18.5, 33.1, 24.6),
    ("+ MA + EA", dict(multiscale_pool=True, ma=True, ea=True), 19.8, 35.6, 25.8),
]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` pairs; values are read as YAML (true, 0.5, [2, 4, 8], null)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. ma=false theta=0.5)")
        out[key] = yaml.safe_load(value)
    return out


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="parameters, MACs and latency of a model", description=__doc__)
    p.add_argument("model", nargs="?", help=f"one of: {', '.join(list_models())}")
    p.add_argument("overrides", nargs="*", help="model options as key=value, e.g. num_classes=200 ma=false")
    p.add_argument("--resolution", type=int, default=448, help="square input size in px (default 448)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    p.add_argument("--repeats", type=int, default=20, help="timed forward passes; the median is reported")
    p.add_argument("--no-latency", action="store_true", help="count parameters and MACs only")
    p.add_argument("--paper", action="store_true", help="seed 003 Table 4 beside ours (fg_resnet50 variants)")
    p.set_defaults(run=run)


def _measure(name: str, options: dict[str, Any], args: argparse.Namespace, device: str) -> Complexity:
    model = build_model(name, **options)
    return measure(model, args.resolution, device=device, latency=not args.no_latency, repeats=args.repeats)


def _ms(c: Complexity) -> str:
    return "-" if c.latency_ms is None else f"{c.latency_ms:.1f}"


def run(args: argparse.Namespace) -> int:
    if args.model and "=" in args.model:  # `cls model-info --paper ma_reduction=8`: no name, only overrides
        args.overrides.insert(0, args.model)
        args.model = None
    overrides = parse_overrides(args.overrides)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    where = f"{args.resolution}x{args.resolution} px, batch 1, {device}"
    console = Console(width=max(Console().width, 120))  # the tables are wider than a pipe's default 80

    if args.paper:
        if args.model not in (None, "fg_resnet50"):
            raise ValueError("--paper compares with seed 003 Table 4, which covers fg_resnet50 only")
        table = Table(title=f"Seed 003 Table 4 vs cls ({where})")
        for col in ("model", "GMACs", "paper", "params (M)", "paper", "ms", "paper"):
            table.add_column(col, justify="left" if col == "model" else "right")
        base = None
        for label, variant, p_macs, p_ms, p_params in PAPER_TABLE_4:
            c = _measure("fg_resnet50", {**overrides, **variant}, args, device)
            base = base or c.macs
            table.add_row(
                label,
                f"{c.macs / 1e9:.2f} ({c.macs / base:.3f}x)",
                f"{p_macs:.1f} ({p_macs / PAPER_TABLE_4[0][2]:.3f}x)",
                f"{c.params / 1e6:.2f}",
                f"{p_params:.1f}",
                _ms(c),
                f"{p_ms:.1f}",
            )
        console.print(table)
        console.print("paper: RTX 3090; its 'FLOPs' are multiply-accumulates, as are our MACs")
        return 0

    if not args.model:
        raise ValueError(f"name a model (one of: {', '.join(list_models())}) or pass --paper")
    c = _measure(args.model, overrides, args, device)
    table = Table(title=f"{args.model} ({where})")
    for col in ("model", "params (M)", "GMACs", "latency (ms)"):
        table.add_column(col, justify="left" if col == "model" else "right")
    label = " ".join([args.model, *args.overrides])
    table.add_row(label, f"{c.params / 1e6:.2f}", f"{c.macs / 1e9:.3f}", _ms(c))
    console.print(table)
    return 0
