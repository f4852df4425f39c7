"""Writing one trial into the results store: `ResultsWriter` (rank 0 of the trial only), `flatten_config`,
`summarize` (final and best metrics) and `environment` (host, git commit, library versions)."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from .schema import coerce_row, config_types
from .store import STATUSES, WRITE_SEQ, WRITTEN_AT, check_name, concat, live_file, read_file, write_table_atomic


class ResultsWriter:
    """Writes the rows of trial `trial_id` of `sweep` under `root`. Own one per trial, on its rank 0: each
    write rewrites the trial's live file atomically (see store.py), so a write is all-or-nothing."""

    def __init__(self, root: str | os.PathLike, sweep: str, trial_id: str):
        self.root, self.sweep, self.trial_id = Path(root), check_name("sweep", sweep), check_name("trial", trial_id)
        self._attempt: dict[str, int] = {}  # table -> this writer's attempt, found at its first write
        self._count = 0

    def _next_seq(self, table: str) -> int:
        """The `write_seq` of this writer's next row of `table`: (attempt << 32) + a counter. The attempt is one
        more than that of every row of this trial already in the store, so a later writer (a resumed run,
        another host) wins whatever its clock says, and each write of one writer beats its previous one."""
        if table not in self._attempt:
            from .read import read_table

            rows = read_table(self.root, table, sweep=self.sweep, filters=[("trial_id", "==", self.trial_id)])
            seqs = [s for s in (rows.column(WRITE_SEQ).to_pylist() if WRITE_SEQ in rows.column_names else [])
                    if s is not None]
            self._attempt[table] = (max(seqs) >> 32) + 1 if seqs else 1
        self._count += 1
        return (self._attempt[table] << 32) + self._count

    def write_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Record `epoch`'s metrics (numbers; None -> NaN); a re-run epoch replaces the earlier row."""
        self.write_epochs([{**metrics, "epoch": epoch}])

    def write_epochs(self, rows: list[Mapping[str, Any]]) -> None:
        """Record several epochs in one rewrite (each row holds its "epoch"), e.g. a resumed run's backfill."""
        if not rows:
            return
        seq = self._next_seq("epochs")
        new = concat([_table("epochs", {**self._epoch_row(r), WRITE_SEQ: seq}) for r in rows])
        path = live_file(self.root, "epochs", self.sweep, self.trial_id)
        old = read_file(path, repair=True)
        if old is not None:
            old = old.filter(~pc.field("epoch").isin(new.column("epoch")))
            new = concat([old, new])
        write_table_atomic(path, new.sort_by("epoch"))

    def _epoch_row(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        row = {"trial_id": self.trial_id, "epoch": int(metrics["epoch"])}
        for k, v in metrics.items():
            if k in ("trial_id", "epoch", WRITTEN_AT, WRITE_SEQ):
                continue
            if v is not None and not isinstance(v, (int, float)):
                raise TypeError(f"metric {k!r} must be a number, got {type(v).__name__}")
            # All metrics float64, whatever Python type they came as, so files agree on each column's type.
            row[k] = math.nan if v is None else float(v)
        row[WRITTEN_AT] = time.time_ns()
        return row

    def read(self, table: str) -> list[dict[str, Any]]:
        """This trial's rows of `table` so far (epochs in order), from its live file and any compacted part."""
        from .read import load  # read.py imports store.py, as this module does

        frame = load(self.root, table, sweep=self.sweep, filters=[("trial_id", "==", self.trial_id)])
        frame = frame.drop(columns=["sweep", WRITTEN_AT, WRITE_SEQ], errors="ignore")
        if table == "epochs" and "epoch" in frame:
            frame = frame.sort_values("epoch")
        return frame.to_dict("records")

    def write_trial(self, row: Mapping[str, Any], config_types: Mapping[str, pa.DataType] | None = None) -> None:
        """Record the trial's summary row (replacing the previous one): typically `flatten_config(cfg)`,
        `summarize(epochs)`, status, wall_s, gpu_hours. Host, git commit and versions are added if absent.
        `config_types`: the declared types of the config's columns (schema.config_types(); TrialRecord
        passes them), else a config column's type is that of its value."""
        status = row.get("status")
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        full = {"trial_id": self.trial_id, **environment(), **{k: _cell(k, v) for k, v in row.items()}}
        full["trial_id"], full[WRITTEN_AT] = self.trial_id, time.time_ns()
        full[WRITE_SEQ] = self._next_seq("trials")
        write_table_atomic(live_file(self.root, "trials", self.sweep, self.trial_id), _table("trials", full, config_types))


def _table(table: str, row: Mapping[str, Any], config_types: Mapping[str, pa.DataType] | None = None) -> pa.Table:
    """One row with every value coerced to its column's declared type (schema.py); StoreTypeError if one
    does not fit."""
    values, schema = coerce_row(table, row, config_types)
    return pa.Table.from_pylist([values], schema=schema)


class TrialRecord:
    """The `trials` row of one run, kept by the process that hosts the run (the `cls train` driver, or the
    sweep driver for each of its trials): `start()` marks it running, `end(status)` closes it.

    wall_s and gpu_hours add up over attempts (a resumed trial continues the sum of its earlier row); an
    attempt whose driver was killed never wrote its end, so its time is not counted."""

    def __init__(self, cfg: Mapping[str, Any], trial_id: str, gpus_per_worker: float,
                 extra: Mapping[str, Any] | None = None) -> None:
        self.writer = ResultsWriter(cfg["results"]["root"], cfg["results"]["sweep"], trial_id)
        self.config = flatten_config(cfg)
        self.gpus = cfg["trainer"]["workers"] * gpus_per_worker
        self.extra = dict(extra or {})
        self.prior_wall_s, self.attempts, self.started = 0.0, 0, time.time()
        self.epochs = cfg["trainer"]["epochs"]
        self._previous: dict[str, Any] | None = None

    @property
    def previous(self) -> dict[str, Any]:
        """The trial's row as the store has it before this attempt ({} if none)."""
        if self._previous is None:
            rows = self.writer.read("trials")
            self._previous = rows[0] if rows else {}
        return self._previous

    def finished(self) -> bool:
        """Whether an earlier attempt finished every epoch: then there is nothing to run."""
        done = self.previous.get("epochs_done")
        return self.previous.get("status") == "finished" and done is not None and done >= self.epochs

    def start(self) -> None:
        previous = self.previous
        if previous:
            self.prior_wall_s = float(previous.get("wall_s") or 0.0)
            self.attempts = int(previous.get("attempts") or 0)
        self.attempts += 1
        self.started = time.time()
        self._write("running", None, 0.0)

    def end(self, status: str, error: str | None = None) -> None:
        self._write(status, error, time.time() - self.started)

    def _write(self, status: str, error: str | None, elapsed: float) -> None:
        epochs = self.writer.read("epochs")
        wall_s = self.prior_wall_s + elapsed
        self.writer.write_trial({
            **self.config, **self.extra, **summarize(epochs),
            "status": status, "error": error, "epochs_done": len(epochs), "attempts": self.attempts,
            "wall_s": wall_s, "gpu_hours": wall_s * self.gpus / 3600, "started_at": self.started,  # this attempt's
        }, config_types())


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"name": "dnffm", "tau": 0.5}} -> {"model.name": "dnffm", "model.tau": 0.5}.

    Lists and tuples become JSON strings ("[0.9, 0.999]"): a string column groups, compares and unifies
    across trials, where list columns do not (pandas cannot group by a list)."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = _cell(name, value)
    return flat


def _cell(name: str, value: Any) -> Any:
    if isinstance(value, (list, tuple, Mapping)):
        return json.dumps(value, default=str)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # paths, enums: their text is what one filters on


def summarize(epochs: list[Mapping[str, Any]]) -> dict[str, float]:
    """final_{m} (last epoch) and best_{m} (min for losses, max for everything else) of each metric."""
    out: dict[str, float] = {}
    if not epochs:
        return out
    ordered = sorted(epochs, key=lambda e: e["epoch"])
    for name in ordered[-1]:
        if name in ("epoch", "trial_id", "sweep", WRITTEN_AT, WRITE_SEQ):
            continue
        values = [float(e[name]) for e in ordered if isinstance(e.get(name), (int, float)) and not math.isnan(e[name])]
        if values:
            out[f"final_{name}"] = float(ordered[-1][name])
            out[f"best_{name}"] = min(values) if "loss" in name else max(values)
    return out


@functools.cache
def environment() -> dict[str, str | None]:
    """Where and with what a trial ran: host, git commit of this checkout, torch / ray / cls versions."""
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"host": socket.gethostname(), "git_commit": commit, "torch_version": version("torch"),
            "ray_version": version("ray"), "cls_version": version("cls")}
