"""Sweep files: what a sweep varies, checked before anything runs, and expanded into its trials.

A sweep file (sweeps/*.yaml) holds only what differs from an `experiment/` preset, plus its axes:

    experiment: dnffm_digits            # the preset every trial starts from
    overrides: [trainer.epochs=3]       # Hydra overrides for every trial
    axes:                               # one dimension of the Ray Tune search space each
      model.tau: {grid: [0.5, 1.0]}     # grid | choice: lists; uniform | loguniform | randint: [low, high]
      backbones:                        # a named axis whose values set several keys at once
        pairs: [resnet50, densenet121, vgg16]
        keys: [model.backbone1, model.backbone2]
      seed: {grid: [0, 1]}
    metric: eval_top1                   # what the sweep optimises (and ASHA compares), and how
    mode: max
    samples: 1                          # draws of the choice / range axes per grid point
    scheduler: {asha: {grace_period: 1, reduction_factor: 2}}   # optional early stopping
    resources: {workers: 2, cpus_per_worker: 1, gpus_per_worker: 0, max_concurrent: 1}
    derive: [...]                       # optional: datasets the trials read, built first (derive.py)

An axis named after a Hydra group (`model`, `data`, `experiment`) picks that group's option. Choice and range
axes are drawn by Tune's own variant generator with the sweep's `seed`, so a sweep file always expands to the
same trials; each trial's id is the run name of its resolved config (`cls.train.run.run_name`), so the same
trial has the same id, checkpoints and rows in every sweep and on every machine.

Every error names the file and line at fault: an unknown key or axis, an empty grid, a bad range, a value the
config rejects. All of it is checked by composing the real config, before a single trial starts.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from cls.preflight import PreflightError, check_config
from cls.results.store import check_name

KINDS = ("grid", "choice", "pairs", "uniform", "loguniform", "randint")
GROUPS = ("experiment", "model", "data", "optim", "trainer", "style", "results")
# What `fit` reports each epoch (cls.train.loop); the metric of a sweep is one of these.
METRICS = ("train_loss", "train_top1", "eval_loss", "eval_top1", "eval_top5", "eval_precision", "eval_recall",
           "eval_f1", "eval_auroc")
_TOP_KEYS = {"name", "description", "experiment", "overrides", "axes", "metric", "mode", "samples", "seed",
             "scheduler", "resources", "derive"}
_RESOURCES = {"workers": int, "cpus_per_worker": float, "gpus_per_worker": float, "max_concurrent": int}
_ASHA = {"grace_period": int, "reduction_factor": float, "max_t": int}


class SweepError(ValueError):
    """A sweep file (or an override of it) that cannot run; the message names the file and line."""


@dataclass(frozen=True)
class Axis:
    name: str
    kind: str  # one of KINDS
    values: tuple[Any, ...] = ()  # grid / choice / pairs: each a scalar, or a {key: value} mapping
    low: float | None = None  # uniform / loguniform / randint
    high: float | None = None
    keys: tuple[str, ...] = ()  # pairs: the two keys each pair sets

    def tune_domain(self) -> Any:
        """This axis as a Ray Tune search-space entry."""
        from ray import tune

        if self.kind in ("grid", "pairs"):
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "randint":
            return tune.randint(int(self.low), int(self.high))
        return getattr(tune, self.kind)(self.low, self.high)


@dataclass(frozen=True)
class Resources:
    workers: int | None = None  # Ray Train workers per trial (DDP ranks); None: the experiment's
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None
    max_concurrent: int = 1  # trials at once

    def overrides(self) -> list[str]:
        fields = {"workers": self.workers, "cpus_per_worker": self.cpus_per_worker,
                  "gpus_per_worker": self.gpus_per_worker}
        return [f"trainer.{k}={v}" for k, v in fields.items() if v is not None]


@dataclass(frozen=True)
class Asha:
    grace_period: int = 1  # epochs every trial runs before it can be stopped
    reduction_factor: float = 2.0
    max_t: int | None = None  # default: the trials' trainer.epochs


@dataclass
class Sweep:
    name: str
    path: Path
    experiment: str | None
    overrides: list[str]
    axes: list[Axis]
    metric: str = "eval_top1"
    mode: str = "max"
    samples: int = 1
    seed: int = 0
    scheduler: Asha | None = None
    resources: Resources = field(default_factory=Resources)
    derive: list = field(default_factory=list)  # [(kind, options)]: derived datasets to build first (derive.py)
    where: _Where | None = field(default=None, repr=False)  # file:line of each key, for errors


@dataclass
class Trial:
    trial_id: str
    overrides: list[str]  # everything composed into this trial's config, in order
    axes: dict[str, Any]  # axis name -> this trial's value, as `label` writes it
    config: dict[str, Any]  # the resolved config


# --------------------------------------------------------------------------------------------------- reading


def load_sweep(path: str | Path, overrides: Iterable[str] = ()) -> Sweep:
    """Read and check `path`. `overrides`: `sweep.KEY=VALUE` changes the file's own fields (sweep.samples=2,
    sweep.resources.max_concurrent=2, sweep.axes.seed.grid=[0,1,2]); anything else is a Hydra override
    added to every trial (trainer.epochs=1)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: no such sweep file (the sweeps that ship are in sweeps/*.yaml)")
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.load(text, Loader=_UniqueKeys)
    except _DuplicateKey as e:
        raise SweepError(f"{path}:{e.line}: key {e.key!r} appears twice (also on line {e.first}); YAML would "
                         f"silently keep the last: keep one") from None
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}:1: a sweep file is a mapping with at least `axes`")
    lines = _lines(node)
    where = _Where(path, lines)

    trial_overrides = []
    for item in overrides:
        if item.startswith("sweep."):
            _set_dotted(data, item[len("sweep."):], where)
            where.overridden.add(item.split("=", 1)[0][len("sweep."):])
        else:
            trial_overrides.append(item)
    return _parse(data, where, trial_overrides)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int) -> None:
        self.key, self.line, self.first = key, line, first


class _UniqueKeys(yaml.SafeLoader):
    """yaml.safe_load, but a key given twice in one mapping is an error, not the last one winning."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _DuplicateKey(key, line, seen[key])
            seen.setdefault(key, line) if isinstance(key, (str, int, float, bool)) else None
        return super().construct_mapping(node, deep)


_UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeys.construct_mapping)


@dataclass
class _Where:
    """Turns a key path of the file into `file:line` for error messages."""

    path: Path
    lines: dict[tuple, int]
    overridden: set[str] = field(default_factory=set)

    def __call__(self, *keys: Any) -> str:
        dotted = ".".join(str(k) for k in keys)
        if any(dotted == o or dotted.startswith(o + ".") or o.startswith(dotted + ".") for o in self.overridden):
            return f"{self.path} (override sweep.{dotted})"
        for n in range(len(keys), 0, -1):
            if keys[:n] in self.lines:
                return f"{self.path}:{self.lines[keys[:n]]}"
        return f"{self.path}:1"

    def error(self, keys: tuple, message: str) -> SweepError:
        return SweepError(f"{self(*keys)}: {message}")


def _lines(node: yaml.Node | None, prefix: tuple = ()) -> dict[tuple, int]:
    """Key path -> 1-based line of every mapping key and sequence item in a composed YAML document."""
    found: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = (*prefix, key.value)
            found[path] = key.start_mark.line + 1
            found.update(_lines(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found[(*prefix, i)] = item.start_mark.line + 1
            found.update(_lines(item, (*prefix, i)))
    return found


def _set_dotted(data: dict, assignment: str, where: _Where) -> None:
    if "=" not in assignment:
        raise SweepError(f"override sweep.{assignment}: expected sweep.KEY=VALUE")
    key, value = assignment.split("=", 1)
    target = data
    parts = key.split(".")
    # Axis names contain dots (model.tau): the longest existing key at each level wins.
    while len(parts) > 1:
        for n in range(len(parts) - 1, 0, -1):
            head = ".".join(parts[:n])
            if isinstance(target.get(head), dict):
                target, parts = target[head], parts[n:]
                break
        else:
            head = ".".join(parts[:-1])
            target = target.setdefault(head, {})
            parts = parts[-1:]
    try:
        target[parts[0]] = yaml.safe_load(value)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or " ".join(str(e).split())
        raise SweepError(f"override sweep.{key}={value}: not a valid value ({problem}); close its brackets and "
                         f"quotes, e.g. sweep.axes.seed.grid=[0,1]") from None


def _parse(data: dict, where: _Where, cli_overrides: list[str]) -> Sweep:
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise where.error((unknown[0],), f"unknown key {unknown[0]!r}; a sweep file has {sorted(_TOP_KEYS)}")
    experiment = data.get("experiment")
    if experiment is not None and not isinstance(experiment, str):
        raise where.error(("experiment",), "experiment must be the name of a preset in cls/configs/experiment/")
    overrides = data.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise where.error(("overrides",), "overrides must be a list of Hydra overrides like `trainer.epochs=3`")

    axes_data = data.get("axes")
    if not isinstance(axes_data, dict) or not axes_data:
        raise where.error(("axes",), "a sweep needs `axes`: a mapping of axis name -> {grid: [...]} (or choice, "
                                     "pairs, uniform, loguniform, randint)")
    axes = [_axis(name, spec, where) for name, spec in axes_data.items()]

    metric, mode = data.get("metric", "eval_top1"), data.get("mode", "max")
    if metric not in METRICS:
        raise where.error(("metric",), f"unknown metric {metric!r}; one of {list(METRICS)}")
    if mode not in ("min", "max"):
        raise where.error(("mode",), f"mode must be min or max, got {mode!r}")
    samples, seed = data.get("samples", 1), data.get("seed", 0)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise where.error(("samples",), f"samples must be a positive integer, got {samples!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise where.error(("seed",), f"seed must be an integer, got {seed!r}")
    name = str(data.get("name") or where.path.stem)
    try:
        check_name("sweep", name)
    except ValueError as e:
        raise where.error(("name",), f"{e}; set `name:` in the file or sweep.name=...") from None
    from .derive import parse as parse_derive

    derive = parse_derive(data.get("derive"), where.error)
    return Sweep(
        name=name, path=where.path, experiment=experiment, derive=derive,
        overrides=[*overrides, *cli_overrides], axes=axes, metric=metric, mode=mode, samples=samples, seed=seed,
        scheduler=_scheduler(data.get("scheduler"), where), resources=_resources(data.get("resources"), where),
        where=where,
    )


def _axis(name: Any, spec: Any, where: _Where) -> Axis:
    at = ("axes", name)
    if not isinstance(name, str) or not name:
        raise where.error(at, f"axis name must be a config key or a label, got {name!r}")
    if not isinstance(spec, dict):
        raise where.error(at, f"axis {name!r}: expected a mapping like {{grid: [...]}}, got {spec!r}")
    kinds = [k for k in spec if k in KINDS]
    extra = sorted(set(spec) - set(KINDS) - ({"keys"} if "pairs" in spec else set()))
    if len(kinds) != 1 or extra:
        raise where.error(at, f"axis {name!r}: give exactly one of {list(KINDS)} (found {sorted(spec)})")
    kind = kinds[0]
    value = spec[kind]
    if kind in ("grid", "choice", "pairs"):
        if not isinstance(value, list) or not value:
            raise where.error((*at, kind), f"axis {name!r}: {kind} is empty; list at least one value")
        if len({_freeze(v) for v in value}) != len(value):
            raise where.error((*at, kind), f"axis {name!r}: {kind} lists a value twice: {value}")
        if kind == "pairs":
            keys = spec.get("keys")
            if not (isinstance(keys, list) and len(keys) == 2 and all(isinstance(k, str) for k in keys)):
                raise where.error(at, f"axis {name!r}: pairs needs `keys: [KEY1, KEY2]`, the keys each pair sets")
            if len(value) < 2:
                raise where.error((*at, kind), f"axis {name!r}: pairs needs at least two values")
            pairs = tuple({keys[0]: a, keys[1]: b} for a, b in itertools.combinations(value, 2))
            return Axis(name, kind, pairs, keys=tuple(keys))
        for i, v in enumerate(value):
            if isinstance(v, dict) and not all(isinstance(k, str) for k in v):
                raise where.error((*at, kind, i), f"axis {name!r}: a mapping value sets config keys (strings)")
        return Axis(name, kind, tuple(value))
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise where.error((*at, kind), f"axis {name!r}: {kind} takes [low, high] numbers, got {value!r}")
    low, high = value
    if not low < high:
        raise where.error((*at, kind), f"axis {name!r}: {kind} range [{low}, {high}] is empty: low must be < high")
    if kind == "loguniform" and low <= 0:
        raise where.error((*at, kind), f"axis {name!r}: loguniform needs low > 0, got {low}")
    if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
        raise where.error((*at, kind), f"axis {name!r}: randint takes integers [low, high), got {value!r}")
    return Axis(name, kind, low=low, high=high)


def _scheduler(spec: Any, where: _Where) -> Asha | None:
    if spec in (None, "none", "fifo"):
        return None
    if not (isinstance(spec, dict) and list(spec) == ["asha"]):
        raise where.error(("scheduler",), f"scheduler must be none or {{asha: {{...}}}}, got {spec!r}")
    options = spec["asha"] or {}
    if not isinstance(options, dict):
        raise where.error(("scheduler", "asha"), "asha takes a mapping of " + ", ".join(_ASHA))
    for key, value in options.items():
        if key not in _ASHA:
            raise where.error(("scheduler", "asha", key), f"unknown asha option {key!r}; one of {list(_ASHA)}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise where.error(("scheduler", "asha", key), f"asha {key} must be a positive number, got {value!r}")
    if options.get("reduction_factor", 2) <= 1:
        raise where.error(("scheduler", "asha", "reduction_factor"), "asha reduction_factor must be > 1")
    return Asha(**{k: _ASHA[k](v) for k, v in options.items()})


def _resources(spec: Any, where: _Where) -> Resources:
    if spec is None:
        return Resources()
    if not isinstance(spec, dict):
        raise where.error(("resources",), f"resources takes a mapping of {list(_RESOURCES)}")
    for key, value in spec.items():
        if key not in _RESOURCES:
            raise where.error(("resources", key), f"unknown resource {key!r}; one of {list(_RESOURCES)}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (
                _RESOURCES[key] is int and (value < 1 or value != int(value))):
            raise where.error(("resources", key), f"resources.{key} must be a "
                              f"{'positive integer' if _RESOURCES[key] is int else 'number >= 0'}, got {value!r}")
    return Resources(**{k: _RESOURCES[k](v) for k, v in spec.items()})


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


# --------------------------------------------------------------------------------------------------- expanding


def override(key: str, value: Any) -> str:
    """`key=value` in Hydra's override syntax, quoting strings that Hydra would otherwise parse."""
    return f"{key}={_hydra_value(value)}"


def _hydra_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                          ("inf" if value > 0 else "-inf"))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def axis_settings(axis: Axis, value: Any) -> list[tuple[str, Any]]:
    """The (key, value) pairs that set `axis` to `value`; a key in GROUPS picks that group's option."""
    return list(value.items()) if isinstance(value, dict) else [(axis.name, value)]


def axis_overrides(axis: Axis, value: Any) -> list[str]:
    """The same as Hydra overrides (what `cls train` takes to run the trial alone)."""
    return [f"{k}={v}" if k in GROUPS else override(k, v) for k, v in axis_settings(axis, value)]


def label(axis: Axis, value: Any) -> Any:
    """An axis value as one results-table cell: a pair is "a+b", other mappings "key=value,..." (last part
    of each key), plain values stay as they are."""
    if not isinstance(value, dict):
        return value
    if axis.kind == "pairs":
        return "+".join(str(v) for v in value.values())
    return ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in value.items())


def base_overrides(sweep: Sweep) -> list[str]:
    """What every trial composes before its axes: the preset, the file's overrides, the resources."""
    return [*([f"experiment={sweep.experiment}"] if sweep.experiment else []), *sweep.overrides,
            *sweep.resources.overrides(),
            # Which checkpoint is the best (kept beside the last few) is the sweep's metric.
            f"trainer.checkpoint_metric={sweep.metric}", f"trainer.checkpoint_mode={sweep.mode}"]


def expand(sweep: Sweep) -> list[Trial]:
    """The sweep's trials, in a fixed order: Tune's variant generator over the axes (grid points x `samples`
    draws of the random axes, seeded), each composed into its resolved config. Fails, naming the line, on
    an axis or override the config rejects, and on two grid points that make the same trial."""
    from ray.tune.search.variant_generator import generate_variants

    from cls.train.run import run_name

    where = sweep.where
    compose = _Composer(base_overrides(sweep), where)
    compose([], None, "the sweep's experiment and overrides")
    # Each value of each axis first, with the other axes' group choices at their first value: an error then
    # names its axis and line, not a whole trial. (An `experiment` axis picks the model a key belongs to.)
    first = {a.name: [kv for kv in axis_settings(a, _probe_values(a)[0]) if kv[0] in GROUPS] for a in sweep.axes}
    for axis in sweep.axes:
        others = [kv for name, settings in first.items() if name != axis.name for kv in settings]
        for i, value in enumerate(_probe_values(axis)):
            compose(others + axis_settings(axis, value),
                    ("axes", axis.name, axis.kind, i) if axis.kind != "pairs" else ("axes", axis.name),
                    f"axis {axis.name!r} = {value!r}")

    # As Tune's BasicVariantGenerator does: the grid `samples` times over, the random axes drawn afresh each
    # time, from one seeded generator so the file always gives the same trials.
    space = {f"a{i}": axis.tune_domain() for i, axis in enumerate(sweep.axes)}
    rng = np.random.default_rng(sweep.seed)
    variants = [spec for _ in range(sweep.samples) for _, spec in generate_variants(space, random_state=rng)]
    trials: dict[str, Trial] = {}
    for spec in variants:
        values = {axis.name: spec[f"a{i}"] for i, axis in enumerate(sweep.axes)}
        settings = [kv for axis in sweep.axes for kv in axis_settings(axis, values[axis.name])]
        what = "the trial " + ", ".join(f"{k}={v!r}" for k, v in values.items())
        config = compose(settings, ("axes",), what)
        try:
            check_config(config)  # what would fail inside a worker, or after Ray started, fails here
        except PreflightError as e:
            raise where.error(("axes",), f"{what}: {e}") from None
        overrides = _merge(compose.base, [o for axis in sweep.axes for o in axis_overrides(axis, values[axis.name])])
        trial = Trial(run_name(config), overrides, {a.name: label(a, values[a.name]) for a in sweep.axes}, config)
        if trial.trial_id in trials:
            raise where.error(("axes",), f"two grid points make the same trial {trial.trial_id} "
                              f"({trials[trial.trial_id].axes} and {trial.axes}): an axis has no effect "
                              "(the preset may fix that key, or it only says where the trial runs)")
        trials[trial.trial_id] = trial
    return list(trials.values())


class _Composer:
    """Resolved trial configs, fast: Hydra composes once per combination of group choices (experiment=,
    model=, ...); the other settings are then set on a copy, in struct mode, so an unknown key or a value
    of the wrong type fails just as a Hydra override would. (Composing every trial through Hydra took a
    minute for a 720-trial sweep.)"""

    def __init__(self, base: list[str], where: _Where) -> None:
        self.base, self.where = base, where
        self.cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, settings: list[tuple[str, Any]], keys: tuple | None, what: str) -> dict[str, Any]:
        from hydra.errors import HydraException
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        from cls.train.config import compose_config, to_container

        groups = tuple(_merge(self.base, [f"{k}={v}" for k, v in settings if k in GROUPS]))
        try:
            if groups not in self.cache:
                self.cache[groups] = compose_config(list(groups))
            cfg = copy.deepcopy(self.cache[groups])
            for key, value in settings:
                if key not in GROUPS:
                    OmegaConf.update(cfg, key, value, merge=True)
            return to_container(cfg)
        except (HydraException, OmegaConfBaseException) as e:
            cause = f" ({e.__cause__})" if e.__cause__ else ""
            message = f"{what}: the config rejects it: {e}{cause}".replace("\n", " ")
            raise (self.where.error(keys, message) if keys else SweepError(f"{self.where.path}: {message}")) from None


def _probe_values(axis: Axis) -> list[Any]:
    if axis.kind in ("grid", "choice", "pairs"):
        return list(axis.values)
    if axis.kind == "randint":
        return [int(axis.low), int(axis.high) - 1]
    return [axis.low, axis.high]


def _merge(base: list[str], more: list[str]) -> list[str]:
    """`base` + `more`, where an override in `more` replaces one of `base` that sets the same key."""
    keys = {_key(o) for o in more}
    return [o for o in base if _key(o) not in keys] + more


def _key(item: str) -> str:
    return item.split("=", 1)[0].lstrip("+~")
