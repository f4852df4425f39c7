"""Trial leases on real files: exclusive under concurrent takers, expiry on the storage's clock, takeover."""

import io
import multiprocessing as mp
import os
import subprocess
import time

import pandas as pd

from cls.results import leases


def _take(root, barrier, queue):
    barrier.wait()
    got = leases.acquire(root, "sw", "t1", ttl_s=30, job=f"job-{os.getpid()}")
    queue.put(isinstance(got, leases.Lease))
    barrier.wait()  # the winner lives until every taker has tried (a dead holder's lease is free)


def test_exactly_one_of_many_concurrent_takers_gets_the_lease(tmp_path):
    ctx = mp.get_context("fork")
    n = 8
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_take, args=(tmp_path, barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    won = [queue.get(timeout=5) for _ in range(n)]
    assert won.count(True) == 1
    assert list(leases.holders(tmp_path, "sw")) == ["t1"]


def test_a_live_lease_names_its_holder_and_a_released_one_is_free(tmp_path):
    mine = leases.acquire(tmp_path, "sw", "t1", job="A")
    other = leases.acquire(tmp_path, "sw", "t1", job="B")
    assert isinstance(other, leases.Holder) and other.job == "A" and other.pid == os.getpid()
    assert "job A" in other.describe()
    mine.release()
    assert isinstance(leases.acquire(tmp_path, "sw", "t1", job="B"), leases.Lease)


def _age(path, seconds):
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_an_expired_lease_is_taken_over_and_its_old_holder_learns_it(tmp_path):
    old = leases.acquire(tmp_path, "sw", "t1", ttl_s=5, job="dead")
    _age(old.path, 60)  # the holder stopped renewing a minute ago
    new = leases.acquire(tmp_path, "sw", "t1", ttl_s=5, job="alive")
    assert isinstance(new, leases.Lease) and new.took_over.job == "dead"
    assert leases.holders(tmp_path, "sw")["t1"].job == "alive"
    assert old.renew() is False and old.lost
    old.release()  # does not remove the new holder's lease
    assert leases.holders(tmp_path, "sw")["t1"].job == "alive"
    assert not [p for p in old.path.parent.iterdir() if p.name.startswith(".")]  # no temp or probe left


def test_a_lease_of_a_dead_process_on_this_host_is_expired_at_once(tmp_path):
    child = subprocess.Popen(["sleep", "0"])
    child.wait()
    lease = leases.acquire(tmp_path, "sw", "t1", job="gone")
    lease.row["pid"] = child.pid  # as if that (now dead) process had taken it
    lease.renew()
    assert leases.holders(tmp_path, "sw")["t1"].expired
    assert isinstance(leases.acquire(tmp_path, "sw", "t1", job="B"), leases.Lease)


def test_expiry_reads_the_storage_clock_not_the_holders(tmp_path):
    # A holder whose clock is an hour behind writes renewed_at an hour in the past; the file's mtime (the
    # storage's clock) is fresh, so the lease is live.
    lease = leases.acquire(tmp_path, "sw", "t1", ttl_s=5, job="skewed")
    lease.row["renewed_at"] = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1)
    assert lease.renew()
    assert isinstance(leases.acquire(tmp_path, "sw", "t1", ttl_s=5, job="B"), leases.Holder)


def test_heartbeat_keeps_a_lease_alive_past_its_ttl(tmp_path):
    lease = leases.acquire(tmp_path, "sw", "t1", ttl_s=0.4, job="A")
    beat = leases.Heartbeat(lease)
    try:
        time.sleep(1.2)  # three ttls: without renewals the lease would have expired
        assert not leases.holders(tmp_path, "sw")["t1"].expired
        assert isinstance(leases.acquire(tmp_path, "sw", "t1", ttl_s=0.4, job="B"), leases.Holder)
    finally:
        beat.stop()


def test_a_damaged_lease_file_is_replaced(tmp_path):
    path = leases.lease_file(tmp_path, "sw", "t1")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PAR1 not really")
    # A damaged lease names no holder; it is live until it is as old as a lease's ttl, then taken over.
    fresh = leases.acquire(tmp_path, "sw", "t1", job="B")
    assert isinstance(fresh, leases.Holder) and "damaged" in fresh.job
    _age(path, 3600)
    assert isinstance(leases.acquire(tmp_path, "sw", "t1", job="B"), leases.Lease)
    assert leases.holders(tmp_path, "sw")["t1"].job == "B"


def test_leases_read_with_plain_pandas(tmp_path):
    leases.acquire(tmp_path, "sw", "t1", job="A")
    leases.acquire(tmp_path, "sw", "t2", job="B")
    frame = pd.read_parquet(tmp_path / "leases")
    assert sorted(frame["trial_id"]) == ["t1", "t2"] and set(frame["sweep"]) == {"sw"}
    table = leases.leases(tmp_path, "sw")
    assert sorted(table["job"]) == ["A", "B"] and not table["expired"].any()


def test_cls_status_names_who_holds_each_trial(tmp_path):
    import subprocess
    import sys

    leases.acquire(tmp_path, "sw", "t1", job="4242_3")
    out = subprocess.run([sys.executable, "-m", "cls", "status", "--sweep", "sw", "--results", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "1 trial(s) held" in out.stdout and "t1  job 4242_3 on" in out.stdout and "renewed" in out.stdout
    empty = subprocess.run([sys.executable, "-m", "cls", "status", "--sweep", "other", "--results", str(tmp_path)],
                           capture_output=True, text=True, timeout=120)
    assert "no trial is held" in empty.stdout


def _job(root, ids, queue):
    from ray.tune.search import Searcher

    from cls.results import ResultsWriter
    from cls.sweep.driver import _ClaimingSearcher

    searcher = _ClaimingSearcher(str(root), "sw", ids, ttl=30.0, rerun_failed=False, out=io.StringIO(), poll_s=0.05)
    assert searcher.console.progress is None
    ran = []
    while (got := searcher.suggest("x")) != Searcher.FINISHED:
        if got is not None:
            time.sleep(0.02)  # the trial
            ResultsWriter(root, "sw", got["trial_id"]).write_trial({"status": "finished"})  # its last row,
            searcher.release(got["trial_id"])  # then its lease, as the driver's callback does
            ran.append(got["trial_id"])
    queue.put(ran)


def test_jobs_sharing_a_sweep_through_the_searcher_run_each_trial_once(tmp_path):
    """Three jobs' searchers over one store (no Ray: the claiming, store reads and releases of the driver):
    a trial finished by one job between another's read of the store and its lease is not run again."""
    ctx = mp.get_context("fork")
    ids = [f"t{i:02d}" for i in range(12)]
    queue = ctx.Queue()
    procs = [ctx.Process(target=_job, args=(tmp_path, ids, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    ran = [t for _ in procs for t in queue.get(timeout=120)]
    for p in procs:
        p.join(30)
    assert sorted(ran) == ids


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_sweep_console_prints_plain_lines_and_a_progress_bar_only_on_a_terminal():
    from cls.sweep.driver import SweepConsole

    plain = io.StringIO()
    console = SweepConsole(plain, total=2)
    console.print("[1/2] t1 started: seed=0")
    console.advance()
    console.close()
    assert plain.getvalue() == "[1/2] t1 started: seed=0\n"  # a log file gets the lines and nothing else

    tty = _Terminal()
    console = SweepConsole(tty, total=2)
    console.print("[1/2] t1 started: seed=0")
    console.advance()
    console.close()
    shown = tty.getvalue()
    assert "[1/2] t1 started: seed=0" in shown and "1/2" in shown.split("seed=0", 1)[1]  # the bar's count
