"""`cls data prepare NAME [--src DIR] --out DIR [--download] [--seed N] [--force] [key=value ...]`: a dataset as
its publishers ship it -> the loader-ready layout; `cls data info ROOT [--verify]`: what a prepared dataset holds;
`cls data list`: the datasets `prepare` knows."""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cls.cli.model_info import parse_overrides
from cls.data.layout import Manifest, read_manifest
from cls.data.sources import get_source, list_sources, source_options

MAX_LISTED = 20  # quarantined files printed in a summary; the manifest lists them all
SPLIT_ORDER = ("train", "val", "test", "extra")  # the manifest's JSON keeps its keys sorted


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="prepare datasets and inspect prepared ones", description=__doc__)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    prep = actions.add_parser("prepare", help="write a dataset in the loader-ready layout", description=__doc__)
    prep.add_argument("name", metavar="NAME", help=f"one of: {', '.join(list_sources())}")
    prep.add_argument("overrides", nargs="*", help="dataset options as key=value, e.g. per_class=5000")
    prep.add_argument("--src", type=Path, help="the downloaded dataset (not for digits, which ships with scikit-learn)")
    prep.add_argument("--out", type=Path, required=True, help="the prepared dataset's directory")
    prep.add_argument("--download", action="store_true", help="fetch it into --src with torchvision first")
    prep.add_argument("--seed", type=int, help="seed of the split, for datasets that ship without one")
    prep.add_argument("--force", action="store_true", help="replace what is at --out")
    prep.add_argument("--copy", action="store_true", help="copy images instead of hard-linking them")
    prep.add_argument("--workers", type=int, help="decoding threads (default: Python's thread-pool default)")
    prep.set_defaults(run=run_prepare)

    info = actions.add_parser("info", help="summary of a prepared dataset", description=__doc__)
    info.add_argument("root", metavar="ROOT", type=Path)
    info.add_argument("--verify", action="store_true", help="check every file against the manifest's checksums")
    info.set_defaults(run=run_info)

    listing = actions.add_parser("list", help="the datasets prepare knows, with their options", description=__doc__)
    listing.set_defaults(run=run_list)


@contextmanager
def _log_to_stdout() -> Iterator[None]:
    """prepare reports progress and quarantined files through logging; here they belong on stdout."""
    logger = logging.getLogger("cls")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def run_prepare(args: argparse.Namespace) -> int:
    from cls.data.prepare import prepare  # PIL, scipy and scikit-learn load only when preparing

    options = parse_overrides(args.overrides)
    with _log_to_stdout():
        manifest = prepare(
            args.name,
            args.src,
            args.out,
            seed=args.seed,
            download=args.download,
            force=args.force,
            link=not args.copy,
            workers=args.workers,
            **options,
        )
    print(summary(manifest, args.out))
    return 0


def run_info(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.root)
    print(summary(manifest, args.root))
    if args.verify:
        from cls.data.prepare import verify

        problems = verify(args.root)
        for problem in problems:
            print(f"  {problem}")
        print(f"verify: {len(problems)} problem(s)" if problems else "verify: every checksum matches")
        return 1 if problems else 0
    return 0


def run_list(args: argparse.Namespace) -> int:
    for name in list_sources():
        source = get_source(name)
        options = " ".join(f"{k}={v!r}" for k, v in source_options(name).items())
        family = getattr(source, "family", "option")
        print(f"{name:14} {source.kind:5} {family:12} {options}")
        print(f"{'':14} {source.homepage}")
    return 0


def summary(manifest: Manifest, root: Path) -> str:
    """A few lines a researcher reads: counts per split, classes, options, quarantined files and why."""
    classes = ", ".join(manifest.classes[:8]) + (", ..." if len(manifest.classes) > 8 else "")
    lines = [
        f"{manifest.name} at {root}: {manifest.kind} kind, {manifest.family} transforms, "
        f"{len(manifest.classes)} classes ({classes})",
        f"  source: {manifest.source.get('src') or 'embedded'}  options: {manifest.source.get('options') or {}}",
    ]
    for split in sorted(manifest.splits, key=lambda s: (SPLIT_ORDER + (s,)).index(s)):
        info = manifest.splits[split]
        per_class = f"{min(info.per_class)}..{max(info.per_class)} per class" if info.per_class else ""
        lines.append(f"  {split:6} {info.count:8d} images  {per_class}")
    if manifest.quarantined:
        lines.append(f"  quarantined: {len(manifest.quarantined)} file(s), never loaded:")
        lines += [f"    {q['path']}: {q['reason']}" for q in manifest.quarantined[:MAX_LISTED]]
        if len(manifest.quarantined) > MAX_LISTED:
            lines.append(f"    ... and {len(manifest.quarantined) - MAX_LISTED} more in {Path(root) / 'manifest.json'}")
    return "\n".join(lines)
