"""Reading the results store: `load` (deduplicated, schema-unified) and `aggregate` (mean ± std over seeds)."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .store import (DAMAGE, KEYS, TABLES, WRITE_SEQ, WRITTEN_AT, StoreWarning, _one_line, damaged_fix, data_files,
                    sweep_dir)

_PARTITIONING = ds.partitioning(pa.schema([("sweep", pa.string())]), flavor="hive")
# Between listing a file and reading it, a writer may replace it (pyarrow then reads the new file with the
# old one's size: OSError / ArrowInvalid) or `compact` may unlink it: list and read again.
_RETRIES = 5


def load(root: str | os.PathLike, table: str = "trials", sweep: str | None = None,
         filters: Any = None) -> pd.DataFrame:
    """One table of the store as a DataFrame: one row per trial ("trials") or per (trial, epoch) ("epochs"),
    with a `sweep` column; the newest row of each key when a key was written more than once.

    `filters`: a pyarrow expression or pandas/pyarrow DNF tuples (`[("model.name", "==", "resnet18")]`),
    applied after deduplication, so they never resurrect a superseded row.

    A damaged file is skipped and a column whose files disagree on its type is read as string, each with a
    `StoreWarning` naming the files (`cls results --check` lists them and what to do).
    """
    return read_table(root, table, sweep=sweep, filters=filters).to_pandas()


@dataclass
class Problems:
    """What a read met: damaged files (path -> error) and conflicting columns (name -> {type: [paths]})."""

    damaged: dict[Path, str] = field(default_factory=dict)
    conflicts: dict[str, dict[str, list[Path]]] = field(default_factory=dict)

    def warn(self) -> None:
        for path, error in self.damaged.items():
            warnings.warn(StoreWarning(f"skipping damaged file {path} ({error}); {damaged_fix(path)}"), stacklevel=3)
        for column, by_type in self.conflicts.items():
            where = "; ".join(f"{kind} in {', '.join(str(p) for p in paths[:3])}"
                              f"{f' and {len(paths) - 3} more' if len(paths) > 3 else ''}"
                              for kind, paths in sorted(by_type.items()))
            warnings.warn(StoreWarning(f"column {column!r} has more than one type ({where}): read as string; "
                                       f"`cls results --check` says what to do"), stacklevel=3)


def read_table(root: str | os.PathLike, table: str, sweep: str | None = None, filters: Any = None,
               files: Sequence[Path] | None = None, report: bool = False):
    """`load` as an Arrow table. `files` (for `compact`): read exactly these files instead of listing.
    `report`: return (table, Problems) and warn of nothing (the caller decides)."""
    if table not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, got {table!r}")
    base = Path(root) / table
    for attempt in range(_RETRIES):
        listed = list(files) if files is not None else data_files(sweep_dir(root, table, sweep) if sweep else base)
        problems = Problems()
        try:
            data = _read(listed, base, problems)
            break
        except DAMAGE:
            # A file replaced or unlinked between listing and reading: list and read again. The last time,
            # read file by file, which names (and skips) a file that is really damaged.
            if attempt < _RETRIES - 1:
                time.sleep(0.01 * 2**attempt)
                continue
            problems = Problems()
            data = _read(listed, base, problems, one_by_one=True)
    data = _latest(data, KEYS[table])
    if filters is not None:
        data = data.filter(filters if isinstance(filters, pc.Expression) else pq.filters_to_expression(filters))
    if report:
        return data, problems
    problems.warn()
    return data


def _read(files: list[Path], base: Path, problems: Problems, one_by_one: bool = False) -> pa.Table:
    # pyarrow takes a dataset's schema from one file; unify all of them so a column that appears in a later
    # trial (schema drift) is kept, with nulls for the trials that lack it.
    schemas: dict[Path, pa.Schema] = {}
    for f in files:
        try:
            schemas[f] = pq.read_schema(f)
        except FileNotFoundError:
            continue  # compacted away since it was listed: its rows are in the part
        except DAMAGE as e:
            problems.damaged[f] = _one_line(e)
    types: dict[str, dict[str, list[Path]]] = {}
    for f, schema in schemas.items():
        for fld in schema:
            if fld.name != "sweep" and not pa.types.is_null(fld.type):
                types.setdefault(fld.name, {}).setdefault(str(fld.type), []).append(f)
    for name, by_type in types.items():
        if len(by_type) > 1:
            try:
                pa.unify_schemas([pa.schema([(name, pa.type_for_alias(t))]) for t in by_type],
                                 promote_options="permissive")  # int64 + double -> double: no conflict
            except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError):
                problems.conflicts[name] = by_type
    good = [f for f in files if f in schemas]
    if not good:
        return pa.table({"sweep": pa.array([], pa.string()), "trial_id": pa.array([], pa.string())})
    if problems.conflicts or one_by_one:
        data = _read_each(good, base, set(problems.conflicts), problems)
    else:
        schema = pa.unify_schemas([schemas[f] for f in good], promote_options="permissive")
        dataset = ds.dataset([str(f) for f in good], schema=schema.append(pa.field("sweep", pa.string())),
                             format="parquet", partitioning=_PARTITIONING, partition_base_dir=str(base))
        data = dataset.to_table()
    # Columns in one order whichever file came first: keys, the rest by name, bookkeeping last.
    first = [c for c in ("sweep", "trial_id", "epoch") if c in data.column_names]
    last = [c for c in (WRITE_SEQ, WRITTEN_AT) if c in data.column_names]
    rest = sorted(c for c in data.column_names if c not in first and c not in last)
    return data.select(first + rest + last)


def _read_each(files: list[Path], base: Path, as_string: set[str], problems: Problems) -> pa.Table:
    """The files one at a time (each opened once), `as_string` columns cast to string, damaged ones skipped."""
    tables = []
    for f in files:
        try:
            with open(f, "rb") as handle:
                t = pq.read_table(handle)
        except FileNotFoundError:
            continue
        except DAMAGE as e:
            problems.damaged[f] = _one_line(e)
            continue
        for name in as_string & set(t.column_names):
            t = t.set_column(t.schema.get_field_index(name), name, pc.cast(t.column(name), pa.string()))
        sweep = next((p.split("=", 1)[1] for p in f.relative_to(base).parts[:-1] if p.startswith("sweep=")), None)
        tables.append(t.drop_columns([c for c in ("sweep",) if c in t.column_names])
                      .append_column("sweep", pa.array([sweep] * t.num_rows, pa.string())))
    if not tables:
        return pa.table({"sweep": pa.array([], pa.string()), "trial_id": pa.array([], pa.string())})
    return pa.concat_tables(tables, promote_options="permissive")


def _latest(data: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """Keep the newest row of each key: the largest `write_seq` (schema.py), whatever the writers' clocks say;
    `written_at` only orders rows of a store written before there was a sequence (null `write_seq`), which
    lose to every sequenced row. Rows are unique already in the common case."""
    keys = tuple(k for k in keys if k in data.column_names)
    if data.num_rows == 0 or data.group_by(list(keys)).aggregate([]).num_rows == data.num_rows:
        return data
    order = [c for c in (WRITE_SEQ, WRITTEN_AT) if c in data.column_names]
    frame = data.select([*keys, *order]).to_pandas()
    keep = frame.sort_values(order, kind="stable", na_position="first").drop_duplicates(list(keys), keep="last").index
    return data.take(pa.array(sorted(keep)))


def check_store(root: str | os.PathLike) -> list[str]:
    """What `cls results --check` prints: one paragraph per damaged file and per conflicting column of the
    store, each with what to do. Empty when every file reads and every column has one type."""
    found = []
    for table in TABLES:
        _, problems = read_table(root, table, report=True)
        for path, error in problems.damaged.items():
            found.append(f"damaged: {path}: {error}\n  what to do: {damaged_fix(path)}")
        for column, by_type in sorted(problems.conflicts.items()):
            lines = [f"conflicting: column {column!r} of {table} has {len(by_type)} types (readers read it as string):"]
            for kind, paths in sorted(by_type.items()):
                lines += [f"  {kind}: {p}" for p in paths]
            lines.append(f"  what to do: delete the files holding the wrong type for {column!r} (their trials "
                         f"run again with the sweep), or leave them and read the column as string")
            found.append("\n".join(lines))
    return found


def aggregate(df: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """Mean, sample standard deviation (ddof=1; NaN for a single seed) and count of `metric` over the rows of
    each group of `by` (typically: the seeds of one configuration). Rows whose metric is NaN are not counted.
    Columns: *by, mean, std, count."""
    grouped = df.groupby(by, dropna=False, sort=True)[metric]
    return grouped.agg(["mean", "std", "count"]).reset_index()


SEED_AXIS = "axis.seed"
_DONE = ("finished", "stopped")


def summary(trials: pd.DataFrame, metric: str = "eval_top1", by: list[str] | None = None) -> pd.DataFrame:
    """The table a sweep is read by: one row per configuration (by default the sweep's axes other than the
    seed), the final and best `metric` as mean, std and count over its finished or stopped trials.
    Columns: *by, final_mean, final_std, best_mean, best_std, n."""
    done = trials[trials["status"].isin(_DONE)] if "status" in trials else trials.iloc[0:0]
    if by is None:
        by = configuration_columns(trials)
    missing = [c for c in [*by, f"final_{metric}", f"best_{metric}"] if c not in trials.columns]
    if missing:
        have = sorted(c for c in trials.columns if c.startswith(("final_", "best_", "axis.")))
        raise ValueError(f"no column {missing[0]!r} in the trials table; columns to use: {have}")
    final = aggregate(done, by, f"final_{metric}").rename(columns={"mean": "final_mean", "std": "final_std"})
    best = aggregate(done, by, f"best_{metric}").rename(columns={"mean": "best_mean", "std": "best_std"})
    table = final.drop(columns="count").merge(best, on=by).rename(columns={"count": "n"})
    return table.sort_values("final_mean", ascending=False, ignore_index=True)


def format_summary(table: pd.DataFrame, metric: str) -> str:
    """`summary` as text: mean ± std per cell (std blank for one seed)."""
    def cell(mean: float, std: float) -> str:
        return f"{mean:.4f}" + (f" ± {std:.4f}" if pd.notna(std) else "")

    shown = table.drop(columns=["final_mean", "final_std", "best_mean", "best_std"]).copy()
    shown.insert(len(shown.columns) - 1, f"final {metric}", [cell(m, s) for m, s in
                                                            zip(table["final_mean"], table["final_std"])])
    shown.insert(len(shown.columns) - 1, f"best {metric}", [cell(m, s) for m, s in
                                                           zip(table["best_mean"], table["best_std"])])
    return shown.to_string(index=False)


# Config columns that say where or how a trial ran, not what it computed: never what sets configurations apart.
_HOSTING = ("trainer.storage", "trainer.name", "trainer.progress", "trainer.max_failures", "trainer.workers",
            "trainer.cpus_per_worker", "trainer.gpus_per_worker", "trainer.threads_per_worker",
            "trainer.keep_checkpoints", "trainer.checkpoint_metric", "trainer.checkpoint_mode",
            "data.num_workers", "results.", "seed")
_NOT_CONFIG = ("sweep", "trial_id", "experiment", "status", "error", "epochs_done", "attempts", "wall_s",
               "gpu_hours", "host", "git_commit", "started_at", WRITTEN_AT, WRITE_SEQ)


def configuration_columns(trials: pd.DataFrame) -> list[str]:
    """The columns that tell a sweep's configurations apart (seeds of one configuration are averaged): its
    axes but the seed, plus any other config column that varies without being set by the axes (the same
    sweep run again with a different trainer.epochs, say)."""
    axes = sorted(c for c in trials.columns if c.startswith("axis.") and c != SEED_AXIS)
    config = [c for c in trials.columns
              if c not in _NOT_CONFIG and not c.startswith(("axis.", "final_", "best_", *_HOSTING))
              and not c.endswith("_version") and trials[c].nunique(dropna=False) > 1]
    if axes:
        determined = trials.groupby(axes, dropna=False)[config].nunique(dropna=False).max() if config else {}
        config = [c for c in config if c not in {a[len("axis."):] for a in axes} and determined[c] > 1]
    return [*axes, *sorted(config)] or ["sweep"]
