"""The local Ray cluster that `cls train` and `cls sweep` start when no RAY_ADDRESS names one: the one place
it is started, as private as a SLURM job's cluster (cluster/ray_slurm.py).

- Token authentication, with a fresh token per cluster (`secrets.token_hex(32)`), never Ray's persistent
  `~/.ray/auth_token` (written 0644 and shared by every cluster of the user). The token goes to Ray's
  processes in their environment (RAY_AUTH_TOKEN; a process's environment is readable by its owner only),
  never on a command line, and to the user in a 0600 file inside a 0700 directory made by mkdtemp.
- Every port on 127.0.0.1: GCS, raylet, object manager, dashboard and its agent, runtime-env agent, metrics,
  workers and driver. Ray 2.60 binds its gRPC servers to all interfaces unless the node's address is the
  loopback one, and `ray.init(_node_ip_address="127.0.0.1")` is turned back into the machine's address
  (services.resolve_ip_for_localhost). RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is Ray's switch for exactly
  this single-machine case (ray_constants.ENABLE_RAY_CLUSTER: the node address becomes 127.0.0.1, which
  every server then binds to); it is what Ray does on macOS and Windows by default.
- Train runs rendezvous through a file in the same directory instead of torch's TCPStore, which listens
  on every interface (cluster/torch_store.py); gloo and NCCL use the loopback interface.
- Ray's temp dir (its Unix sockets, logs, spilled objects) is DIR/ray inside that 0700 directory (Ray
  makes its temp dir 0777, hence one level down), so no other user reaches the raylet's or the object
  store's sockets either. All of it is removed when the command ends:
  normal exit, Ctrl-C, SIGTERM (the token file goes at once, the rest after Ray stopped).
- `RAY_AUTH_MODE=disabled` in the environment is refused unless the command was given `--insecure-no-auth`;
  then the cluster runs without a token, still on 127.0.0.1 only, and a warning says that every user of
  the machine can reach it (CVE-2023-48022).
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

INSECURE_FLAG = "--insecure-no-auth"
TOKEN_FILE = "ray_token"
LOOPBACK = "127.0.0.1"
# Set in the environment of the local cluster's processes: every server on 127.0.0.1 (module docstring),
# gloo's and NCCL's sockets on the loopback interface.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}


def without_local_settings(environ: dict[str, str]) -> dict[str, str]:
    """ENVIRON less what `start` set for a local cluster, for processes of a multi-node cluster started from
    a process that has one (the SLURM bootstrap): they must not inherit loopback-only settings."""
    return {k: v for k, v in environ.items()
            if k != "CLS_LOCAL_RAY_DIR" and not (k in LOOPBACK_ENV and v == LOOPBACK_ENV[k])}


def add_insecure_flag(parser) -> None:
    """The one documented way to run a local cluster without token authentication."""
    parser.add_argument(
        INSECURE_FLAG, dest="insecure_no_auth", action="store_true",
        help="start the local Ray cluster without token authentication (needed to honour RAY_AUTH_MODE="
             "disabled): every user of this machine can then run code as you on it. See README, Security")


def check_auth_mode(insecure_no_auth: bool, environ: dict[str, str] | None = None) -> None:
    """Refuse `RAY_AUTH_MODE=disabled` for a local cluster unless the user passed --insecure-no-auth.
    Raises ValueError (one line, the CLI's exit 2)."""
    environ = os.environ if environ is None else environ
    if environ.get("RAY_ADDRESS"):
        return  # joining a running cluster: its owner decided (the SLURM bootstrap turns tokens on)
    mode = environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode == "disabled" and not insecure_no_auth:
        raise ValueError(
            "RAY_AUTH_MODE=disabled would let every user of this machine run code as you through the local "
            f"Ray cluster: unset it (cls gives each cluster its own token), or pass {INSECURE_FLAG} to accept that")


@dataclass
class LocalCluster:
    directory: Path  # 0700: the token file and Ray's temp dir (ray/)
    token_path: Path | None  # None with --insecure-no-auth
    dashboard: str


def private_dir(prefix: str = "cls-ray-") -> Path:
    """A fresh directory only the user can enter, with an unguessable name. Short on purpose: Ray's Unix
    sockets live under it (paths must stay under 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("CLS_RAY_TMP", "/tmp")))


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def write_token(directory: Path) -> tuple[Path, str]:
    """A fresh token in DIRECTORY/ray_token, created 0600 whatever the umask (O_EXCL: never an existing file)."""
    token = secrets.token_hex(32)
    path = directory / TOKEN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return path, token


def _chain_sigterm(token_path: Path) -> None:
    """After ray.init (which sets its own SIGTERM handler: stop Ray's processes, then sys.exit): unlink the
    token first, then let Ray's handler run."""
    ray_handler = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        with contextlib.suppress(OSError):
            token_path.unlink()
        if callable(ray_handler):
            ray_handler(signum, frame)
        else:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def _stop_and_remove(directory: Path) -> None:
    import ray

    with contextlib.suppress(Exception):
        ray.shutdown()
    shutil.rmtree(directory, ignore_errors=True)


def _reload_ray_config() -> None:
    """Make this process see the settings just put in os.environ: `import ray` already read RAY_AUTH_MODE
    into its cached config and the loopback switch into a constant, and the token loader caches the token
    it found (Ray's own authentication_token_setup._enable_token_auth re-initialises the config this way)."""
    from ray._private import ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    # Read from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at import; the node address this driver hands every Ray
    # process on its command line comes from it (services.get_node_ip_address). ray==2.60.0 is pinned.
    ray_constants.ENABLE_RAY_CLUSTER = False


def start(env_vars: dict[str, str], num_cpus: float | None = None, insecure_no_auth: bool = False,
          out=None, log_to_driver: bool = True) -> LocalCluster:
    """Start the local cluster and connect this process to it (see the module docstring). `env_vars`: the
    job's runtime_env environment. Prints the dashboard's address and how to use the token once."""
    import ray

    out = sys.stderr if out is None else out
    check_auth_mode(insecure_no_auth)
    directory = private_dir()
    token_path = None
    # Before ray.init: these reach every Ray process through the environment it inherits from us.
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    # Every server on loopback (LOOPBACK_ENV); a run's process group meets through a file in DIR
    # (cluster/torch_store.py).
    os.environ.update({"CLS_LOCAL_RAY_DIR": str(directory), **LOOPBACK_ENV})
    if insecure_no_auth:
        os.environ["RAY_AUTH_MODE"] = "disabled"
        os.environ.pop("RAY_AUTH_TOKEN", None)
    else:
        token_path, token = write_token(directory)
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = token
    _reload_ray_config()
    # The GCS on a port chosen here, so that the cluster's own processes can be told its address: Ray's state
    # API (Train's TrainStateActor, its placement-group cleaner) otherwise finds its cluster by listing the
    # machine's GCS processes, and fails ("Found multiple active Ray instances") when two `cls sweep` run at
    # once. RAY_ADDRESS goes to the job's processes only: in this process it would make ray.init connect.
    gcs_port = free_port()
    os.environ["RAY_GCS_SERVER_PORT"] = str(gcs_port)
    env_vars = {**env_vars, "RAY_ADDRESS": f"{LOOPBACK}:{gcs_port}"}
    try:
        context = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host=LOOPBACK,
                           _temp_dir=str(directory / "ray"), runtime_env={"env_vars": env_vars},
                           log_to_driver=log_to_driver,
                           # quiet (a sweep): Ray's INFO lines ("Started a local Ray instance") stay off too
                           logging_level=logging.INFO if log_to_driver else logging.WARNING)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    # At exit (also after Ray's SIGTERM handler, which exits): stop Ray's processes first (Ray's own exit hook
    # comes later; until then its dashboard keeps writing into the directory), then remove the directory.
    atexit.register(_stop_and_remove, directory)
    if token_path is not None:
        _chain_sigterm(token_path)
    gcs = ray.get_runtime_context().gcs_address
    if gcs != env_vars["RAY_ADDRESS"]:
        ray.shutdown()
        raise RuntimeError(f"the local Ray cluster's GCS is at {gcs}, not "
                           f"{env_vars['RAY_ADDRESS']} (RAY_GCS_SERVER_PORT): use ray==2.60.0")
    address = ray.util.get_node_ip_address()
    if address != LOOPBACK:  # fail closed: another Ray would listen on the machine's network
        ray.shutdown()
        raise RuntimeError(f"the local Ray cluster's node address is {address}, not {LOOPBACK}: this Ray "
                           f"({ray.__version__}) does not keep its ports on loopback; use ray==2.60.0")
    dashboard = f"http://{context.dashboard_url}" if context.dashboard_url else ""
    cluster = LocalCluster(directory, token_path, dashboard)
    announce(cluster, out)
    return cluster


def announce(cluster: LocalCluster, out) -> None:
    if cluster.token_path is None:
        print(f"WARNING: token authentication is off ({INSECURE_FLAG}): every user of this machine can reach "
              f"this Ray cluster on 127.0.0.1 and run code as {getpass.getuser()}. Dashboard: {cluster.dashboard}",
              file=out, flush=True)
        return
    print(f"Ray dashboard: {cluster.dashboard} (this machine only; token authentication on). Token: "
          f"{cluster.token_path} (readable by you only, removed when this command ends); the dashboard asks "
          f"for it, and for curl: -H \"Authorization: Bearer $(cat {cluster.token_path})\"", file=out, flush=True)

