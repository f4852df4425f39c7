"""Reading the results store: `load` (deduplicated, schema-unified) and `aggregate` (mean ± std over seeds)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .store import KEYS, TABLES, WRITTEN_AT, data_files, sweep_dir

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
    """
    return read_table(root, table, sweep=sweep, filters=filters).to_pandas()


def read_table(root: str | os.PathLike, table: str, sweep: str | None = None, filters: Any = None,
               files: Sequence[Path] | None = None) -> pa.Table:
    """`load` as an Arrow table. `files` (for `compact`): read exactly these files instead of listing."""
    if table not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, got {table!r}")
    base = Path(root) / table
    for attempt in range(_RETRIES):
        listed = list(files) if files is not None else data_files(sweep_dir(root, table, sweep) if sweep else base)
        try:
            data = _read(listed, base)
            break
        except (OSError, pa.ArrowInvalid):
            if files is not None or attempt == _RETRIES - 1:
                raise
            time.sleep(0.01 * 2**attempt)
    data = _latest(data, KEYS[table])
    if filters is not None:
        data = data.filter(filters if isinstance(filters, pc.Expression) else pq.filters_to_expression(filters))
    return data


def _read(files: list[Path], base: Path) -> pa.Table:
    if not files:
        return pa.table({"sweep": pa.array([], pa.string()), "trial_id": pa.array([], pa.string())})
    # pyarrow takes a dataset's schema from one file; unify all of them so a column that appears in a later
    # trial (schema drift) is kept, with nulls for the trials that lack it.
    schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
    dataset = ds.dataset([str(f) for f in files], schema=schema.append(pa.field("sweep", pa.string())),
                         format="parquet", partitioning=_PARTITIONING, partition_base_dir=str(base))
    data = dataset.to_table()
    # Columns in one order whichever file came first: keys, the rest by name, bookkeeping last.
    first = [c for c in ("sweep", "trial_id", "epoch") if c in data.column_names]
    rest = sorted(c for c in data.column_names if c not in first and c != WRITTEN_AT)
    return data.select(first + rest + [WRITTEN_AT] * (WRITTEN_AT in data.column_names))


def _latest(data: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """Keep the newest row (largest `written_at`) of each key; rows are unique already in the common case."""
    keys = tuple(k for k in keys if k in data.column_names)
    if data.num_rows == 0 or data.group_by(list(keys)).aggregate([]).num_rows == data.num_rows:
        return data
    frame = data.select([*keys, WRITTEN_AT]).to_pandas()
    keep = frame.sort_values(WRITTEN_AT, kind="stable").drop_duplicates(list(keys), keep="last").index
    return data.take(pa.array(sorted(keep)))


def aggregate(df: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """Mean, sample standard deviation (ddof=1; NaN for a single seed) and count of `metric` over the rows of
    each group of `by` (typically: the seeds of one configuration). Rows whose metric is NaN are not counted.
    Columns: *by, mean, std, count."""
    grouped = df.groupby(by, dropna=False, sort=True)[metric]
    return grouped.agg(["mean", "std", "count"]).reset_index()
