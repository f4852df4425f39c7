"""`cls status`: the running trials of the SLURM jobs started here, from each job's Ray dashboard.

Every job's bootstrap leaves `cluster.json` (dashboard address, token file, results store) in
$CLS_JOBS_DIR/<job id> (default ~/.cls/jobs) while its cluster is up. The dashboard's REST API
(`/api/train/v2/runs/v1`) says which Train runs, i.e. trials, are running, since when and on which nodes;
their latest epoch's metrics come from the results store, where every epoch is written.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
from pathlib import Path

from cluster.ray_slurm import dashboard_get

ACTIVE = {"INITIALIZING", "SCHEDULING", "RUNNING", "RESTARTING", "RESIZING"}
METRICS = ("train_loss", "eval_loss", "eval_top1")


def jobs_dir() -> Path:
    return Path(os.environ.get("CLS_JOBS_DIR", Path.home() / ".cls" / "jobs"))


def running_jobs(job: int | None = None) -> list[dict]:
    found = sorted(jobs_dir().glob(f"{job if job is not None else '*'}/cluster.json"))
    return [json.loads(path.read_text()) for path in found]


def running_trials(info: dict) -> list[dict]:
    """The job's active Train runs, each with its latest epoch row from the store (when it has one)."""
    token = Path(info["token_path"]).read_text().strip()
    try:
        runs = dashboard_get(f"{info['dashboard']}/api/train/v2/runs/v1", token)["train_runs"]
    except urllib.error.HTTPError as e:
        if e.code == 500 and b"state data is not available" in e.read():
            return []  # no Train run has started yet in this cluster
        raise
    trials = []
    for run in runs:
        if run["status"] not in ACTIVE:
            continue
        workers = run["attempts"][-1]["workers"] if run.get("attempts") else []
        trials.append({"trial_id": run["name"], "status": run["status"],
                       "running_s": time.time() - run["start_time_ns"] / 1e9,
                       "nodes": sorted({w["node_ip"] for w in workers}), "workers": len(workers)})
    _add_latest_epochs(trials, info["results"])
    return trials


def _add_latest_epochs(trials: list[dict], results: str) -> None:
    if not trials or not (Path(results) / "epochs").exists():
        return
    from cls.results import load

    ids = [t["trial_id"] for t in trials]
    epochs = load(results, "epochs", filters=[("trial_id", "in", ids)])
    for trial in trials:
        rows = epochs[epochs["trial_id"] == trial["trial_id"]]
        if len(rows):
            latest = rows.sort_values("epoch").iloc[-1]
            trial["epoch"] = int(latest["epoch"])
            trial.update({m: float(latest[m]) for m in METRICS if m in latest and latest[m] == latest[m]})


def format_status(info: dict, trials: list[dict]) -> str:
    lines = [f"job {info['job_id']}: {len(info['nodes'])} nodes, dashboard {info['dashboard']}, "
             f"{len(trials)} trial(s) running"]
    for t in trials:
        metrics = "  ".join(f"{m} {t[m]:.4g}" for m in METRICS if m in t)
        epoch = f"epoch {t['epoch']}" if "epoch" in t else "no epoch yet"
        lines.append(f"  {t['trial_id']}  {t['status'].lower()} {t['running_s']:.0f}s on {','.join(t['nodes']) or '-'}"
                     f"  {epoch}  {metrics}".rstrip())
    return "\n".join(lines)
