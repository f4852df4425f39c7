"""`cls stylize train|apply|score`: seed 002's fast-style-transfer augmentation.

  cls stylize train --content DIR --style IMAGE --out wave.pt [--steps N] [--size 256] [--batch-size 4] [--random-vgg]
  cls stylize apply SRC_ROOT --out OUT --style wave.pt           (one style for every class)
  cls stylize apply SRC_ROOT --out OUT --style cat=wave.pt --style dog=abstract.pt
  cls stylize score SRC_ROOT [--classifier vgg16_transfer] --weights RUN_DIR|model.pt
        --style wave=wave.pt --style abstract=abstract.pt [key=value ...]   (one command)
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="train style networks, style a dataset, choose styles with Grad-CAM",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="stylize_command", required=True, metavar="ACTION")

    t = actions.add_parser("train", help="train a style network (seed 002 §2-3)")
    t.add_argument("--content", required=True,
                   help="folder of content images, searched recursively (the paper: COCO; keep out val/test images)")
    t.add_argument("--style", required=True, help="the style image")
    t.add_argument("--out", required=True, help="checkpoint to write, e.g. wave.pt")
    t.add_argument("--steps", type=int, default=20_000, help="iterations (default %(default)s, §3)")
    t.add_argument("--size", type=int, default=256, help="content crop size (default %(default)s, §3)")
    t.add_argument("--batch-size", type=int, default=4, help="default %(default)s (§3)")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default %(default)s)")
    t.add_argument("--content-weight", type=float, default=1.0, help="default %(default)s")
    t.add_argument("--style-weight", type=float, default=1e5, help="default %(default)s")
    t.add_argument("--tv-weight", type=float, default=0.0, help="total-variation weight (default %(default)s)")
    t.add_argument("--channels", type=int, default=32, help="style network width (default %(default)s)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default %(default)s)")
    t.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    t.add_argument("--random-vgg", action="store_true",
                   help="a random VGG-19 loss network, to try the pipeline without ImageNet weights (§2.2 needs them)")
    t.set_defaults(run=run_train)

    a = actions.add_parser("apply", help="a new dataset with styled copies of the train images (§4.3)")
    a.add_argument("src", metavar="SRC_ROOT", help="a prepared jpeg dataset")
    a.add_argument("--out", required=True, help="the new prepared dataset's directory")
    a.add_argument("--style", action="append", required=True, metavar="[CLASS=]CKPT",
                   help="one checkpoint for all classes, or CLASS=CKPT per class (repeat)")
    a.add_argument("--size", type=int, default=None,
                   help="style at SIZExSIZE and resize back (the paper: 224); default: at each image's own size")
    a.add_argument("--fraction", type=float, default=1.0, help="style this seeded fraction of each class (default 1)")
    a.add_argument("--batch-size", type=int, default=8)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", default="auto")
    a.add_argument("--split-order", choices=("paper", "clean"), default="clean",
                   help="paper: style every image, then split the copies 6:2:2 (seed 002 §4.3); clean: style "
                   "train only (default %(default)s)")
    a.set_defaults(run=run_apply)

    s = actions.add_parser("score", help="Grad-CAM score of each style per class, and the best (§4.1)")
    s.add_argument("src", metavar="SRC_ROOT", help="a prepared jpeg dataset")
    s.add_argument("overrides", nargs="*", help="classifier options as key=value, e.g. hidden=256")
    s.add_argument("--classifier", default=None,
                   help="registered model name, e.g. vgg16_transfer (default: the one a training checkpoint names)")
    s.add_argument("--weights", required=True,
                   help="its state dict, a training checkpoint with key 'model', or a `cls train` run directory")
    s.add_argument("--style", action="append", required=True, metavar="NAME=CKPT", help="a style to score (repeat)")
    s.add_argument("--split", default="val", help="split whose images are scored (default %(default)s)")
    s.add_argument("--max-per-class", type=int, default=50, help="default %(default)s")
    s.add_argument("--size", type=int, default=224, help="images resized to SIZExSIZE (default %(default)s, §4.1)")
    s.add_argument("--threshold", type=float, default=0.5, help="normalised Grad-CAM level counted as covered")
    s.add_argument("--target-layer", default=None, help="dotted module name (default: the final feature map)")
    s.add_argument("--no-normalize", action="store_true",
                   help="feed [0, 1] images (default: the checkpoint's data.transforms mean/std, else ImageNet's)")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.set_defaults(run=run_score)


def run_train(args: argparse.Namespace) -> int:
    from cls.data.stylize import train_style_network
    from cls.models import PretrainedWeightsMissing

    try:
        terms = train_style_network(
            args.content, args.style, args.out,
            size=args.size, batch_size=args.batch_size, steps=args.steps, lr=args.lr,
            content_weight=args.content_weight, style_weight=args.style_weight, tv_weight=args.tv_weight,
            channels=args.channels, device=_device(args.device), pretrained_vgg=not args.random_vgg,
            seed=args.seed, num_workers=args.workers, progress=True,
        )  # fmt: skip
    except PretrainedWeightsMissing as e:
        # cls's main prints the message as is; keep it to the first line (which names the file) + the way out.
        first = str(e).splitlines()[0]
        raise PretrainedWeightsMissing(
            f"the perceptual loss needs ImageNet VGG-19 weights: {first} "
            f"See README 'Pretrained weights' to fetch them, or pass --random-vgg to try the pipeline."
        ) from None
    print(
        f"{args.out}: {args.steps} steps, loss {terms['initial_loss']:.4g} -> {terms['loss']:.4g} "
        f"(content {terms['content']:.4g}, style {terms['style']:.4g})"
    )
    return 0


def parse_styles(items: list[str], *, named: bool) -> dict[str, str] | str:
    """--style values: NAME=PATH pairs (`named`), or for apply also one bare PATH for every class."""
    if not named and len(items) == 1 and ("=" not in items[0] or Path(items[0]).is_file()):
        return items[0]
    out: dict[str, str] = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            what = "NAME=CKPT" if named else "CLASS=CKPT (or a single CKPT for all classes)"
            raise ValueError(f"--style {item!r} is not of the form {what}")
        if key in out:
            raise ValueError(f"--style names {key!r} twice")
        out[key] = path
    return out


def run_apply(args: argparse.Namespace) -> int:
    from cls.data.augment import split_counts
    from cls.data.stylize import stylize_dataset

    styles = parse_styles(args.style, named=False)
    try:
        manifest = stylize_dataset(
            args.src, args.out, styles, size=args.size, fraction=args.fraction, batch_size=args.batch_size,
            seed=args.seed, device=_device(args.device), progress=True, split_order=args.split_order,
        )  # fmt: skip
    except FileExistsError as e:
        raise ValueError(str(e)) from e
    used = ", ".join(f"{c}: {Path(s['checkpoint']).name}" for c, s in manifest.source["styles"].items())
    counts = ", ".join(f"{split} {n}" for split, n in split_counts(manifest).items())
    print(f"{args.out}: {manifest.name} with styled copies ({used}, split order {args.split_order}): {counts}")
    return 0


def load_classifier(name: str | None, weights: str, overrides: dict[str, Any]) -> tuple[str, Any, dict[str, Any]]:
    """(name, model, the checkpoint's config or {}): build_model(name, pretrained=False, **overrides) with
    `weights` loaded.

    `weights` is a state dict, a training checkpoint {"model", "optimizer", ..., "config"}
    (cls.train.checkpoint) or a run directory holding one. A checkpoint's config.model (name and options
    it was trained with) is the default for `name` and the base under `overrides`.
    """
    import torch

    from cls.models import build_model, model_options
    from cls.models.registry import get_entry
    from cls.train.checkpoint import CHECKPOINT_FILE

    path = Path(weights)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"classifier weights {path} do not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    config: dict[str, Any] = {}
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # a training checkpoint
        config = state.get("config") or {}
        state = state["model"]
    trained = dict(config.get("model") or {})
    name = name or trained.get("name")
    if name is None:
        raise ValueError(f"{path} does not name its model (no config.model.name): pass --classifier NAME")
    if get_entry(name).task != "classification":
        raise ValueError(f"{name} is not a classifier")
    options = {k: v for k, v in trained.items() if k != "name"} if trained.get("name") == name else {}
    options.update(overrides)
    if "pretrained" in model_options(name) and "pretrained" not in overrides:
        options["pretrained"] = False  # the weights file replaces ImageNet's; nothing to fetch
    model = build_model(name, **options)
    problems = state_dict_mismatch(model.state_dict(), state)
    if problems:
        raise ValueError(
            f"{path} does not fit {name} with options {options}: {problems} "
            f"(pass the options it was trained with as key=value)"
        )
    model.load_state_dict(state)
    return name, model, config


def state_dict_mismatch(expected: dict[str, Any], given: dict[str, Any]) -> str:
    """What keeps `given` from loading where `expected` is, in one line ("" when it fits)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k}: {tuple(given[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and hasattr(given[k], "shape") and tuple(given[k].shape) != tuple(v.shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) (file vs model), e.g. {shapes[0]}")
    return "; ".join(parts)


def run_score(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from cls.cli.model_info import parse_overrides
    from cls.data.layout import read_manifest
    from cls.data.stylize import IMAGENET_MEAN, IMAGENET_STD, best_styles, gradcam_style_scores

    styles = parse_styles(args.style, named=True)
    device = _device(args.device)
    name, classifier, config = load_classifier(args.classifier, args.weights, parse_overrides(args.overrides))
    classifier.to(device)
    trained_classes = (config.get("data") or {}).get("classes")
    classes = read_manifest(args.src).classes
    if trained_classes is not None and list(trained_classes) != list(classes):
        # Labels are class indices: a different class list or order would score the wrong class.
        raise ValueError(f"the classifier was trained on classes {trained_classes}, {args.src} has {classes}")
    # The normalisation the classifier was trained with: its run's data.transforms, else ImageNet's (the
    # default of every cls transform family).
    transforms = (config.get("data") or {}).get("transforms") or {}
    mean = tuple(transforms.get("mean") or IMAGENET_MEAN)  # None: the run kept its family's (ImageNet) values
    std = tuple(transforms.get("std") or IMAGENET_STD)
    if args.no_normalize:
        mean = std = None
    rows = gradcam_style_scores(
        classifier, args.target_layer, args.src, styles,
        split=args.split, max_per_class=args.max_per_class, size=args.size, batch_size=args.batch_size,
        threshold=args.threshold, mean=mean, std=std, device=device, seed=args.seed,
        progress=True,
    )  # fmt: skip
    console = Console(width=max(Console().width, 100))
    where = f"{args.split} split, {args.size}x{args.size} px"
    table = Table(title=f"{name}: Grad-CAM coverage of the true class ({where})")
    for col in ("class", "style", f"score (CAM > {args.threshold})", "p(true class)", "images"):
        table.add_column(col, justify="left" if col in ("class", "style") else "right")
    for r in rows:
        table.add_row(escape(r["class"]), escape(r["style"]), f"{r['score']:.3f}", f"{r['prob']:.3f}", str(r["n"]))
    console.print(table)
    # soft_wrap: lines a user copies (paths, the command) must not be broken at the terminal's width
    norm = "inputs in [0, 1]" if mean is None else f"inputs normalised with mean {mean}, std {std}"
    console.print(norm, soft_wrap=True, markup=False)
    best = best_styles(rows)
    best_line = "best style per class: " + ", ".join(f"{c} -> {s}" for c, s in best.items())
    console.print(best_line, soft_wrap=True, markup=False)
    command = ["cls", "stylize", "apply", args.src, "--out", "OUT"]
    command += [arg for c, s in best.items() for arg in ("--style", f"{c}={styles[s]}")]
    console.print("apply with: " + shlex.join(command), soft_wrap=True, markup=False)
    return 0
