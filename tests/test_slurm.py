"""The SLURM path end to end on a real 2-node SLURM started on this machine (cluster/dev/slurm.sh): the
sbatch scripts, the Ray bootstrap, the dashboard's exposure, preemption with requeue, and `cls submit`."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from cluster.ray_slurm import alive_nodes
from cluster.status import running_trials
from polling import wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def quickstart(seeds: str = "[0]") -> list[str]:
    """The quickstart cut to SEEDS (CBAM on/off each) and 3 short epochs (8 steps), one trial at a time of
    2 workers: on 2 nodes x 2 CPUs, each trial is DDP across both nodes. Short, because what is under test
    here is the job around the trials."""
    return ["sweeps/quickstart.yaml", f"sweep.axes.seed={{grid:{seeds}}}", "trainer.epochs=3", "trainer.max_steps=8",
            "sweep.resources.workers=2", "sweep.resources.max_concurrent=1"]


QUICKSTART = quickstart()
TRIALS, EPOCHS = 2, 3


@pytest.fixture(scope="module")
def slurm():
    """A 2-node SLURM with accounting (submitit reads sacct), up for this module and down after it."""
    prefix = tempfile.mkdtemp(prefix="cls-slurm-")  # short: slurmd's sockets live under it
    script = str(REPO / "cluster" / "dev" / "slurm.sh")
    up = subprocess.run(["bash", script, "up", "--nodes", "2", "--accounting", "--prefix", prefix],
                        capture_output=True, text=True)
    assert up.returncode == 0, f"the dev SLURM did not come up:\n{up.stdout}\n{up.stderr}"
    yield {"SLURM_CONF": f"{prefix}/etc/slurm.conf"}
    down = subprocess.run(["bash", script, "down", "--prefix", prefix], capture_output=True, text=True)
    shutil.rmtree(prefix, ignore_errors=True)
    assert down.returncode == 0, down.stderr


@pytest.fixture
def job_env(slurm, tmp_path):
    return {**os.environ, **slurm, "CLS_JOBS_DIR": str(tmp_path / "jobs"), "CLS_PYTHON": sys.executable}


def sbatch(env, tmp_path, *args: str, wait: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        ["sbatch", *(["--wait"] if wait else ["--parsable"]), "--gpus-per-node=1", "--cpus-per-task=2", "--time=30",
         f"--output={tmp_path}/job-%j.out", "slurm/sweep_dnffm.sh", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def job_log(tmp_path) -> str:
    logs = list(tmp_path.glob("job-*.out"))
    return logs[0].read_text() if logs else ""


def slurm_out(env, *args: str) -> str:
    return subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout.strip()


def final_state(env, job_id: str) -> str:
    """The job's last State|ExitCode in accounting, once it has one: squeue forgets a job before slurmdbd has
    recorded how it ended (seen: RUNNING|0:0 a moment after squeue showed nothing)."""
    def ended():
        rows = slurm_out(env, "sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode").splitlines()
        return rows and rows[-1].split("|")[0] not in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING") and rows[-1]
    return wait_for(ended, timeout=60, what=f"job {job_id}'s end in sacct")


def cluster_info(env) -> dict:
    found = wait_for(lambda: list(Path(env["CLS_JOBS_DIR"]).glob("*/cluster.json")), timeout=180,
                     what="the job's cluster.json")
    return json.loads(found[0].read_text())


def get(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def other_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback, where the dashboard must not answer."""
    return [a for a in subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
            if "." in a and not a.startswith("127.")]


def assert_store_complete(results: Path, finished_trials: int = TRIALS) -> tuple[pd.DataFrame, pd.DataFrame]:
    # What a researcher reads: plain pandas over the Parquet files, no deduplication on our side.
    trials = pd.read_parquet(results / "trials", filters=[("sweep", "==", "quickstart")])
    epochs = pd.read_parquet(results / "epochs", filters=[("sweep", "==", "quickstart")])
    assert len(trials) == finished_trials and trials["trial_id"].is_unique, trials[["trial_id", "status"]]
    assert set(trials["status"]) == {"finished"}
    assert len(epochs) == finished_trials * EPOCHS
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert sorted(epochs["epoch"].unique()) == list(range(EPOCHS))
    return trials, epochs


def assert_nothing_left(job_id: str, env) -> None:
    assert not list(Path(env["CLS_JOBS_DIR"]).glob(f"{job_id}/*")), "the job's token and cluster.json remain"
    assert not list(Path("/tmp").glob(f"cls-{job_id}-*")), "a Ray temp dir remains"
    left = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        # Every process of the job carries its id in its environment (srun passes it on to Ray's processes).
        if f"SLURM_JOB_ID={job_id}".encode() in environ or f"/cls-{job_id}-".encode() in cmdline:
            left.append(cmdline.decode(errors="replace")[:120])
    assert not left, f"processes left behind by job {job_id}: {left}"


def test_sbatch_quickstart_on_two_nodes(job_env, tmp_path):
    job = sbatch(job_env, tmp_path, *QUICKSTART, wait=True)
    info = cluster_info(job_env)
    token = Path(info["token_path"]).read_text()
    assert Path(info["token_path"]).stat().st_mode & 0o777 == 0o600
    assert Path(info["token_path"]).parent.stat().st_mode & 0o777 == 0o700

    # Both nodes are in the Ray cluster, each with SLURM's CPUs.
    assert len(alive_nodes(info["dashboard"], token)) == 2
    # The dashboard answers on the head's address with the token, refuses without, and is not on any
    # other address of the machine.
    head, port = info["dashboard"].removeprefix("http://").split(":")
    assert get(f"{info['dashboard']}/api/v0/nodes", token) == 200
    assert get(f"{info['dashboard']}/api/v0/nodes") == 401
    assert get(f"{info['dashboard']}/api/jobs/", "0" * 64) in (401, 403)
    addresses = other_addresses()
    assert addresses, "this machine has no non-loopback IPv4 address to check the dashboard against"
    for address in addresses:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, int(port))) != 0, f"the dashboard answers on {address}"

    # `cls status` sees a running trial and, once it has one, its latest epoch.
    def running_with_epoch():
        try:
            return [t for t in running_trials(info) if "epoch" in t]
        except OSError:  # the dashboard, on the cores the trials use, did not answer in time: ask again
            return []

    trials = wait_for(running_with_epoch, timeout=300, what="a running trial with an epoch in `cls status`")
    assert trials[0]["trial_id"].startswith("dnffm-digits-") and "eval_top1" in trials[0]
    status = subprocess.run([sys.executable, "-m", "cls", "status", "--job", str(info["job_id"])], env=job_env,
                            capture_output=True, text=True)
    assert status.returncode == 0 and f"job {info['job_id']}: 2 nodes" in status.stdout, status

    assert job.wait(timeout=600) == 0, job_log(tmp_path)[-3000:]
    log = job_log(tmp_path)
    assert "2 nodes joined" in log and f"ssh -N -L {port}:{head}:{port}" in log
    assert_store_complete(Path(os.environ["CLS_RESULTS"]))
    assert_nothing_left(str(info["job_id"]), job_env)


def test_usr1_mid_sweep_requeues_and_the_sweep_completes(job_env, tmp_path):
    job = sbatch(job_env, tmp_path, *QUICKSTART)
    out, err = job.communicate(timeout=30)
    assert job.returncode == 0, err
    job_id = out.strip().split(";")[0]
    results = Path(os.environ["CLS_RESULTS"])

    wait_for(lambda: re.search(r"\[2/2\] \S+ started", job_log(tmp_path)), timeout=300, what="the second trial")
    before = pd.read_parquet(results / "trials")
    first = before[before["status"] == "finished"]
    assert len(first) == 1
    slurm_out(job_env, "scancel", "--batch", "--signal=USR1", job_id)  # what --signal=B:USR1@300 sends

    # The job saves, stops its cluster and requeues itself. SLURM holds a requeued job ~2 min before it may
    # start again; the test lifts that hold instead of waiting it out.
    wait_for(lambda: slurm_out(job_env, "squeue", "-h", "-j", job_id, "-o", "%T") == "PENDING", timeout=120,
             what="the job to be requeued")
    slurm_out(job_env, "scontrol", "update", f"JobId={job_id}", "StartTime=now")
    wait_for(lambda: slurm_out(job_env, "squeue", "-h", "-j", job_id, "-o", "%T") == "", timeout=600,
             what="the requeued job to end")
    state = final_state(job_env, job_id)
    assert state == "COMPLETED|0:0", (state, job_log(tmp_path)[-3000:])

    log = job_log(tmp_path)
    assert "received SIGUSR1" in log and "requeueing job" in log
    assert "requeued 1 time(s)" in log and "1 finished earlier, 1 to run" in log
    trials, _ = assert_store_complete(results)
    # The trial that finished before the signal was not run again.
    again = trials.set_index("trial_id").loc[first["trial_id"].iloc[0]]
    assert again["attempts"] == 1 and again["started_at"] == first["started_at"].iloc[0]
    assert_nothing_left(job_id, job_env)


ARRAY = quickstart()  # 2 trials: the two tasks that run at once share them; the third finds none left


def test_a_job_array_of_three_shares_the_sweep_and_runs_every_trial_once(job_env, tmp_path):
    """`cls submit --array 3` (submitit's one `sbatch --array`), one node a task: two tasks run at once, each
    on a Ray cluster of its own, and the third takes what is left, if anything (the sweep is done by then). Every trial runs once, in one
    task (attempts 1), every row is written once, every task exits 0, and no lease is left behind."""
    submit = subprocess.run(
        [sys.executable, "-m", "cls", "submit", *ARRAY[:1], "--array", "3", "--nodes", "1",
         "--cpus-per-node", "2", "--time", "30", "--folder", str(tmp_path / "submitit"), *ARRAY[1:]],
        cwd=REPO, env=job_env, capture_output=True, text=True, timeout=1200)
    assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-3000:]
    submitted = re.findall(r"submitted job (\d+_\d+); its log: (\S+)", submit.stdout)
    assert len(submitted) == 3 and len({job.split("_")[0] for job, _ in submitted}) == 1, submit.stdout  # one array
    for job, _ in submitted:
        assert f"job {job} finished: the sweep exited with 0" in submit.stdout, submit.stdout
    logs = [Path(path).read_text() for _, path in submitted]
    assert all("1 nodes joined" in log for log in logs), logs  # each task its own cluster
    started = [m for log in logs for m in re.findall(r"\] (\S+) started:", log)]
    assert sorted(started) == sorted(set(started)) and len(started) == TRIALS, started
    trials, _ = assert_store_complete(Path(os.environ["CLS_RESULTS"]))
    assert (trials["attempts"] == 1).all(), trials[["trial_id", "attempts"]]
    assert not list((Path(os.environ["CLS_RESULTS"]) / "leases").rglob("trial-*.parquet"))
    for log in logs:  # the batch step's own job id (the array task's), as the bootstrap logs it
        assert_nothing_left(re.search(r"job (\d+) on 1 node", log).group(1), job_env)


def test_a_cancelled_job_submitted_again_completes_the_sweep(job_env, tmp_path):
    """scancel (SIGTERM to the batch step and every Ray process at once, SIGKILL 5 s later) mid-sweep, then
    the same sbatch again: the sweep completes with every row once and the finished trial not rerun."""
    results = Path(os.environ["CLS_RESULTS"])
    job = sbatch(job_env, tmp_path, *QUICKSTART)
    job_id = job.communicate(timeout=30)[0].strip().split(";")[0]
    wait_for(lambda: re.search(r"\[2/2\] \S+ started", job_log(tmp_path)), timeout=300, what="the second trial")
    first = pd.read_parquet(results / "trials").query("status == 'finished'")
    slurm_out(job_env, "scancel", job_id)
    wait_for(lambda: slurm_out(job_env, "squeue", "-h", "-j", job_id, "-o", "%T") == "", timeout=120,
             what="the cancelled job to end")
    assert_nothing_left(job_id, job_env)

    (tmp_path / "again").mkdir()
    again = sbatch(job_env, tmp_path / "again", *QUICKSTART, wait=True)
    assert again.wait(timeout=600) == 0, job_log(tmp_path / "again")[-3000:]
    assert "1 finished earlier, 1 to run" in job_log(tmp_path / "again")
    trials, _ = assert_store_complete(results)
    kept = trials.set_index("trial_id").loc[first["trial_id"].iloc[0]]
    assert kept["attempts"] == 1 and kept["started_at"] == first["started_at"].iloc[0]


def test_a_cluster_that_cannot_start_fails_clearly_and_leaves_nothing(job_env, tmp_path):
    # Every node's temp dir is unmakeable, so the batch step stops at the head's, before any Ray process,
    # with one line that names the directory and the fix.
    env = {**job_env, "CLS_RAY_TMP": "/proc/cls-cannot-write", "CLS_RAY_JOIN_TIMEOUT": "60"}
    job = sbatch(env, tmp_path, *QUICKSTART, wait=True)
    assert job.wait(timeout=300) == 2
    log = job_log(tmp_path)
    assert "error: cannot make the Ray temp dir /proc/cls-cannot-write/cls-" in log and "CLS_RAY_TMP" in log, log
    assert "Traceback" not in log and "running:" not in log and "ray-head.log" not in log
    job_id = re.search(r"job (\d+) on 2 node", log).group(1)
    assert_nothing_left(job_id, job_env)


def test_another_users_temp_dir_stops_the_job_before_ray_starts(job_env, tmp_path):
    """A world-writable /tmp/cls-JOB-0-TAG of another user, made before the job starts: the bootstrap exits
    2 with the reason, starts no Ray process and leaves that directory as it was. (TAG is random per job;
    the test fixes it through CLS_RAY_TMP_TAG to make the directory first, as an attacker who guessed it.)"""
    tag = "hostile" + secrets.token_hex(3)
    env = {**job_env, "CLS_RAY_TMP_TAG": tag, "CLS_RAY_JOIN_TIMEOUT": "60"}
    held = subprocess.run(["sbatch", "--parsable", "--hold", "--gpus-per-node=1", "--cpus-per-task=2", "--time=30",
                           f"--output={tmp_path}/job-%j.out", "slurm/sweep_dnffm.sh", *QUICKSTART],
                          cwd=REPO, env=env, capture_output=True, text=True, check=True)
    job_id = held.stdout.strip().split(";")[0]
    hostile = Path("/tmp") / f"cls-{job_id}-0-{tag}"
    hostile.mkdir()
    hostile.chmod(0o777)
    os.chown(hostile, 65534, 65534)  # nobody's
    try:
        slurm_out(env, "scontrol", "release", job_id)
        wait_for(lambda: slurm_out(env, "squeue", "-h", "-j", job_id, "-o", "%T") == "", timeout=300,
                 what="the job to end")
        state = final_state(env, job_id)
        log = job_log(tmp_path)
        assert state == "FAILED|2:0", (state, log[-3000:])
        assert f"error: the Ray temp dir {hostile} already exists and is owned by uid 65534" in log, log[-3000:]
        assert "Ray cluster up" not in log and "running:" not in log
        assert not (Path(os.environ.get("CLS_RUNS", "runs")) / "slurm" / job_id / "ray-head.log").exists()
        assert hostile.stat().st_uid == 65534 and hostile.stat().st_mode & 0o777 == 0o777
        assert not list(hostile.iterdir())  # nothing of the job's inside
        assert not list(Path(env["CLS_JOBS_DIR"]).glob(f"{job_id}/*")), "the job's token remains"
    finally:
        shutil.rmtree(hostile, ignore_errors=True)
