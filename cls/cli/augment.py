"""`cls augment SRC_ROOT --policy pan+noise --copies 1 --out OUT`: seed 002's traditional augmentation (Table 2)
as offline expansion of a prepared jpeg dataset. --split-order clean (default): train gets `copies` augmented
copies of each image, val and test are carried over unchanged. --split-order paper (seed 002 §4.3): every image
gets its copies, which are split 6:2:2 like the originals, so augmented images reach val and test."""

from __future__ import annotations

import argparse

from cls.data.augment import OPERATIONS, TABLE_2_POLICIES, AugmentConfig

_DEFAULTS = AugmentConfig()


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="expand a prepared dataset with traditionally augmented copies", description=__doc__)
    p.add_argument("src", metavar="SRC_ROOT", help="a prepared jpeg dataset (cls data prepare)")
    p.add_argument(
        "--policy",
        required=True,
        help=f"operations joined with '+', applied in order: {', '.join(OPERATIONS)} "
        f"(seed 002 Table 2: {', '.join(TABLE_2_POLICIES)})",
    )
    p.add_argument("--out", required=True, help="the new prepared dataset's directory (must not hold another)")
    p.add_argument("--copies", type=int, default=1, help="augmented copies per train image (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-image random draws (default 0)")
    p.add_argument("--split-order", choices=("paper", "clean"), default="clean",
                   help="paper: expand, then split 6:2:2 (seed 002 §4.3); clean: split, then expand train only "
                   "(default %(default)s)")
    g = p.add_argument_group("magnitudes (the paper gives none)")
    g.add_argument("--pan", type=float, default=_DEFAULTS.pan, help="largest shift, fraction of the side (%(default)s)")
    g.add_argument(
        "--crop-scale", type=float, nargs=2, default=_DEFAULTS.crop_scale, metavar=("LOW", "HIGH"),
        help=f"crop area as a fraction of the image's ({' '.join(map(str, _DEFAULTS.crop_scale))})",
    )
    g.add_argument("--rotate", type=float, default=_DEFAULTS.rotate, help="largest rotation in degrees (%(default)s)")
    g.add_argument("--noise", type=float, default=_DEFAULTS.noise_sigma, help="noise σ as a fraction of 255 (%(default)s)")
    g.add_argument("--fill", type=int, default=_DEFAULTS.fill, help="grey value of uncovered pixels (%(default)s)")
    g.add_argument("--quality", type=int, default=_DEFAULTS.jpeg_quality, help="JPEG quality (%(default)s)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cls.data.augment import expand_dataset, split_counts

    config = AugmentConfig(
        pan=args.pan,
        crop_scale=tuple(args.crop_scale),
        rotate=args.rotate,
        noise_sigma=args.noise,
        fill=args.fill,
        jpeg_quality=args.quality,
    )
    try:
        manifest = expand_dataset(args.src, args.out, args.policy, args.copies, args.seed, config=config, progress=True,
                                  split_order=args.split_order)
    except FileExistsError as e:  # the user's to fix, like the errors cls's main reports in one line
        raise ValueError(str(e)) from e
    counts = ", ".join(f"{split} {n}" for split, n in split_counts(manifest).items())
    print(f"{args.out}: {manifest.name} expanded with {args.policy} x{args.copies} (seed {args.seed}, split order "
          f"{args.split_order}): {counts}")
    return 0
