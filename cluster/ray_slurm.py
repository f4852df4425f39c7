"""A Ray cluster on a SLURM job's allocation, for the length of one command.

    python -m cluster.ray_slurm job -- cls sweep sweeps/dnffm_ablation.yaml [overrides]

run as the batch step of a job (the scripts in slurm/ `exec` it) starts the Ray head on the first node of the
allocation and one Ray node on every other (each an `srun --overlap` step running `cluster.ray_slurm node`),
waits until every node has joined, runs the command with RAY_ADDRESS pointing at the head, stops Ray on
every node and exits with the command's status.

- Resources: each node gives Ray the CPUs SLURM allocated on it (SLURM_CPUS_ON_NODE) and its GPUs
  (SLURM_GPUS_ON_NODE), never what the machine has.
- Addresses: every node is given its IP explicitly (SLURM's NodeAddr, or the address of CLS_RAY_INTERFACE,
  e.g. ib0). Every port comes from a block derived from the job id and the node's index (`ports_for`), so two
  jobs, or two nodes of one job on the same host, do not collide; a block in use is skipped.
- The dashboard listens on the head's cluster address only. Token authentication is on, with a fresh token
  per job in a file only the user can read; the job log says how to reach the dashboard from a laptop.
- Signals: SIGUSR1 (sent by SLURM before the time limit with `--signal=B:USR1@SECONDS`, or by
  `scancel --batch --signal=USR1 JOB`) stops the command as Ctrl-C does (the sweep saves and exits), then the
  job requeues itself; the requeued job runs the same command, which continues the sweep. SIGTERM (scancel,
  preemption) stops the command the same way without a requeue.
- Temp dirs are short (Unix socket paths must stay under 108 bytes), per node, and made fresh with mode 0700
  under a name with a random part (/tmp/cls-JOB-NODE-RANDOM, recorded in ~/.cls/jobs/JOB/temp_dirs); one that
  exists and is another user's or writable by others stops the job with exit 2 before Ray starts there.
  They are removed at exit.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from cluster.local import without_local_settings

# Ports 10000-32767: under Linux's ephemeral range (32768-60999), where the kernel hands out client ports.
PORT_LOW, PORT_HIGH = 10_000, 32_768
BLOCK = 250  # 10 fixed ports and 240 for Ray's worker processes (one per worker; a node rarely has more)
SLOTS = (PORT_HIGH - PORT_LOW) // BLOCK

# Every Ray process started here, and the driver, gets these.
RAY_JOB_ENV = {
    "RAY_AUTH_MODE": "token",
    # SLURM stops head and workers together; Ray would otherwise wait 30 s to drain each node.
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def log(message: str) -> None:
    now = time.time()
    print(f"[cls-cluster {time.strftime('%H:%M:%S', time.localtime(now))}.{int(now % 1 * 1000):03d}] {message}", flush=True)


@dataclass(frozen=True)
class Ports:
    gcs: int
    dashboard: int
    client_server: int
    node_manager: int
    object_manager: int
    agent_http: int
    agent_grpc: int
    metrics: int
    runtime_env_agent: int
    min_worker: int
    max_worker: int

    @classmethod
    def of_block(cls, base: int) -> Ports:
        return cls(*range(base, base + 9), base + 10, base + BLOCK - 1)

    def all(self) -> list[int]:
        return [*list(asdict(self).values())[:9], *range(self.min_worker, self.max_worker + 1)]


def ports_for(job_id: int, node_index: int, host: str = "127.0.0.1", probe: bool = True) -> Ports:
    """The port block of node `node_index` of job `job_id`: slot (job_id + node_index) of the SLOTS blocks
    between PORT_LOW and PORT_HIGH. With `probe`, a block with any port already bound on `host` (another
    job's Ray, or anything else) is skipped for the next one."""
    for step in range(SLOTS):
        ports = Ports.of_block(PORT_LOW + ((job_id + node_index + step) % SLOTS) * BLOCK)
        if not probe or all(_free(host, p) for p in ports.all()):
            if step:
                log(f"ports {ports.gcs - step * BLOCK}.. are in use on {host}; using the block at {ports.gcs}")
            return ports
    raise RuntimeError(f"no free block of {BLOCK} ports between {PORT_LOW} and {PORT_HIGH} on {host}")


def _free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _slurm(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@dataclass(frozen=True)
class Allocation:
    job_id: int
    nodes: list[str]
    restarts: int
    submit_host: str

    @property
    def head(self) -> str:
        return self.nodes[0]

    @classmethod
    def from_env(cls) -> Allocation:
        env = os.environ
        if "SLURM_JOB_ID" not in env:
            raise RuntimeError("not inside a SLURM job (no SLURM_JOB_ID): submit it with sbatch, or use "
                               "`cls submit`, which falls back to a local run without SLURM")
        return cls(job_id=int(env["SLURM_JOB_ID"]),
                   nodes=_slurm("scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]).split(),
                   restarts=int(env.get("SLURM_RESTART_COUNT", "0")),
                   submit_host=env.get("SLURM_SUBMIT_HOST", "LOGIN-NODE"))


def node_ip(node: str) -> str:
    """The address Ray uses for `node`: that of CLS_RAY_INTERFACE (say ib0) when set, else the node's
    NodeAddr in SLURM (a name is resolved). Multi-homed nodes otherwise make Ray guess."""
    interface = os.environ.get("CLS_RAY_INTERFACE")
    if interface:
        out = _slurm("ip", "-o", "-4", "addr", "show", "dev", interface).split()
        if "inet" not in out:
            raise RuntimeError(f"CLS_RAY_INTERFACE={interface} has no IPv4 address on {socket.gethostname()}")
        return out[out.index("inet") + 1].split("/")[0]
    fields = dict(f.split("=", 1) for f in _slurm("scontrol", "-o", "show", "node", node).split() if "=" in f)
    return socket.gethostbyname(fields.get("NodeAddr", node))


def node_resources() -> tuple[int, int]:
    """(CPUs, GPUs) SLURM allocated to the job on this node. GPUs SLURM names but this node cannot open (no
    /dev/nvidiactl: a misconfigured GRES, or the development cluster's stand-in) are not given to Ray."""
    cpus = int(os.environ.get("SLURM_CPUS_ON_NODE") or os.cpu_count() or 1)
    gpus = os.environ.get("SLURM_GPUS_ON_NODE")
    if gpus is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        gpus = len([d for d in visible.split(",") if d]) if visible else 0
    gpus = int(gpus)
    if gpus and not os.path.exists("/dev/nvidiactl"):
        log(f"SLURM allocated {gpus} GPU(s) on {socket.gethostname()} but no NVIDIA device is present "
            f"(/dev/nvidiactl); Ray gets 0 GPUs there")
        gpus = 0
    return cpus, gpus


def node_memory(cpus: int, shm: str = "/dev/shm") -> tuple[int, int] | None:
    """(memory, object store) bytes for Ray on this node from SLURM's `--mem` (SLURM_MEM_PER_NODE, or
    SLURM_MEM_PER_CPU x the node's CPUs; both in MB), or None when the job set no limit. Ray would size
    itself from the whole node's RAM and get killed by SLURM's cgroup (ray#13607); its object store would
    take 30% of that in /dev/shm, which is often smaller, and fall back to slow disk (ray#41983). So the
    object store is 30% of the allocation, at most 80% of /dev/shm's free space, and the rest is Ray's."""
    per_node, per_cpu = os.environ.get("SLURM_MEM_PER_NODE"), os.environ.get("SLURM_MEM_PER_CPU")
    if per_node:
        total = int(per_node) * 2**20
    elif per_cpu:
        total = int(per_cpu) * cpus * 2**20
    else:
        return None
    try:
        st = os.statvfs(shm)
        shm_free = st.f_bavail * st.f_frsize
    except OSError:
        shm_free = total
    store = int(min(0.3 * total, 0.8 * shm_free))
    return total - store, store


TMP_TAG_ENV = "CLS_RAY_TMP_TAG"  # the random part of the job's temp dir names, passed to its node steps


class TempDirRefused(RuntimeError):
    """A node's temp dir cannot be made, or exists and another user could have made it or can write to it."""


def temp_dir(job_id: int, node_index: int, tag: str) -> Path:
    """/tmp/cls-JOB-NODE-TAG. Short on purpose: Ray's Unix sockets live under it. TAG is random per job
    (`new_tmp_tag`), so another user cannot make the directory beforehand. $TMPDIR is often job-private
    scratch under SLURM; CLS_RAY_TMP chooses the parent."""
    return Path(os.environ.get("CLS_RAY_TMP", "/tmp")) / f"cls-{job_id}-{node_index}-{tag}"


def new_tmp_tag() -> str:
    # CLS_RAY_TMP_TAG given: the tests' way to know the name beforehand (they pre-make a hostile directory).
    return os.environ.get(TMP_TAG_ENV) or secrets.token_hex(6)


def private_temp_dir(path: Path) -> Path:
    """PATH as a fresh directory of mode 0700, or, when it exists, one this user owns that nobody else can
    write to (then made 0700). Anything else (another user's directory, a group- or world-writable one, a
    symlink, a file) raises TempDirRefused: Ray would put its sockets and logs where another user controls
    them. So does a PATH that cannot be made (its parent unwritable or missing), with the fix."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
        return path
    except FileExistsError:
        pass
    except OSError as e:
        raise TempDirRefused(f"cannot make the Ray temp dir {path}: {e.strerror}. Set CLS_RAY_TMP to a directory "
                            f"you can write on every node (its parent; /tmp by default)") from None
    info = os.lstat(path)
    problem = None
    if not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory (a symlink or a file)"
    elif info.st_uid != os.getuid():
        problem = f"is owned by uid {info.st_uid}, not by you (uid {os.getuid()})"
    elif info.st_mode & 0o022:
        problem = f"is writable by others (mode {info.st_mode & 0o777:o})"
    if problem:
        raise TempDirRefused(f"the Ray temp dir {path} already exists and {problem}: someone may be trying to "
                            f"reach this job's Ray sockets. Remove it, or set CLS_RAY_TMP to a directory of yours")
    os.chmod(path, 0o700)
    return path


def _holders(path: Path) -> list[int]:
    """This user's processes (other than this one) with PATH, or a file under it, open or as their cwd."""
    inside = (str(path), str(path) + "/")
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if proc.stat().st_uid != os.getuid():
                continue
            links = [os.readlink(proc / "cwd"), *(os.readlink(fd) for fd in (proc / "fd").iterdir())]
        except OSError:  # gone, or not ours to read
            continue
        if any(link == inside[0] or link.startswith(inside[1]) for link in links):
            pids.append(int(proc.name))
    return pids


def _made_by_us(path: Path) -> bool:
    """PATH is a directory (not a link) of this user's with mode 0700, as private_temp_dir makes them."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and info.st_mode & 0o777 == 0o700


def remove_temp_dir(path: Path, grace: float = 3.0) -> bool:
    """Remove a node's Ray temp dir once no process of ours uses it. `ray start --block` returns while
    Ray's daemons, signalled with it, are still exiting and writing their last logs there; removing the
    directory under them leaves it half removed and re-made (seen on the dev SLURM). Those still holding
    files after GRACE seconds are killed: they are this node's Ray processes, in a directory only we use.
    GRACE is short because scancel's SIGKILL follows its SIGTERM after KillWait (5 s here, 30 s by
    default), and a step killed before this ends leaves the directory behind."""
    deadline = time.monotonic() + grace
    while (holders := _holders(path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in holders:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for _ in range(25):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return True
        time.sleep(0.2)
    log(f"warning: could not remove the Ray temp dir {path}; remove it by hand")
    return False


def ray_start_args(ports: Ports, ip: str, cpus: int, gpus: int, tmp: Path, head_address: str | None,
                   memory: tuple[int, int] | None = None) -> list[str]:
    args = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats",
            f"--node-ip-address={ip}", f"--num-cpus={cpus}", f"--num-gpus={gpus}", f"--temp-dir={tmp}",
            f"--node-manager-port={ports.node_manager}", f"--object-manager-port={ports.object_manager}",
            f"--dashboard-agent-listen-port={ports.agent_http}", f"--dashboard-agent-grpc-port={ports.agent_grpc}",
            f"--metrics-export-port={ports.metrics}", f"--runtime-env-agent-port={ports.runtime_env_agent}",
            f"--min-worker-port={ports.min_worker}", f"--max-worker-port={ports.max_worker}"]
    if memory is not None:
        args += [f"--memory={memory[0]}", f"--object-store-memory={memory[1]}"]
    if head_address is None:
        args += ["--head", f"--port={ports.gcs}", f"--ray-client-server-port={ports.client_server}",
                 "--include-dashboard=true", f"--dashboard-host={ip}", f"--dashboard-port={ports.dashboard}"]
    else:
        args += [f"--address={head_address}"]
    return args


def node_main(args: argparse.Namespace) -> int:
    """One Ray node, in the foreground, for an srun step; its temp dir is removed when it stops."""
    alloc = Allocation.from_env()
    name = os.environ.get("SLURMD_NODENAME", socket.gethostname())
    index = alloc.nodes.index(name)
    ip = node_ip(name)
    ports = Ports(**json.loads(args.ports)) if args.ports else ports_for(alloc.job_id, index, ip)
    cpus, gpus = node_resources()
    memory = node_memory(cpus)
    if memory is None:
        log(f"{name}: the job set no --mem; Ray sizes its memory and object store from the whole node")
    else:
        log(f"{name}: Ray gets {memory[0] / 2**30:.1f} GiB of memory and a {memory[1] / 2**30:.1f} GiB object store "
            f"(SLURM's --mem, /dev/shm)")
    tmp = temp_dir(alloc.job_id, index, os.environ[TMP_TAG_ENV])
    try:
        private_temp_dir(tmp)
    except TempDirRefused as e:
        log(f"error: {e}")
        return 2
    child = subprocess.Popen(ray_start_args(ports, ip, cpus, gpus, tmp, args.address, memory), stdout=sys.stdout,
                             stderr=subprocess.STDOUT)
    stopped = []

    def stop(signum: int, _frame) -> None:
        stopped.append(signum)
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the batch step's signal; SLURM may hand it to steps too
    try:
        status = child.wait()
        return 0 if stopped else status  # stopped by the job: `ray start` exits 1 then
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        remove_temp_dir(tmp)


class Job:
    """The batch step: starts the nodes, runs the command, stops everything, maybe requeues."""

    def __init__(self, command: list[str], join_timeout: float | None = None) -> None:
        self.command = command
        self.join_timeout = float(os.environ.get("CLS_RAY_JOIN_TIMEOUT", "180")) if join_timeout is None else join_timeout
        self.alloc = Allocation.from_env()
        self.steps: list[subprocess.Popen] = []
        self.driver: subprocess.Popen | None = None
        self.stop_signal: int | None = None  # the first SIGUSR1/SIGTERM/SIGINT received
        self.made_head_tmp = False
        self.requeued = False  # scontrol requeue accepted: SLURM's SIGTERM that follows ends the job
        self.t0 = time.monotonic()
        runs = Path(os.environ.get("CLS_RUNS", "runs")).absolute()
        self.log_dir = runs / "slurm" / str(self.alloc.job_id)
        self.job_dir = Path(os.environ.get("CLS_JOBS_DIR", Path.home() / ".cls" / "jobs")) / str(self.alloc.job_id)

    def _on_signal(self, signum: int, _frame) -> None:
        if self.requeued and signum == signal.SIGTERM:
            log("requeued: SLURM ends this run of the job; the next one continues the sweep")
            os._exit(0)  # everything is saved and stopped; no result for submitit to record
        if self.stop_signal is not None:
            return  # one stop per job: a second Ctrl-C to Tune would skip its final save
        self.stop_signal = signum
        log(f"received {signal.Signals(signum).name}: stopping the command so that it saves its state")
        if signum == signal.SIGTERM:
            # SLURM is ending the job: it has signalled every Ray process too and sends SIGKILL after KillWait
            # (30 s by default), which may come before our own cleanup. The token goes now.
            shutil.rmtree(self.job_dir, ignore_errors=True)
        if self.driver is not None and self.driver.poll() is None:
            self.driver.send_signal(signal.SIGUSR1 if signum == signal.SIGUSR1 else signal.SIGINT)

    def run(self) -> int:
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        alloc = self.alloc
        log(f"job {alloc.job_id} on {len(alloc.nodes)} node(s) {','.join(alloc.nodes)}"
            + (f", requeued {alloc.restarts} time(s): the command continues where it stopped" if alloc.restarts else ""))
        try:
            env = self._environment()
            status = self._check_head_temp_dir()
            if status == 0:
                status = self._start_cluster(env)
            if status == 0 and self.stop_signal is None:
                status = self._run_command(env)
            elif self.stop_signal is not None:
                status = 130
        finally:
            t_end = time.monotonic()
            self._stop_cluster()
            shutil.rmtree(self.job_dir, ignore_errors=True)
            if self.made_head_tmp:  # never a directory that was not ours
                # The head's, and any other node's of this job that is on this host (nodes that share a
                # machine). scancel makes srun SIGKILL the node steps at once, before they clean up.
                for path in self.temp_dirs:
                    if path == self.temp_dirs[0] or _made_by_us(path):
                        remove_temp_dir(path)
            log(f"cluster stopped in {time.monotonic() - t_end:.1f} s")
        if self.stop_signal == signal.SIGUSR1 and status == 130:
            log(f"requeueing job {alloc.job_id}: the requeued job runs the same command and continues")
            if subprocess.run(["scontrol", "requeue", str(alloc.job_id)], check=False).returncode == 0:
                # SLURM now ends this step; returning first would let submitit record a result for a job that
                # is about to run again. Its SIGTERM ends us at once (_on_signal), not SIGKILL after KillWait.
                self.requeued = True
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    time.sleep(1)
        log(f"exit {status}")
        return status

    def _environment(self) -> dict[str, str]:
        self.job_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.job_dir, 0o700)
        self.token_path = self.job_dir / "ray_token"
        token = secrets.token_hex(32)
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Each node's Ray temp dir has a random part, recorded here (0700) for whoever looks for it.
        self.tmp_tag = new_tmp_tag()
        self.temp_dirs = [temp_dir(self.alloc.job_id, i, self.tmp_tag) for i in range(len(self.alloc.nodes))]
        (self.job_dir / "temp_dirs").write_text("".join(f"{node} {path}\n" for node, path
                                                        in zip(self.alloc.nodes, self.temp_dirs)))
        # The token travels to the steps in their environment (readable by the user alone), not on a command line.
        return {**without_local_settings(dict(os.environ)), **RAY_JOB_ENV, "RAY_AUTH_TOKEN": token,
                TMP_TAG_ENV: self.tmp_tag}

    def _check_head_temp_dir(self) -> int:
        """The head's node is this one: its temp dir is made (or refused, exit 2) before any Ray process
        starts. The head's step then finds it ours and 0700; every other node checks its own."""
        try:
            private_temp_dir(self.temp_dirs[0])
        except TempDirRefused as e:
            log(f"error: {e}")
            return 2
        self.made_head_tmp = True
        return 0

    def _srun(self, nodes: list[str], args: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen:
        cmd = ["srun", "--overlap", f"--nodes={len(nodes)}", f"--ntasks={len(nodes)}", "--ntasks-per-node=1",
               f"--nodelist={','.join(nodes)}", "--kill-on-bad-exit=0", f"--output={self.log_dir / log_name}",
               sys.executable, "-m", "cluster.ray_slurm", "node", *args]
        step = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        self.steps.append(step)
        return step

    def _start_cluster(self, env: dict[str, str]) -> int:
        alloc = self.alloc
        self.head_ip = node_ip(alloc.head)
        self.ports = ports_for(alloc.job_id, 0, self.head_ip)
        self.address = f"{self.head_ip}:{self.ports.gcs}"
        head = self._srun([alloc.head], ["--ports", json.dumps(asdict(self.ports))], env, "ray-head.log")
        if not self._wait(lambda: _listening(self.head_ip, self.ports.gcs), [head], "the Ray head to listen"):
            return self._refused(head) or self._failed_start("the Ray head did not start", "ray-head.log")
        workers = alloc.nodes[1:]
        steps = [head]
        if workers:
            steps.append(self._srun(workers, ["--address", self.address], env, "ray-worker-%t.log"))
        self.dashboard = f"http://{self.head_ip}:{self.ports.dashboard}"
        token = env["RAY_AUTH_TOKEN"]
        if not self._wait(lambda: len(alive_nodes(self.dashboard, token)) == len(alloc.nodes), steps,
                          f"all {len(alloc.nodes)} nodes to join"):
            joined = []
            with contextlib.suppress(OSError, ValueError, KeyError):  # the head may be down as well
                joined = alive_nodes(self.dashboard, token)
            return self._refused(*steps) or self._failed_start(f"{len(joined)} of {len(alloc.nodes)} nodes joined "
                                      f"({', '.join(joined) or 'none'})", "ray-*.log")
        log(f"Ray cluster up: {len(alloc.nodes)} nodes joined {time.monotonic() - self.t0:.1f} s after the job "
            f"started; head {self.address}")
        self._announce()
        return 0

    def _refused(self, *steps: subprocess.Popen) -> int:
        """2 when a node step refused its temp dir (node_main's exit 2, which srun passes on), else 0."""
        if any(step.poll() == 2 for step in steps):
            log(f"error: a node refused its Ray temp dir (another user's, writable by others, or not makeable); "
                f"see {self.log_dir}/ray-*.log")
            return 2
        return 0

    def _failed_start(self, what: str, logs: str) -> int:
        if self.stop_signal is not None:
            return 130
        log(f"error: {what} within {self.join_timeout:.0f} s (CLS_RAY_JOIN_TIMEOUT); see {self.log_dir}/{logs}")
        return 1

    def _wait(self, ready, steps: list[subprocess.Popen], what: str) -> bool:
        deadline = time.monotonic() + self.join_timeout
        while time.monotonic() < deadline and self.stop_signal is None:
            with contextlib.suppress(OSError, ValueError):
                if ready():
                    return True
            if any(s.poll() is not None for s in steps):
                log(f"a Ray node step ended while waiting for {what}")
                return False
            time.sleep(0.2)
        return False

    def _announce(self) -> None:
        port, user = self.ports.dashboard, getpass.getuser()
        info = {"job_id": self.alloc.job_id, "address": self.address, "dashboard": self.dashboard,
                "token_path": str(self.token_path), "nodes": self.alloc.nodes, "command": self.command,
                "results": os.environ.get("CLS_RESULTS", str(Path("results").absolute())), "pid": os.getpid()}
        (self.job_dir / "cluster.json").write_text(json.dumps(info, indent=1))
        log(f"dashboard: {self.dashboard} (on the head's cluster address only; token authentication on)")
        log(f"  from your laptop:  ssh -N -L {port}:{self.head_ip}:{port} {user}@{self.alloc.submit_host}"
            f"  then open http://localhost:{port}")
        log(f"  token: {self.token_path} (readable by you only; removed when the job ends). The dashboard asks "
            f"for it; for curl: -H \"Authorization: Bearer $(cat {self.token_path})\"")
        log(f"  running trials and their latest metrics: cls status --job {self.alloc.job_id}")

    def _run_command(self, env: dict[str, str]) -> int:
        log(f"running: {' '.join(self.command)}")
        self.driver = subprocess.Popen(self.command, env={**env, "RAY_ADDRESS": self.address})
        if self.stop_signal is not None:  # arrived between the check and Popen
            self.driver.send_signal(signal.SIGUSR1)
        status = self.driver.wait()
        self.t_command_end = time.monotonic()
        log(f"command exited with {status} after {self.t_command_end - self.t0:.1f} s of the job")
        return 130 if status < 0 else status

    def _stop_cluster(self) -> None:
        """SIGTERM to the job's steps (the Ray nodes; never the batch step), then SIGKILL after 20 s. Through
        scancel, not to srun: srun answers SIGTERM by killing its tasks outright, leaving their temp dirs."""
        if any(step.poll() is None for step in self.steps):
            subprocess.run(["scancel", "--quiet", "--signal=TERM", str(self.alloc.job_id)], check=False)
        deadline = time.monotonic() + 20
        for step in self.steps:
            try:
                step.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"a Ray step did not stop within 20 s; killing it")
                step.kill()
                step.wait()


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def dashboard_get(url: str, token: str, timeout: float = 30.0):
    """GET a dashboard REST endpoint with the job's token. A head whose cores the trials share can take
    seconds to answer, hence the long timeout."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def alive_nodes(dashboard: str, token: str) -> list[str]:
    reply = dashboard_get(f"{dashboard}/api/v0/nodes?detail=0&limit=1000", token)
    return [n["node_ip"] + ":" + n["node_name"] for n in reply["data"]["result"]["result"] if n["state"] == "ALIVE"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.ray_slurm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    job = sub.add_parser("job", help="the batch step: a Ray cluster on the allocation around COMMAND")
    job.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    node = sub.add_parser("node", help="one Ray node (run by the job through srun)")
    node.add_argument("--address", help="the head's GCS address; without it this node is the head")
    node.add_argument("--ports", help="this node's ports as JSON (the head's are chosen by the job)")
    args = parser.parse_args(argv)
    if args.what == "node":
        return node_main(args)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --, e.g. -- cls sweep sweeps/quickstart.yaml")
    return Job(command).run()


if __name__ == "__main__":
    sys.exit(main())
