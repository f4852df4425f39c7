"""`cls train`: one Ray Train run of a resolved config (the driver side; workers run `ray_worker`).

The run's name is derived from the resolved config, so running the same command again finds the same run
in storage and resumes it from its last checkpoint (Ray Train V2 resumes a run that is created again with
the same RunConfig(storage_path, name)).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cls.data.layout import DatasetNotPrepared, read_manifest

# Keys that change where or how a run is hosted, not what it computes: they do not enter its name. `workers`
# is one because data.batch_size is the global batch: 1 or 8 ranks take the same optimizer steps at the same lr
# (only BatchNorm's batch statistics are per rank, over batch_size / workers images).
_HOSTING_KEYS = {"storage", "name", "progress", "max_failures", "workers", "cpus_per_worker", "gpus_per_worker",
                 "threads_per_worker", "keep_checkpoints", "checkpoint_metric", "checkpoint_mode"}
_DATA_HOSTING_KEYS = {"root", "num_workers"}  # where the data lives, how many threads read it
_TOP_HOSTING_KEYS = {"results"}  # where its rows are written

# The environment of every Ray process we start: the driver's os.environ and the job's runtime_env alike.
# Train copies a fixed list of these variables from the process that calls fit() into its controller's
# runtime_env; when that copy equals the job's own env_vars, the controller and its helper actors can start
# in Ray's already-running pooled worker processes instead of new ones (bench/trial_overhead.py).
RAY_ENV = {
    # Train V2's controller polls workers every 2 s by default; with short epochs each report then blocks
    # for up to a poll interval (shared/notes/ray.md measured 2.96x on an 8-epoch loop at 0.2 s).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # The dashboard lists Train V2 runs and their reported metrics only with state tracking on.
    "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",
    # One more actor process per run, watching for cloud-provider preemption notices. A preempted SLURM
    # node shows up as dead workers, which FailureConfig handles; the watcher only adds start-up time.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC": "0",  # Train sets this for its controller; same value here
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # otherwise every worker print appears twice
}


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]  # the last epoch's


def run_name(cfg: dict[str, Any]) -> str:
    """`{model}-{data}-{hash}`: the same resolved config gives the same name on every machine."""
    trainer = {k: v for k, v in cfg["trainer"].items() if k not in _HOSTING_KEYS}
    data = {k: v for k, v in cfg["data"].items() if k not in _DATA_HOSTING_KEYS}
    # ... but which dataset directory it is does: `cls augment` / `cls stylize` write expanded copies of one
    # dataset (same data.name) into their own directories, and seed 002's Table 2 compares exactly those.
    data["dir"] = Path(cfg["data"]["root"]).name
    identity = {**{k: v for k, v in cfg.items() if k not in _TOP_HOSTING_KEYS}, "trainer": trainer, "data": data}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{cfg['model']['name']}-{cfg['data']['name']}-{digest}"


def absolute_paths(cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` with its paths made absolute against the driver's working directory: Ray workers and torchrun
    ranks run elsewhere, and `data/digits` would name another directory there."""
    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    cfg = {**cfg, "data": {**cfg["data"], "root": absolute(cfg["data"]["root"])},
           "trainer": {**cfg["trainer"], "storage": absolute(cfg["trainer"]["storage"])}}
    if "results" in cfg:
        cfg["results"] = {**cfg["results"], "root": absolute(cfg["results"]["root"])}
    if cfg.get("style", {}).get("image"):
        cfg["style"] = {**cfg["style"], "image": absolute(cfg["style"]["image"])}
    return cfg


def worker_batch(batch_size: int, workers: int, key: str = "data.batch_size") -> int:
    """Each rank's share of the global batch `batch_size` (one optimizer step) over `workers` ranks. Raises,
    naming the fix, when it does not divide: a rounded share would change the batch the lr was set for."""
    if batch_size < 1:
        raise ValueError(f"{key} must be at least 1, got {batch_size}")
    if batch_size % workers:
        below = batch_size - batch_size % workers
        raise ValueError(
            f"{key}={batch_size} is the global batch of one optimizer step and must divide over "
            f"trainer.workers={workers}: set {key} to a multiple of {workers} (e.g. {below or workers} or "
            f"{below + workers}), or trainer.workers to a divisor of {batch_size}"
        )
    return batch_size // workers


def check_batch(cfg: dict[str, Any], workers: int | None = None) -> None:
    """Fail before Ray starts if the run's global batch does not divide over its workers (see worker_batch)."""
    workers = workers or cfg["trainer"]["workers"]
    if workers < 1:
        raise ValueError(f"trainer.workers must be at least 1, got {workers}")
    worker_batch(cfg["data"]["batch_size"], workers)


def run_dir(cfg: dict[str, Any]) -> Path:
    """Where the run keeps its checkpoints and per-epoch files: STORAGE/NAME."""
    trainer = cfg["trainer"]
    return Path(trainer["storage"]).expanduser().resolve() / (trainer["name"] or run_name(cfg))


def ensure_data(cfg: dict[str, Any]) -> None:
    """Fail before any worker starts if the dataset is not prepared, or was split with another seed than
    `data.split_seed`; `digits` ships with scikit-learn and is prepared on the spot (split by data.split_seed,
    never by the trial's seed: one trial id, one test set)."""
    data = cfg["data"]
    try:
        manifest = read_manifest(data["root"], data["name"])
    except DatasetNotPrepared:
        if data["name"] != "digits":
            raise
        from cls.data.prepare import prepare

        manifest = prepare("digits", None, data["root"], seed=data["split_seed"])
    check_split_seed(data, manifest)
    if data.get("per_class") is not None:
        check_per_class(data)
    if data.get("split_order") is not None:
        check_split_order(data)


def check_split_order(data: dict[str, Any]) -> None:
    """An expanded dataset must have been expanded in the split order the config names (seed 002 §4.3)."""
    from cls.data.augment import check_split_order as valid

    valid(data["split_order"])
    source = read_manifest(data["root"], data["name"]).source
    if "expanded_from" not in source:
        return  # not expanded (Table 2's "No" row): both orders read the same 6:2:2 split
    found = source.get("split_order", "clean")  # expansions made before split orders existed were clean
    if found != data["split_order"]:
        raise ValueError(
            f"{data['root']} was expanded with split order {found!r} but data.split_order={data['split_order']!r}: "
            f"expand it again with `cls augment` / `cls stylize apply` --split-order {data['split_order']} into "
            f"another directory, or set data.split_order={found}"
        )


def _prepare_options(source: dict[str, Any]) -> dict[str, Any]:
    """The `cls data prepare` options of a dataset, or of the one an expanded copy was made from."""
    while "options" not in source and isinstance(source.get("parent"), dict):
        source = source["parent"]
    return source.get("options") or {}


def check_per_class(data: dict[str, Any]) -> None:
    """The prepared dataset must be the per-class subset the config names (seed 002: 5,000 per class)."""
    manifest = read_manifest(data["root"], data["name"])
    found = _prepare_options(manifest.source).get("per_class")
    if found != data["per_class"]:
        raise ValueError(
            f"{data['root']} was prepared with per_class={found} but data.per_class={data['per_class']}: prepare "
            f"it again with `cls data prepare {data['name']} --src DIR --out {data['root']} per_class="
            f"{data['per_class']} --force` (and expand it again), or set data.per_class=null to use it as it is"
        )


def check_split_seed(data: dict[str, Any], manifest) -> None:
    """The prepared dataset's split seed (recorded in its manifest) must be the config's `data.split_seed`."""
    have = (manifest.source.get("options") or {}).get("seed")
    want = data["split_seed"]
    if have is not None and have != want:
        raise ValueError(
            f"{data['root']} was prepared with split seed {have} but the config asks for data.split_seed={want}: "
            f"set data.split_seed={have}, or prepare it with that seed (cls data prepare {manifest.name} --seed {want} "
            f"--out DIR --force, or into another DIR and set data.root=DIR)")


def connect_ray(num_cpus: float | None = None, insecure_no_auth: bool = False, log_to_driver: bool = True) -> None:
    """Join the running cluster when RAY_ADDRESS names one (the SLURM bootstrap sets it); otherwise start a
    local one, private to the user (cluster/local.py: its own token, every port on 127.0.0.1;
    `insecure_no_auth`: the --insecure-no-auth flag). Never `address="auto"`: two clusters on one machine
    make it pick either. `log_to_driver=False` keeps Ray's processes' output (its warnings, controller
    noise) off this terminal: a sweep prints its own line per trial event, and a failed trial's traceback
    is in its trials row."""
    import ray

    if ray.is_initialized():
        return
    os.environ.update({k: v for k, v in RAY_ENV.items() if k not in os.environ})
    address = os.environ.get("RAY_ADDRESS")
    env_vars = {k: os.environ[k] for k in RAY_ENV}
    try:
        _init_ray(ray, address, env_vars, num_cpus, insecure_no_auth, log_to_driver)
    except Exception as e:  # noqa: BLE001 - whatever ray.init raises, the user sees one line
        last = next((line for line in reversed(str(e).strip().splitlines()) if line.strip()), type(e).__name__)
        from cls.preflight import PreflightError

        where = f"the Ray cluster at RAY_ADDRESS={address}" if address else "a local Ray cluster"
        raise PreflightError(f"{where} did not start: {last.strip()}; run the command again (on a loaded machine "
                             f"Ray's start can time out), or join a running cluster with RAY_ADDRESS=HOST:PORT") from None


def _init_ray(ray, address: str | None, env_vars: dict[str, str], num_cpus: float | None, insecure_no_auth: bool,
              log_to_driver: bool) -> None:
    if address:
        # Ray's state API (Train's placement-group cleaner uses it inside the cluster) finds its cluster by
        # RAY_ADDRESS, else by guessing, which fails when two clusters share a machine.
        ray.init(address=address, runtime_env={"env_vars": {**env_vars, "RAY_ADDRESS": address}},
                 log_to_driver=log_to_driver, logging_level=logging.INFO if log_to_driver else logging.WARNING)
    else:
        from cluster import local

        # With the dashboard: it is where a researcher watches the sweep, and Ray's state API (through which
        # Train frees the CPUs of a trial that Tune stopped) answers only when it runs.
        local.start(env_vars, num_cpus=num_cpus, insecure_no_auth=insecure_no_auth, log_to_driver=log_to_driver)


def worker_resources(trainer: dict[str, Any], cluster: dict[str, float]) -> dict[str, float]:
    """What each Ray Train worker of the run reserves: `trainer.cpus_per_worker` CPUs and
    `trainer.gpus_per_worker` GPUs (None: one when the cluster has GPUs). Fails, saying what to lower, when
    the cluster can never host the run (Ray would wait for the resources forever)."""
    gpus = trainer["gpus_per_worker"]
    if gpus is None:
        gpus = 1.0 if cluster.get("GPU", 0) > 0 else 0.0
    resources = {"CPU": trainer["cpus_per_worker"], **({"GPU": gpus} if gpus else {})}
    check_resources(trainer["workers"], resources, cluster)
    return resources


def check_resources(workers: int, per_worker: dict[str, float], cluster: dict[str, float]) -> None:
    """Fail before starting when the cluster cannot ever host the run: Ray would wait for resources forever."""
    if workers < 1:
        raise ValueError(f"trainer.workers must be at least 1, got {workers}")
    for kind, amount in per_worker.items():
        need, have = workers * amount, cluster.get(kind, 0.0)
        if need > have:
            raise ValueError(
                f"the run asks for {need:g} {kind} ({workers} workers x {amount:g}) but the Ray cluster has {have:g}: "
                f"lower trainer.workers or trainer.{kind.lower()}s_per_worker, or run on a larger allocation"
            )


def _trainer_class(placement_group_cleaner: bool = True):
    """TorchTrainer without the actors a run of ours does not use, each one more process start per run (a
    second or so of every sweep trial's start on 2 cores): the Ray Data callback's when the run passes no
    Ray datasets (ours never does: DALI and torch loaders read the prepared files), and, when asked, the
    placement-group cleaner, which frees a run's CPUs/GPUs only if its controller is killed from outside
    (Tune stopping a trial early). Overrides a private method, hence ray==2.60.0 pinned."""
    from ray.train.torch import TorchTrainer

    # Fail loudly, not fall back: a Ray that moved these would otherwise run every trial with the extra
    # actors, or with a cleaner we meant to drop, and nobody would notice (tests/test_train_units.py checks
    # the pinned Ray still has what this relies on).
    try:
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    except ImportError as e:
        raise RuntimeError(f"cls overrides Ray Train's private _create_default_callbacks, written for ray==2.60.0, "
                           f"and this Ray ({__import__('ray').__version__}) has moved its callbacks ({e}); "
                           "install ray==2.60.0 (pyproject.toml)") from None
    if not callable(getattr(TorchTrainer, "_create_default_callbacks", None)):
        raise RuntimeError("this Ray's TorchTrainer has no _create_default_callbacks (cls is written for "
                           "ray==2.60.0); install ray==2.60.0 (pyproject.toml)")
    unused = (() if placement_group_cleaner else (PlacementGroupCleanerCallback,))

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks()
                    if not isinstance(c, unused) and (self.datasets or not isinstance(c, DatasetsCallback))]

    return Trainer


def train(cfg: dict[str, Any], callbacks: Sequence[Any] = (), record: bool = True,
          killable: bool = True, insecure_no_auth: bool = False) -> TrainResult:
    """Fit `cfg` on Ray Train. `callbacks`: Ray Train callbacks (the sweep passes Tune's reporter). `record`:
    keep the run's `trials` row in the results store (the sweep driver keeps its trials' rows itself).
    `killable=False`: nothing will kill this run's controller while the cluster lives on (a sweep trial
    without a scheduler), so Train's placement-group cleaner is left out (see _trainer_class).
    `insecure_no_auth`: a local cluster started here runs without token authentication (--insecure-no-auth)."""
    import ray
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig, TrainingFailedError
    from cls.results import TrialRecord
    from cluster.torch_store import torch_config

    from .checkpoint import drop_stale_ray_snapshot
    from .loop import read_epochs
    from .ray_worker import train_loop_per_worker

    cfg = absolute_paths(cfg)
    trainer_cfg = cfg["trainer"]
    if trainer_cfg["progress"] is None:
        trainer_cfg["progress"] = sys.stdout.isatty()
    check_batch(cfg)
    ensure_data(cfg)
    directory = run_dir(cfg)
    row = TrialRecord(cfg, directory.name, 0.0) if record else None
    if row and row.finished():
        # Already done: running it again changes nothing (and never turns its row into a failed one).
        print(f"{directory.name}: finished earlier ({row.previous['epochs_done']} epochs); nothing to run", flush=True)
        epochs = read_epochs(directory)
        return TrainResult(directory, epochs[-1] if epochs else {})
    drop_stale_ray_snapshot(directory)

    connect_ray(insecure_no_auth=insecure_no_auth)
    resources = worker_resources(trainer_cfg, ray.cluster_resources())
    gpus = resources.get("GPU", 0.0)
    trainer = _trainer_class(placement_group_cleaner=killable)(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg, "run_dir": str(directory)},
        scaling_config=ScalingConfig(num_workers=trainer_cfg["workers"], use_gpu=gpus > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(storage_path=str(directory.parent), name=directory.name, callbacks=list(callbacks),
                             failure_config=FailureConfig(max_failures=trainer_cfg["max_failures"]),
                             # Train's state transitions and worker-group lines, every run: our progress
                             # lines say what matters; warnings and errors still show.
                             logging_config=LoggingConfig(log_level="WARNING")),
        torch_config=torch_config("nccl" if gpus > 0 else "gloo"),  # a file rendezvous on the local cluster
    )
    if row:
        row.gpus = trainer_cfg["workers"] * gpus
        row.start()
    # Every way out closes the row: finished, failed with the error, or interrupted (it resumes when run
    # again); never a "running" row that nothing runs.
    try:
        result = trainer.fit()
    except TrainingFailedError as e:
        if row:
            row.end("failed", str(e))
        raise
    except KeyboardInterrupt:
        if row:
            row.end("interrupted")
        raise
    except BaseException as e:
        if row:
            row.end("failed", f"{type(e).__name__}: {e}")
        raise
    if row:
        row.end("finished")
    # The last epoch's metrics from the run directory, which rank 0 writes every epoch: Train v2's
    # `result.metrics` holds only reports that came with a checkpoint, and checkpoints are no longer Ray's.
    epochs = read_epochs(directory)
    return TrainResult(directory, epochs[-1] if epochs else dict(result.metrics or {}))
