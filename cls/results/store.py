"""The on-disk layout of the results store, its atomic Parquet writes, and `compact`.

    ROOT/epochs/sweep=S/trial-{ID}.parquet   live file of trial ID: all its epochs so far, one row per epoch
    ROOT/trials/sweep=S/trial-{ID}.parquet   live file of trial ID: its one summary row
    ROOT/{epochs,trials}/sweep=S/part-{H}.parquet   compacted rows of many finished trials (see `compact`)
    ROOT/.../.{name}.{random}.tmp            a write in progress; readers skip names starting with "." or "_"

Why this layout:
- Each live file has one owner, the trial's rank-0 writer, which rewrites it whole on every write: read the
  file, drop the rows it replaces (same epoch, or the trial row), add the new ones, write a temp file in the
  same directory, fsync, os.replace. So concurrent trials need no locks, a re-run epoch replaces its row,
  and a reader (or a SIGKILL) only ever meets complete files. Two writers of the same trial (a stale and a
  resumed worker) each replace the file whole: the last complete write wins, nothing is corrupted.
- Plain `pandas.read_parquet(ROOT + "/epochs")` works: `sweep` comes from the hive directory, and sweep
  names start with a letter so it is never inferred as a number. While trials are still writing, a plain
  read can fail (never return wrong rows) when a file is replaced between pyarrow listing it and reading
  it; `load` retries those.
- One file per trial is too slow to read at scale (10,000 files: ~4 s on 2 cores), so `compact(root, sweep)`
  merges the live files of finished trials and the earlier parts into one `part-*.parquet` per table and
  sweep (1M epoch rows: ~0.1 s).
- Every row carries `write_seq`: (attempt << 32) + a counter of its writer, the attempt one more than any
  already in the store for that trial (schema.py), and `written_at` (ns since the epoch, informative only).
  `cls.results.load` keeps, per key ((sweep, trial_id) or (sweep, trial_id, epoch)), the row of the largest
  `write_seq`: a host whose clock is behind still wins with its newer row. That covers the two windows where
  a plain reader can see a key twice: between `compact` renaming its part into place and unlinking its
  inputs (or after a crash there, until the next compact), and a trial written again after it was compacted
  (a resumed trial).

Schemas: one declared type per column (schema.py): `trial_id` string, `epoch` int64, every metric float64,
`written_at` and `write_seq` int64, config columns as their config declares. A file's columns are
those its trial wrote, so files can differ (a later trial adds `eval_top5`). Plain pandas takes the schema
of the first file it opens and may drop such a column; `load` unifies the schemas of all files, and
`compact` writes its part with the unified schema, so once a sweep is compacted to its one part plain pandas
sees every column of that sweep too (across sweeps it still takes the first file's columns: use `load`).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from cls.data.layout import write_atomic

from .schema import WRITE_SEQ, WRITTEN_AT

TABLES = ("epochs", "trials")
KEYS = {"epochs": ("sweep", "trial_id", "epoch"), "trials": ("sweep", "trial_id")}
STATUSES = ("running", "finished", "failed", "stopped", "interrupted")  # interrupted: resumes when run again
TERMINAL = ("finished", "failed", "stopped")  # no writer will touch such a trial again (resumes aside)
LIVE_PREFIX, PART_PREFIX = "trial-", "part-"

# Names become file and directory names; a sweep name must start with a letter so that hive partitioning
# infers `sweep` as a string, never an integer (`sweep=2024`).
_SWEEP = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
_TRIAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def default_root() -> str:
    """The store's root when none is given: $CLS_RESULTS, else ./results (as the `results.root` config)."""
    return os.environ.get("CLS_RESULTS", "results")


# A name becomes part of file names (".trial-{ID}.parquet.{hex}.tmp", Tune's trial directories) that must
# stay under the 255 bytes a file name may have.
MAX_NAME = 100


def check_name(kind: str, name: str) -> str:
    pattern = _SWEEP if kind == "sweep" else _TRIAL
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise ValueError(f"{kind} name {name!r} must match {pattern.pattern} (it becomes a file or directory name)")
    if len(name) > MAX_NAME:
        raise ValueError(f"{kind} name {name[:40]!r}... is {len(name)} characters long; at most {MAX_NAME} (it becomes "
                         f"part of file names)")
    return name


def sweep_dir(root: str | os.PathLike, table: str, sweep: str) -> Path:
    if table not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, got {table!r}")
    return Path(root) / table / f"sweep={check_name('sweep', sweep)}"


def live_file(root: str | os.PathLike, table: str, sweep: str, trial_id: str) -> Path:
    return sweep_dir(root, table, sweep) / f"{LIVE_PREFIX}{check_name('trial', trial_id)}.parquet"


def data_files(directory: Path) -> list[Path]:
    """The complete Parquet files under `directory`, as pyarrow's readers see them (hidden names skipped)."""
    if not directory.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
        found += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".parquet") and not f.startswith((".", "_"))]
    return found


def write_table_atomic(path: Path, table: pa.Table) -> None:
    """Write `table` to `path` through a hidden temp file + fsync + os.replace (see `write_atomic`)."""
    sink = pa.BufferOutputStream()
    # Row groups of 128k rows let pyarrow decode a big part on several threads.
    pq.write_table(table, sink, row_group_size=128 * 1024)
    write_atomic(path, sink.getvalue().to_pybytes())


class StoreWarning(UserWarning):
    """Something in the store that readers skip or read differently: a damaged file, a conflicting column."""


# What pyarrow raises on a file that is not (or no longer) valid Parquet: a truncated footer, bad magic bytes.
DAMAGE = (OSError, pa.ArrowInvalid)


def damaged_fix(path: Path) -> str:
    hidden = path.with_name(f".{path.name}.damaged")
    return (f"move it aside (mv {path} {hidden}: readers skip hidden names) or delete it; running the sweep again "
            f"rewrites its trials' rows")


def read_file(path: Path, repair: bool = False) -> pa.Table | None:
    """A live file's rows, or None if there is none (first write, or compacted away). A damaged file is None
    too, with a warning naming it, when `repair` (its owner is about to rewrite it whole); else it raises."""
    try:
        # Open once: pq.read_table(path) opens the path twice (footer, then data), and a writer's os.replace
        # in between makes it parse two different files ("Unexpected end of stream").
        with open(path, "rb") as f:
            return pq.read_table(f)
    except FileNotFoundError:
        return None
    except DAMAGE as e:
        if not repair:
            raise
        warnings.warn(StoreWarning(f"{path} is damaged ({_one_line(e)}): its earlier rows are lost; writing it anew"),
                      stacklevel=2)
        return None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def concat(tables: Iterable[pa.Table]) -> pa.Table:
    """Concatenate tables whose columns differ (schema drift): missing columns become nulls, int + float -> float."""
    return pa.concat_tables(list(tables), promote_options="permissive")


def compact(root: str | os.PathLike, sweep: str) -> dict[str, int]:
    """Merge the sweep's parts and the live files of its terminal trials into one part per table.

    Idempotent (a second call finds one part and no terminal live files, and does nothing) and safe to run
    while trials are still writing: live files of running trials are left alone, and a live file that
    changed since it was read (a resumed trial wrote again) is kept; `load` prefers its newer rows.
    Returns the number of files merged per table.
    """
    from .read import load, read_table  # read.py imports this module

    trials = load(root, "trials", sweep=sweep)
    terminal = set(trials.loc[trials["status"].isin(TERMINAL), "trial_id"]) if "status" in trials else set()
    merged = {}
    for table in TABLES:
        directory = sweep_dir(root, table, sweep)
        files = data_files(directory)
        parts = [f for f in files if f.name.startswith(PART_PREFIX)]
        done = [f for f in files if f.name.startswith(LIVE_PREFIX)
                and f.name[len(LIVE_PREFIX):-len(".parquet")] in terminal]
        if not done and len(parts) <= 1:
            merged[table] = 0
            continue
        # Remember what each input was when read, to leave alone a live file rewritten meanwhile.
        inputs = [(f, _identity(f)) for f in parts + done]
        data, problems = read_table(root, table, files=[f for f, _ in inputs], report=True)
        if problems.conflicts:
            # A part must have one type per column; leave the files as they are (readers cope, with a warning).
            warnings.warn(StoreWarning(f"not compacting {table} of sweep {sweep}: its files disagree on the type of "
                                       f"{', '.join(sorted(problems.conflicts))}; see `cls results --check`"))
            merged[table] = 0
            continue
        inputs = [(f, identity) for f, identity in inputs if f not in problems.damaged]  # never unlink those
        data = data.drop_columns("sweep")
        # Deterministic name: compacting the same trials again replaces the same file.
        ids = sorted(set(data.column("trial_id").to_pylist()))
        target = directory / f"{PART_PREFIX}{hashlib.sha1(chr(10).join(ids).encode()).hexdigest()[:16]}.parquet"
        write_table_atomic(target, data)
        for f, identity in inputs:
            if f != target and _identity(f) == identity:
                f.unlink(missing_ok=True)
        merged[table] = len(inputs)
    return merged


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
