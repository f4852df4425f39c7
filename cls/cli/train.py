"""`cls train [experiment=NAME] [overrides]`: one training run on Ray Train (a local Ray cluster, or the
running one when RAY_ADDRESS is set). Overrides use Hydra's syntax: model.tau=0.5 trainer.epochs=3."""

from __future__ import annotations

import argparse
from typing import Any

from cluster.local import add_insecure_flag, check_auth_mode


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="one training run (Ray Train DDP)", description=__doc__)
    p.add_argument("overrides", nargs="*", help="e.g. experiment=dnffm_cifar10 data.root=/data/cifar10 trainer.epochs=3")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--local", action="store_true", help="train in this process (one rank, no Ray): for debugging")
    add_insecure_flag(p)
    p.set_defaults(run=run)


def resolve(overrides: list[str]) -> dict[str, Any]:
    """The resolved config; Hydra's and OmegaConf's errors become one ValueError that says what is wrong."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from cls.train.config import compose_config, to_container

    try:
        return to_container(compose_config(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        cause = f" ({e.__cause__})".replace("\n", " ") if e.__cause__ else ""
        unclosed = [o for o in overrides if _unbalanced(o)]
        if unclosed:
            raise ValueError(f"bad override {unclosed[0]!r}: its brackets or quotes are not closed ({e}); close them, "
                             f"e.g. key=[1,2]".replace("\n", " ")) from None
        raise ValueError(f"bad config: {e}{cause}".replace("\n", " ")) from None


def _unbalanced(override: str) -> bool:
    value = override.split("=", 1)[-1]
    pairs = {"]": "[", "}": "{", ")": "("}
    stack: list[str] = []
    for ch in value:
        if ch in "[{(":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return True
    return bool(stack) or value.count("'") % 2 == 1 or value.count('"') % 2 == 1


def run(args: argparse.Namespace) -> int:
    import yaml

    if not args.local and not args.print_config:
        check_auth_mode(args.insecure_no_auth)  # before anything starts
    from cls.preflight import check_run
    from cls.train.run import absolute_paths

    cfg = resolve(args.overrides)
    if args.print_config:
        print(yaml.safe_dump(cfg, sort_keys=False))
        return 0
    check_run(absolute_paths(cfg))  # every value, path and the dataset, before Ray starts
    if args.local:
        import sys

        from cls.train.loop import fit
        from cls.train.run import absolute_paths, ensure_data, run_dir
        from cls.train.sessions import LocalSession

        cfg = absolute_paths(cfg)
        ensure_data(cfg)
        cfg["trainer"]["progress"] = cfg["trainer"]["progress"] or sys.stdout.isatty()
        directory = run_dir(cfg)
        metrics = fit(cfg, LocalSession(directory), directory)
    else:
        import sys

        from ray.train import TrainingFailedError

        from cls.train.run import train

        try:
            result = train(cfg, insecure_no_auth=args.insecure_no_auth)
        except TrainingFailedError as e:
            # The workers' own error (with their traceback snippet) is what to read, not the driver's stack.
            print(f"cls train: training failed: {e}", file=sys.stderr)
            return 1
        directory, metrics = result.run_dir, result.metrics
    print(f"run: {directory}")
    shown = {k: v for k, v in metrics.items() if k.startswith("eval_") or k in ("epoch", "train_loss")}
    print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
    return 0
