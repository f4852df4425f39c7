"""Everything `cls train` and `cls sweep` check before Ray starts, so that a bad value fails in a second
with one line naming the problem and the fix (exit 2), not inside a worker minutes later:

- the config (`check_config`): seed an integer, trainer.epochs >= 1, workers and keep_checkpoints >= 1, a
  known model and known backbones, the checkpoint metric, a trial id that can be a file name, and every
  value storable with its results-store column type (cls.results.schema);
- the dataset (`check_data`): prepared (digits: prepared here), split with `data.split_seed`, and
  `model.num_classes` equal to the manifest's class count when set;
- the paths (`check_paths`): the results store, the runs directory and the data root are directories (or
  can be made) that this user can write;
- a sweep (`check_trials`): all of that for every trial, and trials that share a data root agree on its
  split seed. Sweep files themselves are checked by cls.sweep.spec (duplicate keys, names, overrides).

Ray failing to start is turned into the same kind of error by cls.train.run.connect_ray.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from cls.results.store import check_name


class PreflightError(ValueError):
    """A value `cls` cannot run with; the message says what is wrong and how to fix it, in one line."""


METRICS = ("train_loss", "train_top1", "eval_loss", "eval_top1", "eval_top5", "eval_precision", "eval_recall",
           "eval_f1", "eval_auroc")


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_config(cfg: dict[str, Any]) -> None:
    """The checks that need no file system (also what `cls sweep --list` runs for every trial)."""
    from cls.models import list_models
    from cls.models.backbones import BACKBONES
    from cls.results.schema import coerce_row, config_types
    from cls.results.writer import flatten_config
    from cls.train.run import run_name

    trainer, model = cfg["trainer"], cfg["model"]
    if not _integer(cfg["seed"]):
        raise PreflightError(f"seed={cfg['seed']!r} is not an integer: set seed to an integer, e.g. seed=0")
    for key, low in (("epochs", 1), ("workers", 1), ("keep_checkpoints", 1)):
        if not _integer(trainer[key]) or trainer[key] < low:
            raise PreflightError(f"trainer.{key}={trainer[key]!r}: it must be an integer >= {low}; "
                                 f"set trainer.{key}={max(low, 1)} or more")
    if trainer["checkpoint_metric"] not in METRICS:
        raise PreflightError(f"trainer.checkpoint_metric={trainer['checkpoint_metric']!r} is not a metric; one of "
                             f"{', '.join(METRICS)}")
    if trainer["checkpoint_mode"] not in ("min", "max"):
        raise PreflightError(f"trainer.checkpoint_mode={trainer['checkpoint_mode']!r}: set it to min or max")
    if not _integer(cfg["data"]["batch_size"]) or cfg["data"]["batch_size"] < 1:
        raise PreflightError(f"data.batch_size={cfg['data']['batch_size']!r}: set it to a positive integer")
    if model["name"] not in list_models():
        raise PreflightError(f"model.name={model['name']!r} is not a model: pick one with model=NAME, one of "
                             f"{', '.join(list_models())}")
    for key, value in model.items():
        if key.startswith("backbone") and isinstance(value, str) and value not in BACKBONES:
            raise PreflightError(f"model.{key}={value!r} is not a backbone: one of {', '.join(BACKBONES)}")
    name = trainer["name"] or run_name(cfg)
    try:
        check_name("trial", name)
    except ValueError as e:
        raise PreflightError(f"the run's name (its trial id) cannot be a file name: {e}; set trainer.name, or use a "
                             f"model.name / data.name without such characters") from None
    try:
        coerce_row("trials", flatten_config(cfg), config_types())
    except ValueError as e:
        raise PreflightError(str(e)) from None


def check_writable(path: str | os.PathLike, what: str, key: str) -> None:
    """`path` is a directory this user can write, or can be created as one."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PreflightError(f"{what} {path} cannot be a directory: {existing} is a file; set {key} to a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise PreflightError(f"{what} {path} is not writable ({e.strerror or e}): set {key} to a directory you can "
                             f"write, or make it writable") from None


def check_paths(cfg: dict[str, Any]) -> None:
    check_writable(cfg["results"]["root"], "the results store", "results.root (or $CLS_RESULTS)")
    check_writable(cfg["trainer"]["storage"], "the runs directory", "trainer.storage (or $CLS_RUNS)")
    root = Path(cfg["data"]["root"])
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() and existing != root:
        raise PreflightError(f"data root {root} cannot exist: {existing} is a file; set data.root to a directory")


def check_data(cfg: dict[str, Any]) -> None:
    """Prepared (digits: here and now), split with data.split_seed, and as many classes as the model has."""
    from cls.data.layout import read_manifest
    from cls.train.run import ensure_data

    ensure_data(cfg)
    manifest = read_manifest(cfg["data"]["root"], cfg["data"]["name"])
    classes = cfg["model"].get("num_classes")
    if classes is not None and cfg.get("task", "classification") == "classification" and classes != len(manifest.classes):
        raise PreflightError(f"model.num_classes={classes} but {cfg['data']['root']} has {len(manifest.classes)} classes: "
                             f"leave model.num_classes unset (it is taken from the dataset) or set it to "
                             f"{len(manifest.classes)}")


def check_run(cfg: dict[str, Any]) -> None:
    """Everything about one run (`cls train`), paths made absolute already."""
    check_config(cfg)
    check_paths(cfg)
    check_data(cfg)


def check_trials(configs: Iterable[dict[str, Any]]) -> None:
    """Everything about a sweep's trials (`cls sweep`), before Ray starts."""
    configs = list(configs)
    for cfg in configs:
        check_config(cfg)
    seen_paths: set[tuple[str, str]] = set()
    split: dict[str, int] = {}
    for cfg in configs:
        key = (cfg["results"]["root"], cfg["trainer"]["storage"])
        if key not in seen_paths:
            seen_paths.add(key)
            check_paths(cfg)
        root = cfg["data"]["root"]
        if split.setdefault(root, cfg["data"]["split_seed"]) != cfg["data"]["split_seed"]:
            raise PreflightError(f"trials read data root {root} with split seeds {split[root]} and "
                                 f"{cfg['data']['split_seed']}: one directory holds one split; give each split "
                                 f"seed its own data.root")
    for cfg in {c["data"]["root"]: c for c in configs}.values():
        check_data(cfg)
