"""Fixed costs of a sweep as a SLURM job, against the same sweep run with plain `cls sweep` in the same run.

    cluster/dev/slurm.sh up && source /tmp/cls-slurm/env    # or a real cluster's SLURM_CONF
    python bench/slurm_job.py [--rounds 2]

A one-trial, one-epoch sweep, so that fixed costs dominate. Per round, alternating:
- SLURM: `sbatch --wait slurm/sweep_dnffm.sh` on 2 nodes. Job start is the bootstrap's first log line;
  "first trial running" is when the head's dashboard first reports the trial's Train run RUNNING (polled
  every 0.1 s); sweep end is the bootstrap's "command exited" line, job exit its "exit" line and the moment
  `sbatch --wait` returns.
- local: `cls sweep` on this machine; start is the process start, first trial running as above through the
  local dashboard (`cls sweep` prints its address and token file).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP = "experiment: dnffm_digits\noverrides: [trainer.epochs=1]\naxes:\n  seed: {grid: [0]}\nmetric: eval_top1\n" \
        "mode: max\nresources: {workers: 2, cpus_per_worker: 1, gpus_per_worker: 0, max_concurrent: 1}\n"


def _runs(dashboard: str, token: str | None) -> list[dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{dashboard}/api/train/v2/runs/v1", headers=headers),
                                    timeout=2) as r:
            return json.load(r)["train_runs"]
    except OSError:
        return []


def _first_running(dashboard_of, proc: subprocess.Popen) -> float | None:
    while proc.poll() is None:
        found = dashboard_of()
        if found and any(r["status"] == "RUNNING" for r in _runs(*found)):
            return time.time()
        time.sleep(0.1)
    return None


def _stamp(log: str, pattern: str) -> float:
    match = re.search(r"\[cls-cluster (\d\d:\d\d:\d\d\.\d{3})\] " + pattern, log)
    clock = datetime.strptime(match.group(1), "%H:%M:%S.%f").time()
    return datetime.combine(datetime.now().date(), clock).timestamp()


def slurm_round(work: Path, sweep: Path) -> dict[str, float]:
    jobs = work / "jobs"
    env = {**os.environ, "CLS_JOBS_DIR": str(jobs), "CLS_RESULTS": str(work / "results"),
           "CLS_RUNS": str(work / "runs"), "CLS_PYTHON": sys.executable}
    out = work / "job.out"
    proc = subprocess.Popen(["sbatch", "--wait", "--nodes=2", "--gpus-per-node=1", "--cpus-per-task=2", "--time=20",
                             f"--output={out}", "slurm/sweep_dnffm.sh", str(sweep)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL)

    def dashboard():
        found = list(jobs.glob("*/cluster.json"))
        if not found:
            return None
        info = json.loads(found[0].read_text())
        return info["dashboard"], Path(info["token_path"]).read_text()

    running = _first_running(dashboard, proc)
    proc.wait()
    returned = time.time()
    log = out.read_text()
    start, up = _stamp(log, r"job \d+ on"), _stamp(log, r"Ray cluster up")
    ended, exited = _stamp(log, r"command exited with 0"), _stamp(log, r"exit 0")
    return {"start_to_cluster_up": up - start, "start_to_first_trial_running": running - start,
            "sweep_end_to_bootstrap_exit": exited - ended, "sweep_end_to_sbatch_return": returned - ended}


def local_round(work: Path, sweep: Path) -> dict[str, float]:
    env = {**os.environ, "CLS_RESULTS": str(work / "results"), "CLS_RUNS": str(work / "runs")}
    env.pop("RAY_ADDRESS", None)
    out = open(work / "local.out", "w+")
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "cls", "sweep", str(sweep)], cwd=work, env=env, stdout=out,
                            stderr=subprocess.STDOUT)

    def dashboard():
        # The local cluster's own token (cluster/local.py), named on the line that gives its dashboard.
        match = re.search(r"Ray dashboard: (\S+) .*Token: (\S+) ", Path(out.name).read_text())
        return (match.group(1), Path(match.group(2)).read_text().strip()) if match else None

    running = _first_running(dashboard, proc)
    proc.wait()
    return {"start_to_first_trial_running": running - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if "SLURM_CONF" not in os.environ and subprocess.run(["scontrol", "ping"], capture_output=True).returncode:
        sys.exit("no SLURM: start the dev one (cluster/dev/slurm.sh up) and source its env file")
    results: dict[str, list[dict[str, float]]] = {"slurm": [], "local": []}
    for r in range(args.rounds):
        for kind, fn in (("slurm", slurm_round), ("local", local_round)):
            with tempfile.TemporaryDirectory(prefix="cls-bench-") as tmp:
                sweep = Path(tmp) / "bench1.yaml"
                sweep.write_text(SWEEP)
                results[kind].append(fn(Path(tmp), sweep))
                print(f"round {r + 1} {kind}: " + ", ".join(f"{k} {v:.1f} s" for k, v in results[kind][-1].items()),
                      flush=True)
    print()
    for kind, rounds in results.items():
        for key in rounds[0]:
            values = [x[key] for x in rounds]
            print(f"{kind:5s} {key:30s} median {statistics.median(values):5.1f} s  ({', '.join(f'{v:.1f}' for v in values)})")
    slurm = statistics.median(x["start_to_first_trial_running"] for x in results["slurm"])
    local = statistics.median(x["start_to_first_trial_running"] for x in results["local"])
    print(f"\nfirst trial running: SLURM job / local run = {slurm / local:.2f}")


if __name__ == "__main__":
    main()
