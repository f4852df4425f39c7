"""How well several jobs share one sweep through the store's trial leases, and what a claim costs.

    python bench/claims.py [--trials 16] [--trial-s 1.0] [--jobs 1 2 4] [--claims 200]

1. Makespan: N job processes run the same 16-trial sweep against one store (a local disk), each through
   the driver's real `_ClaimingSearcher` (the store reads, leases and heartbeats a sweep uses); a trial is
   trivial (it sleeps --trial-s, then writes its finished row, as a trial's driver does). Reported against
   the ideal, trials x trial_s / N. Ray is not started: what is measured is the sharing, not Ray's start-up.
2. Claim overhead: median wall time of one claim (acquire + heartbeat start + release) over --claims
   trials, with a store of that many trials.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

from cls.results import ResultsWriter, leases
from cls.sweep.driver import _ClaimingSearcher
from ray.tune.search import Searcher

SWEEP = "bench"


def job(root: str, ids: list[str], trial_s: float, start: float, ran: mp.Queue) -> None:
    searcher = _ClaimingSearcher(root, SWEEP, ids, ttl=30.0, rerun_failed=False, out=io.StringIO(), poll_s=0.2)
    while time.time() < start:
        time.sleep(0.001)
    done = []
    while True:
        got = searcher.suggest("tune-id")
        if got == Searcher.FINISHED:
            break
        if got is None:
            continue
        time.sleep(trial_s)  # the trivial trial
        ResultsWriter(root, SWEEP, got["trial_id"]).write_trial({"status": "finished"})
        searcher.release(got["trial_id"])
        done.append(got["trial_id"])
    ran.put(done)


def makespan(n_jobs: int, trials: int, trial_s: float) -> tuple[float, list[str]]:
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory() as root:
        ids = [f"t{i:03d}" for i in range(trials)]
        ran = ctx.Queue()
        start = time.time() + 0.5
        procs = [ctx.Process(target=job, args=(root, ids, trial_s, start, ran)) for _ in range(n_jobs)]
        for p in procs:
            p.start()
        runs = [ran.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        elapsed = time.time() - start
    return elapsed, [t for r in runs for t in r]


def claim_overhead(n: int) -> float:
    with tempfile.TemporaryDirectory() as root:
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            lease = leases.acquire(root, SWEEP, f"t{i:05d}", ttl_s=60)
            beat = leases.Heartbeat(lease)
            beat.stop()
            lease.release()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--trial-s", type=float, default=1.0)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--claims", type=int, default=200)
    args = parser.parse_args()

    print(f"| jobs | makespan (s) | ideal (s) | makespan / ideal | trials run (each once?) |")
    print("|---|---|---|---|---|")
    for n in args.jobs:
        elapsed, ran = makespan(n, args.trials, args.trial_s)
        ideal = args.trials * args.trial_s / n
        once = "yes" if sorted(ran) == sorted(set(ran)) and len(ran) == args.trials else f"NO ({len(ran)})"
        print(f"| {n} | {elapsed:.2f} | {ideal:.2f} | {elapsed / ideal:.2f} | {len(ran)} ({once}) |")
    print(f"\nclaim (acquire + heartbeat + release), median of {args.claims}: "
          f"{claim_overhead(args.claims) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
