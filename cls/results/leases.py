"""Trial leases: which job holds which trial, so that several jobs (an array, a sweep submitted twice, two
`cls sweep` of one file) share a sweep's trials and none runs twice.

    ROOT/leases/sweep=S/trial-{ID}.parquet   the lease on trial ID: one row (job, host, pid, token, times)
    ROOT/leases/sweep=S/.now.{random}        a probe file, written and removed to read the storage's clock

`pandas.read_parquet(f"{ROOT}/leases")` lists the leases held now (with the `sweep` column); so does
`leases(root, sweep)`, which adds `age_s`, the seconds since the holder last renewed.

Why it is built this way (the store lives on a shared file system, typically NFS):
- Taking a lease is one `os.link` of a complete temp file to the lease's name. `link` is atomic and
  exclusive on every POSIX file system, NFS included (where O_EXCL and flock are not reliable), and fails
  with EEXIST if anyone holds the lease. On NFS a lost reply can make a link that succeeded report an error,
  so success is decided by the temp file's link count (2 after a link that happened), as `open(2)` advises.
- A holder renews its lease every `ttl / 4` seconds by rewriting it (temp file, `os.replace`), after checking
  that the token in it is still its own. A lease is expired when its file's mtime is more than `ttl` behind
  the storage's clock. Both times come from the file server (the mtime of the lease and of a probe file
  written just then), never from two hosts' clocks, so a host whose clock is wrong can neither steal a live
  lease nor keep a dead one.
- Taking over an expired lease renames it to a name only the taker uses, then checks that what it moved is
  the expired lease it read (same token). A taker that lost the race to another (it moved a fresh lease)
  links it back. Then it takes the lease as a fresh one.
- A job that dies (SIGKILL, a node lost) stops renewing: its leases expire after `ttl` and the next job that
  looks takes the trial over and resumes it from its checkpoint. On the host it ran on, a lease whose process
  is gone counts as expired at once.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .store import check_name, data_files

LEASES = "leases"
COMPACT = "_compact"  # the lease of the job compacting the sweep (hidden from pandas: it starts with "_")
DEFAULT_TTL_S = 60.0
SCHEMA = pa.schema([
    ("trial_id", pa.string()), ("job", pa.string()), ("host", pa.string()), ("pid", pa.int64()),
    ("token", pa.string()), ("acquired_at", pa.timestamp("ns", tz="UTC")),
    ("renewed_at", pa.timestamp("ns", tz="UTC")), ("ttl_s", pa.float64()),
])


def lease_dir(root: str | os.PathLike, sweep: str) -> Path:
    return Path(root) / LEASES / f"sweep={check_name('sweep', sweep)}"


def lease_file(root: str | os.PathLike, sweep: str, trial_id: str) -> Path:
    if trial_id == COMPACT:
        return lease_dir(root, sweep) / f"{COMPACT}.parquet"
    return lease_dir(root, sweep) / f"trial-{check_name('trial', trial_id)}.parquet"


def job_name() -> str:
    """This process's job, as a lease names it: the SLURM job (and array task) if there is one."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and (
        f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}")
    return job or os.environ.get("SLURM_JOB_ID") or f"local-{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as its file says."""

    trial_id: str
    job: str
    host: str
    pid: int
    token: str
    age_s: float  # seconds since it was last renewed, on the storage's clock
    ttl_s: float
    acquired_at: pd.Timestamp | None = None  # on the holder's clock

    @property
    def expired(self) -> bool:
        """Not renewed for its ttl, or held by a process of this host that no longer exists (a job killed
        here need not be waited for)."""
        return self.age_s > self.ttl_s or (self.host == socket.gethostname() and not _alive(self.pid))

    def describe(self) -> str:
        return f"job {self.job} (host {self.host}, pid {self.pid}), renewed {self.age_s:.0f} s ago"


class Lease:
    """A lease this process holds. `renew()` keeps it; `release()` gives it up."""

    def __init__(self, path: Path, row: dict, took_over: Holder | None = None) -> None:
        self.path, self.row = path, row
        self.lost = False
        self.took_over = took_over  # the expired lease this one replaced, if any

    @property
    def token(self) -> str:
        return self.row["token"]

    def renew(self) -> bool:
        """Rewrite the lease (fresh mtime) if it is still ours; False (and `lost`) if someone took it over."""
        current = _read(self.path)
        if current is None or current["token"] != self.token:
            self.lost = True
            return False
        self.row = {**self.row, "renewed_at": pd.Timestamp.now(tz="UTC")}
        tmp = _write_temp(self.path, self.row)
        os.replace(tmp, self.path)
        return True

    def release(self) -> None:
        """Remove the lease if it is still ours (a lease taken over after it expired is left to its new holder)."""
        current = _read(self.path)
        if current is not None and current["token"] == self.token:
            self.path.unlink(missing_ok=True)


def acquire(root: str | os.PathLike, sweep: str, trial_id: str, ttl_s: float = DEFAULT_TTL_S,
            job: str | None = None) -> Lease | Holder:
    """Take the lease on `trial_id`: a `Lease` if this process now holds it, else the live `Holder`.

    An expired lease is taken over (see the module docstring); the holder of a live one is returned."""
    path = lease_file(root, sweep, trial_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    now = pd.Timestamp.now(tz="UTC")
    row = {"trial_id": trial_id, "job": job or job_name(), "host": socket.gethostname(), "pid": os.getpid(),
           "token": secrets.token_hex(16), "acquired_at": now, "renewed_at": now, "ttl_s": float(ttl_s)}
    expired = None
    for _ in range(8):  # each pass either takes the lease, finds a live holder, or clears an expired one
        if _link_exclusive(path, row):
            return Lease(path, row, took_over=expired)
        holder = holder_of(path)
        if holder is None:
            continue  # released between our link and our read: try again
        if not holder.expired:
            return holder
        expired = holder
        _remove_expired(path, holder.token)
    raise RuntimeError(f"could not take or read the lease {path} after 8 tries: is another process "
                       "rewriting it continuously?")


def holder_of(path: Path) -> Holder | None:
    """The holder of the lease at `path`, with its age on the storage's clock; None if there is no lease."""
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    row = _read(path)
    age = max((storage_now_ns(path.parent) - mtime) / 1e9, 0.0)
    if row is None:
        if not path.exists():
            return None
        # Damaged (a failing disk, a torn copy): it names no holder, and expires like any lease not renewed.
        return Holder(path.name[len("trial-"):-len(".parquet")], "unknown (damaged lease file)", "?", -1, "",
                      age, DEFAULT_TTL_S)
    return Holder(row["trial_id"], row["job"], row["host"], int(row["pid"]), row["token"], age,
                  float(row["ttl_s"]), pd.Timestamp(row["acquired_at"]))


def holders(root: str | os.PathLike, sweep: str) -> dict[str, Holder]:
    """trial id -> its holder, for every lease of the sweep."""
    found = {}
    for path in data_files(lease_dir(root, sweep)):
        holder = holder_of(path)
        if holder is not None:
            found[holder.trial_id] = holder
    return found


def leases(root: str | os.PathLike, sweep: str) -> pd.DataFrame:
    """The sweep's leases as a frame: who holds each trial, since when (`held_s`, on this host's clock),
    seconds since the last renewal (`age_s`, on the storage's) and whether the lease has `expired`."""
    now = pd.Timestamp.now(tz="UTC")
    columns = ["trial_id", "job", "host", "pid", "held_s", "age_s", "ttl_s", "expired"]
    rows = [{"trial_id": h.trial_id, "job": h.job, "host": h.host, "pid": h.pid,
             "held_s": (now - h.acquired_at).total_seconds() if h.acquired_at is not None else float("nan"),
             "age_s": h.age_s, "ttl_s": h.ttl_s, "expired": h.expired}
            for h in holders(root, sweep).values() if h.trial_id != COMPACT]
    return pd.DataFrame(rows, columns=columns).sort_values("trial_id", ignore_index=True)


def storage_now_ns(directory: Path) -> int:
    """The file server's clock: the mtime of a file created in `directory` just now."""
    probe = directory / f".now.{secrets.token_hex(6)}"
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.write(fd, b"0")  # a write makes the server stamp the mtime on NFS, not the client's create time
        return os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


class Heartbeat:
    """Renews a lease every `ttl / 4` seconds on a daemon thread until `stop()`; `lost` if it was taken over."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.row['trial_id']}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = self.lease.row["ttl_s"] / 4
        while not self._stop.wait(interval):
            try:
                if not self.lease.renew():
                    return
            except OSError:
                continue  # a storage hiccup: try again next beat; the lease lives for ttl meanwhile

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True  # unknown (a damaged lease): only its age can tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _row_table(row: dict) -> pa.Table:
    return pa.Table.from_pylist([row], schema=SCHEMA)


def _write_temp(path: Path, row: dict) -> Path:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    with open(tmp, "xb") as f:
        pq.write_table(_row_table(row), f)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _read(path: Path) -> dict | None:
    try:
        with open(path, "rb") as f:
            rows = pq.read_table(f).to_pylist()
    except FileNotFoundError:
        return None
    except (OSError, pa.ArrowException):
        return None  # a lease damaged by a failing disk holds nothing; it is replaced when taken over
    return rows[0] if rows else None


def _link_exclusive(path: Path, row: dict) -> bool:
    tmp = _write_temp(path, row)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as e:  # NFS: a retried link whose first try succeeded reports an error
            if e.errno not in (errno.EIO, errno.ETIMEDOUT) or os.stat(tmp).st_nlink != 2:
                raise
        return os.stat(tmp).st_nlink == 2
    finally:
        tmp.unlink(missing_ok=True)


def _remove_expired(path: Path, token: str) -> None:
    """Move the expired lease with `token` out of the way; put back a fresh lease moved by mistake."""
    aside = path.with_name(f".{path.name}.expired.{secrets.token_hex(6)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another taker moved it first
    moved = _read(aside)
    if moved is not None and moved["token"] != token:
        try:
            os.link(aside, path)  # it was a fresh lease another taker had just made: give it back
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)


def wait_released(root: str | os.PathLike, sweep: str, trial_ids: list[str], poll_s: float = 2.0) -> None:
    """Block until none of `trial_ids` has a live lease (each was released, or its holder died and it expired)."""
    while True:
        held = holders(root, sweep)
        if not any(t in held and not held[t].expired for t in trial_ids):
            return
        time.sleep(poll_s)
