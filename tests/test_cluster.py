"""The Ray-on-SLURM bootstrap's pieces that need no SLURM: port blocks, `ray start` arguments, resources,
bad input; and `cls submit` with submitit's local executor (the path taken where there is no SLURM)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from polling import wait_for

from cluster import ray_slurm
from cluster.ray_slurm import BLOCK, PORT_HIGH, PORT_LOW, Allocation, Ports, node_resources, ports_for, ray_start_args

REPO = Path(__file__).resolve().parents[1]


def test_ports_come_from_the_job_id_and_node_index():
    a = ports_for(1234, 0, probe=False)
    assert a == ports_for(1234, 0, probe=False)  # the same job gets the same ports on every start
    blocks = {ports_for(job, node, probe=False).gcs for job in (1234, 1235) for node in (0, 1, 2)}
    assert ports_for(1234, 1, probe=False).gcs != a.gcs and ports_for(1235, 0, probe=False).gcs != a.gcs
    assert len(blocks) == 4  # job 1234 node 1 shares a block with job 1235 node 0; probing separates them
    for job in (0, 1, 10**9 + 7):
        ports = ports_for(job, 3, probe=False).all()
        assert len(ports) == len(set(ports)) and max(ports) - min(ports) < BLOCK  # one block, no port twice
        assert PORT_LOW <= min(ports) and max(ports) < PORT_HIGH  # under the kernel's ephemeral range


def test_a_block_in_use_is_skipped():
    first = ports_for(777, 0, probe=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first.min_worker + 5))  # even a worker port in the block makes it busy
        chosen = ports_for(777, 0, "127.0.0.1")
    assert chosen != first and chosen.gcs == ports_for(777, 1, probe=False).gcs


def test_ray_start_binds_the_dashboard_to_the_node_address_only():
    ports = Ports.of_block(20_000)
    head = ray_start_args(ports, "10.1.2.3", 8, 2, Path("/tmp/cls-5-0"), None)
    assert "--head" in head and "--dashboard-host=10.1.2.3" in head and "--node-ip-address=10.1.2.3" in head
    assert f"--port={ports.gcs}" in head and f"--dashboard-port={ports.dashboard}" in head
    assert "--num-cpus=8" in head and "--num-gpus=2" in head
    assert not any("0.0.0.0" in a for a in head)
    worker = ray_start_args(ports, "10.1.2.4", 8, 0, Path("/tmp/cls-5-1"), "10.1.2.3:20000")
    assert "--address=10.1.2.3:20000" in worker and "--head" not in worker
    assert not any(a.startswith("--dashboard-") and "agent" not in a for a in worker)


def test_short_unguessable_temp_dirs(monkeypatch):
    monkeypatch.delenv("CLS_RAY_TMP", raising=False)
    monkeypatch.delenv(ray_slurm.TMP_TAG_ENV, raising=False)
    tags = {ray_slurm.new_tmp_tag() for _ in range(20)}
    assert len(tags) == 20 and all(len(t) == 12 for t in tags)  # 48 random bits per job
    # Ray puts Unix sockets under session_<date>_<time>_<pid>/sockets/: the root must stay short.
    path = ray_slurm.temp_dir(12345678, 15, tags.pop())
    assert len(str(path)) <= 34 and path.name.startswith("cls-12345678-15-")


def test_a_temp_dir_is_made_fresh_and_private(tmp_path):
    previous = os.umask(0)
    try:
        made = ray_slurm.private_temp_dir(tmp_path / "cls-7-0-abc")
    finally:
        os.umask(previous)
    assert made.stat().st_mode & 0o777 == 0o700
    ours = tmp_path / "cls-7-1-abc"
    ours.mkdir(mode=0o755)
    assert ray_slurm.private_temp_dir(ours).stat().st_mode & 0o777 == 0o700  # ours, not writable by others


@pytest.mark.parametrize("kind", ["world-writable", "group-writable", "other-owner", "symlink"])
def test_a_temp_dir_another_user_could_control_is_refused(kind, tmp_path):
    path = tmp_path / "cls-7-0-abc"
    if kind == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        path.symlink_to(tmp_path / "elsewhere")
    else:
        path.mkdir()
        path.chmod({"world-writable": 0o777, "group-writable": 0o770, "other-owner": 0o700}[kind])
        if kind == "other-owner":
            if os.geteuid() != 0:
                pytest.skip("giving a directory to another user needs root")
            os.chown(path, 65534, 65534)  # nobody
    before = path.lstat()
    with pytest.raises(ray_slurm.TempDirRefused, match=str(path)):
        ray_slurm.private_temp_dir(path)
    after = path.lstat()
    assert (after.st_mode, after.st_uid) == (before.st_mode, before.st_uid)  # left as it was


def test_a_temp_dir_that_cannot_be_made_is_refused_with_the_fix(tmp_path):
    # /proc takes no new directory, even from root: the error names the path and CLS_RAY_TMP, not an errno.
    with pytest.raises(ray_slurm.TempDirRefused, match=r"cannot make the Ray temp dir /proc/cls-x/cls-7-0-abc.*CLS_RAY_TMP"):
        ray_slurm.private_temp_dir(Path("/proc/cls-x/cls-7-0-abc"))


# A stand-in for a Ray daemon on its way out: it holds its log open, then writes one more file and exits.
LAST_WORDS = ("import os, sys, time; log = open(sys.argv[1] + '/log', 'w'); time.sleep(float(sys.argv[2])); "
              "os.makedirs(sys.argv[1] + '/logs/events', exist_ok=True); open(sys.argv[1] + '/logs/events/x', 'w')")


def test_a_temp_dir_is_removed_only_after_the_processes_writing_into_it(tmp_path):
    path = tmp_path / "cls-7-0-abc"
    path.mkdir(mode=0o700)
    daemon = subprocess.Popen([sys.executable, "-c", LAST_WORDS, str(path), "1.5"])
    wait_for(lambda: (path / "log").exists(), timeout=30, what="the daemon's log")
    assert ray_slurm.remove_temp_dir(path)
    assert daemon.wait(timeout=10) == 0  # it finished its last write, and the directory is gone after it
    assert not path.exists()


def test_a_process_that_never_lets_go_of_the_temp_dir_is_killed(tmp_path):
    path = tmp_path / "cls-7-0-abc"
    path.mkdir(mode=0o700)
    daemon = subprocess.Popen([sys.executable, "-c", LAST_WORDS, str(path), "600"])
    wait_for(lambda: (path / "log").exists(), timeout=30, what="the daemon's log")
    assert ray_slurm.remove_temp_dir(path, grace=0.5)
    assert daemon.wait(timeout=10) == -signal.SIGKILL and not path.exists()


def test_resources_are_slurms_and_absent_gpus_are_not_given_to_ray(monkeypatch, capsys):
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "6")
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "2")
    monkeypatch.setattr(ray_slurm.os.path, "exists", lambda p: p == "/dev/nvidiactl")
    assert node_resources() == (6, 2)
    monkeypatch.setattr(ray_slurm.os.path, "exists", lambda p: False)
    assert node_resources() == (6, 0)
    assert "no NVIDIA device is present" in capsys.readouterr().out


def test_ray_memory_follows_slurms_mem_and_the_size_of_dev_shm(monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_MEM_PER_NODE", raising=False)
    monkeypatch.delenv("SLURM_MEM_PER_CPU", raising=False)
    assert ray_slurm.node_memory(4) is None  # no --mem: Ray's own sizing
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "10240")  # --mem=10G
    memory, store = ray_slurm.node_memory(4)
    assert memory + store == 10 * 2**30 and store == int(0.3 * 10 * 2**30)  # /dev/shm here has room
    monkeypatch.delenv("SLURM_MEM_PER_NODE")
    monkeypatch.setenv("SLURM_MEM_PER_CPU", "2048")  # --mem-per-cpu=2G on 4 CPUs
    assert sum(ray_slurm.node_memory(4)) == 8 * 2**30

    class SmallShm:  # a /dev/shm of 1 GiB free caps the object store at 80% of it
        f_bavail, f_frsize = 2**18, 4096
    monkeypatch.setattr(ray_slurm.os, "statvfs", lambda path: SmallShm)
    memory, store = ray_slurm.node_memory(4)
    assert store == int(0.8 * 2**30) and memory == 8 * 2**30 - store
    args = ray_start_args(ports_for(5, 0, probe=False), "10.1.2.3", 4, 0, Path("/tmp/x"), None, (memory, store))
    assert f"--memory={memory}" in args and f"--object-store-memory={store}" in args


def test_outside_slurm_the_bootstrap_says_how_to_run(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(RuntimeError, match="sbatch.*cls submit"):
        Allocation.from_env()
    no_command = subprocess.run([sys.executable, "-m", "cluster.ray_slurm", "job", "--"], cwd=REPO,
                                capture_output=True, text=True)
    assert no_command.returncode == 2 and "give the command to run after --" in no_command.stderr


@pytest.mark.parametrize("args, message", [
    (["sweeps/quickstart.yaml", "--nodes", "0"], "--nodes must be at least 1"),
    (["sweeps/quickstart.yaml", "--gpus-per-node", "-1"], "--gpus-per-node must be 0 or more"),
    (["sweeps/nope.yaml"], "no sweep file sweeps/nope.yaml"),
    # Checked before submission, so it fails now rather than after waiting in the queue.
    (["sweeps/quickstart.yaml", "sweep.axes.seed.grid=[]"], "quickstart.yaml"),
    (["sweeps/quickstart.yaml", "model.tau=abc"], "model.tau"),
])
def test_cls_submit_rejects_bad_input(args, message, tmp_path):
    folder = tmp_path / "submitit"
    result = subprocess.run([sys.executable, "-m", "cls", "submit", *args, "--folder", str(folder)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert not folder.exists()  # nothing submitted, nothing written


def test_cls_status_without_a_running_job(tmp_path):
    env = {**os.environ, "CLS_JOBS_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "cls", "status", "--job", "42"], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 1 and f"no running cluster for job 42 in {tmp_path}" in result.stdout


@pytest.mark.slow
def test_cls_submit_without_slurm_runs_locally(tmp_path):
    sweep = tmp_path / "one.yaml"
    sweep.write_text("experiment: dnffm_digits\noverrides: [trainer.epochs=1, trainer.max_steps=3]\n"
                     "axes:\n  seed: {grid: [0]}\nmetric: eval_top1\nmode: max\n"
                     "resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0, max_concurrent: 1}\n")
    result = subprocess.run([sys.executable, "-m", "cls", "submit", str(sweep), "--local",
                             "--folder", str(tmp_path / "submitit")], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "the sweep exited with 0" in result.stdout
    trials = pd.read_parquet(Path(os.environ["CLS_RESULTS"]) / "trials", filters=[("sweep", "==", "one")])
    assert list(trials["status"]) == ["finished"]


def test_a_batch_script_with_a_missing_sweep_file_stops_before_starting_ray():
    env = {**os.environ, "SLURM_SUBMIT_DIR": str(REPO), "SLURM_JOB_ID": "1"}
    result = subprocess.run(["bash", "slurm/sweep_dnffm.sh", "sweeps/typo.yaml"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no sweep file sweeps/typo.yaml" in result.stderr
    assert "cls-cluster" not in result.stdout  # the bootstrap never ran
