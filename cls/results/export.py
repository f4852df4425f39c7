"""Export a sweep of the results store to the tools people already read runs with: TensorBoard event files
and an MLflow tracking store (a local `sqlite:///path.db` works offline). Every trial becomes one run: its
config as hparams / params, every epoch's metrics as scalars with step = epoch and the time the row was
written. Both need the optional `export` extra (`pip install 'cls[export]'`); without it they raise
`MissingExtra`, which says so.

Exporting again replaces what an earlier export wrote for the same trials (a sweep that went on since),
never duplicates it: TensorBoard's event files of the trial's directory and the MLflow run tagged with the
trial's id are written anew.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from .read import load
from .schema import WRITE_SEQ
from .store import WRITTEN_AT

EXTRA = "export"
TRIAL_TAG, SWEEP_TAG = "cls.trial_id", "cls.sweep"
# Columns of a trials row that describe the run, not its configuration: MLflow tags, not params.
_BOOKKEEPING = ("status", "error", "epochs_done", "attempts", "wall_s", "gpu_hours", "host", "git_commit",
                "started_at", "torch_version", "ray_version", "cls_version", "experiment")
_MLFLOW_STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
_BATCH = 1000  # MLflow's log_batch takes at most 1000 metrics and 100 params per call
_PARAM_BATCH = 100


class MissingExtra(ValueError):
    """An optional dependency is missing; the message names the extra that installs it."""


def to_tensorboard(root: str | os.PathLike, sweep: str, logdir: str | os.PathLike) -> list[Path]:
    """Write one TensorBoard run per trial of `sweep` into LOGDIR/SWEEP/TRIAL_ID (hparams: its config and
    final metrics; scalars: each epoch metric at step = epoch). Returns the runs' directories."""
    try:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams
    except ImportError as e:
        raise _missing("TensorBoard", e) from None

    runs = []
    for trial, config, summary, epochs in _trials(root, sweep):
        run = Path(logdir) / sweep / trial
        for old in run.glob("events.out.tfevents.*"):  # an earlier export of this trial: replaced, not doubled
            old.unlink()
        writer = SummaryWriter(log_dir=str(run))
        try:
            # hparams take numbers, strings and booleans (written as 1/0); anything else is shown as text.
            hp = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in config.items()}
            for summary_proto in hparams(hp, {k: v for k, v in summary.items() if _finite(v)}):
                writer.file_writer.add_summary(summary_proto)
            for row in epochs:
                for name, value in row["metrics"].items():
                    writer.add_scalar(name, value, global_step=row["epoch"], walltime=row["time_s"])
        finally:
            writer.close()
        runs.append(run)
    return runs


def to_mlflow(root: str | os.PathLike, sweep: str, tracking_uri: str) -> list[str]:
    """Log one MLflow run per trial of `sweep` into the experiment named after the sweep at `tracking_uri`
    (params: its config; tags: sweep, trial id and where it ran; metrics: each epoch at step = epoch).
    Returns the run ids."""
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise _missing("MLflow", e) from None

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(sweep)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(sweep)
    run_ids = []
    for trial, config, summary, epochs in _trials(root, sweep):
        for old in client.search_runs([experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = '{trial}'"):
            client.delete_run(old.info.run_id)
        params = {k: v for k, v in config.items() if k not in _BOOKKEEPING}
        tags = {SWEEP_TAG: sweep, TRIAL_TAG: trial, **{f"cls.{k}": str(v) for k, v in config.items()
                                                      if k in _BOOKKEEPING and v is not None}}
        run = client.create_run(experiment_id, run_name=trial, tags=tags)
        run_id = run.info.run_id
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), _PARAM_BATCH):
            client.log_batch(run_id, params=items[i:i + _PARAM_BATCH])
        metrics = [Metric(name, value, int(row["time_s"] * 1000), row["epoch"])
                   for row in epochs for name, value in row["metrics"].items()]
        for i in range(0, len(metrics), _BATCH):
            client.log_batch(run_id, metrics=metrics[i:i + _BATCH])
        status = _MLFLOW_STATUS.get(config.get("status"))
        if status:
            client.set_terminated(run_id, status)
        run_ids.append(run_id)
    return run_ids


def _trials(root: str | os.PathLike, sweep: str) -> Iterator[tuple[str, dict[str, Any], dict[str, float], list[dict]]]:
    """(trial id, config, final/best metrics, epochs) per trial of `sweep`; epochs in order, each
    {"epoch", "time_s", "metrics": {name: finite value}}."""
    trials = load(root, "trials", sweep=sweep)
    if trials.empty:
        raise ValueError(f"no trials of sweep {sweep!r} in the results store {str(root)!r}")
    epochs = load(root, "epochs", sweep=sweep)
    metric_columns = [c for c in epochs.columns if c not in ("sweep", "trial_id", "epoch", WRITTEN_AT, WRITE_SEQ)]
    for row in trials.sort_values("trial_id").to_dict("records"):
        trial = row["trial_id"]
        config = {k: _plain(v) for k, v in row.items() if k not in ("sweep", "trial_id", WRITTEN_AT, WRITE_SEQ)
                  and not k.startswith(("final_", "best_")) and not _missing_value(v)}
        summary = {k: float(v) for k, v in row.items() if k.startswith(("final_", "best_")) and not _missing_value(v)}
        own = epochs[epochs["trial_id"] == trial].sort_values("epoch") if "epoch" in epochs else epochs.iloc[0:0]
        rows = [{"epoch": int(e["epoch"]), "time_s": e[WRITTEN_AT] / 1e9 if WRITTEN_AT in e else 0.0,
                 "metrics": {m: float(e[m]) for m in metric_columns if _finite(e[m])}}
                for e in own.to_dict("records")]
        yield trial, config, summary, rows


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v  # numpy scalars -> Python


def _missing_value(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (not isinstance(v, str) and pd.isna(v) is True)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _missing(tool: str, error: ImportError) -> MissingExtra:
    return MissingExtra(f"exporting to {tool} needs the optional extra {EXTRA!r} ({error.name or error} is not "
                        f"installed): pip install 'cls[{EXTRA}]'")
