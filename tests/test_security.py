"""No other user of the machine reaches a cluster `cls` starts (issue 12): the local cluster's token, ports and
temp dir; the refusal of RAY_AUTH_MODE=disabled; files that follow the user's umask. The SLURM side is in
test_slurm.py (it needs the dev SLURM)."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from cls.results import ResultsWriter, load, summarize
from cluster import local
from polling import wait_for

REPO = Path(__file__).resolve().parents[1]
OTHER_USER = "cls-sec-other"
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}  # the second: a dual-stack socket bound to IPv4 loopback
ONE_TRIAL = ["sweep.axes.model.cbam.grid=[false]", "sweep.axes.seed.grid=[0]"]


def cls_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env.update(CLS_DATA_ROOT=str(tmp_path / "data"), CLS_RUNS=str(tmp_path / "runs"),
               CLS_RESULTS=str(tmp_path / "results"), PYTHONPATH=str(REPO), **extra)
    return env


def with_umask(mask: int):
    return lambda: os.umask(mask)


def modes(*roots: Path) -> dict[str, int]:
    """Every file and directory under ROOTS -> its permission bits."""
    found = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            if not path.is_symlink():
                found[str(path)] = path.stat().st_mode & 0o777
    return found


def assert_umask_modes(mask: int, *roots: Path) -> None:
    found = modes(*roots)
    assert len(found) > 10, found  # the run wrote something: a store, epochs, a checkpoint
    want_dir, want_file = 0o777 & ~mask, 0o666 & ~mask
    wrong = {p: oct(m) for p, m in found.items() if m != (want_dir if Path(p).is_dir() else want_file)}
    assert not wrong, f"under umask {mask:03o}, dirs should be {want_dir:o} and files {want_file:o}: {wrong}"


def http_status(url: str, token: str | None = None, body: dict | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


# --- without Ray -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["sweep", "sweeps/quickstart.yaml"], ["train", "experiment=dnffm_digits"]],
                         ids=["sweep", "train"])
def test_auth_disabled_is_refused_without_the_flag(command, tmp_path):
    env = cls_env(tmp_path, RAY_AUTH_MODE="disabled")
    result = subprocess.run([sys.executable, "-m", "cls", *command], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one line, no stack
    assert "RAY_AUTH_MODE=disabled" in result.stderr and local.INSECURE_FLAG in result.stderr
    assert not (tmp_path / "data").exists()  # stopped before anything ran


def test_the_flag_is_the_only_way_to_disable_auth():
    local.check_auth_mode(False, {})  # unset: fine, cls turns tokens on itself
    local.check_auth_mode(False, {"RAY_AUTH_MODE": "token"})
    local.check_auth_mode(True, {"RAY_AUTH_MODE": "disabled"})
    local.check_auth_mode(False, {"RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "10.0.0.1:6379"})  # not ours
    with pytest.raises(ValueError, match="--insecure-no-auth"):
        local.check_auth_mode(False, {"RAY_AUTH_MODE": " Disabled"})


def test_without_auth_the_start_line_says_who_can_reach_the_cluster(tmp_path):
    import getpass
    import io

    out = io.StringIO()
    local.announce(local.LocalCluster(tmp_path, None, "http://127.0.0.1:8265"), out)
    line = out.getvalue()
    assert line.startswith("WARNING:") and line.count("\n") == 1
    assert "every user of this machine" in line and getpass.getuser() in line and "127.0.0.1" in line
    out = io.StringIO()
    local.announce(local.LocalCluster(tmp_path, tmp_path / "ray_token", "http://127.0.0.1:8265"), out)
    assert "Token: " + str(tmp_path / "ray_token") in out.getvalue() and "Authorization: Bearer" in out.getvalue()


def test_a_slurm_job_started_beside_a_local_cluster_does_not_inherit_its_loopback_settings():
    inherited = {**local.LOOPBACK_ENV, "CLS_LOCAL_RAY_DIR": "/tmp/cls-ray-x", "PATH": "/bin",
                 "GLOO_SOCKET_IFNAME": "ib0"}  # the user's own choice stays
    assert local.without_local_settings(inherited) == {"PATH": "/bin", "GLOO_SOCKET_IFNAME": "ib0"}


def test_token_file_and_dir_are_private_whatever_the_umask(tmp_path, monkeypatch):
    monkeypatch.setenv("CLS_RAY_TMP", str(tmp_path))
    previous = os.umask(0)
    try:
        first, second = local.private_dir(), local.private_dir()
        path, token = local.write_token(first)
    finally:
        os.umask(previous)
    assert first != second and first.name.startswith("cls-ray-")  # fresh, unguessable
    assert first.stat().st_mode & 0o777 == 0o700 and path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == token and re.fullmatch(r"[0-9a-f]{64}", token)
    with pytest.raises(FileExistsError):  # never an existing file (someone else's, or a link)
        local.write_token(first)


@pytest.mark.parametrize("mask", [0o077, 0o002], ids=["umask077", "umask002"])
def test_a_local_run_writes_files_with_the_modes_of_the_umask(mask, tmp_path):
    """`cls train --local` (one process: store rows, epoch files, confusion matrices, checkpoints) and
    `cls report`: nothing narrower or wider than the umask gives."""
    env = cls_env(tmp_path)
    train = subprocess.run([sys.executable, "-m", "cls", "train", "--local", "experiment=dnffm_digits",
                            "trainer.epochs=1", "trainer.max_steps=3", "results.sweep=umask"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                           preexec_fn=with_umask(mask))
    assert train.returncode == 0, train.stderr[-3000:]
    # `cls train --local` keeps no trials row (a sweep does): add one, as a sweep would, for the report.
    root = tmp_path / "results"
    epochs = load(root, "epochs", sweep="umask")
    previous = os.umask(mask)
    try:
        ResultsWriter(root, "umask", epochs["trial_id"].iloc[0]).write_trial(
            {"status": "finished", "experiment": "dnffm_digits", **summarize(epochs.to_dict("records"))})
    finally:
        os.umask(previous)
    report = subprocess.run([sys.executable, "-m", "cls", "report", "umask", "--out", str(tmp_path / "report")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                            preexec_fn=with_umask(mask))
    assert report.returncode == 0, report.stderr[-3000:]
    assert list((tmp_path / "runs").rglob("checkpoint.pt")) and (tmp_path / "report" / "report.md").is_file()
    assert_umask_modes(mask, tmp_path / "runs", tmp_path / "results", tmp_path / "data", tmp_path / "report")


# --- one real local cluster ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_user():
    """A second Unix user of this machine (tests run as root here and in CI)."""
    if os.geteuid() != 0:
        pytest.skip("creating a second user needs root")
    try:
        pwd.getpwnam(OTHER_USER)
        created = False
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER], check=True)
        created = True
    yield OTHER_USER
    if created:
        subprocess.run(["userdel", OTHER_USER], check=False)


def as_other_user(user: str, code: str, *args: str) -> dict:
    """Run CODE (stdlib Python) as USER; it prints one JSON object."""
    result = subprocess.run(["runuser", "-u", user, "--", "/usr/bin/python3", "-c", code, *args],
                            capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


ATTACK = r"""
import json, sys, urllib.error, urllib.request
token_path, environ, dashboard, shared = sys.argv[1:5]
out = {}
for name, path in (("token", token_path), ("environ", environ), ("shared", shared)):
    try:
        open(path).read()
        out[name] = "read"
    except OSError as e:
        out[name] = type(e).__name__
def post(token):
    headers = {"Content-Type": "application/json", **({"Authorization": "Bearer " + token} if token else {})}
    body = json.dumps({"entrypoint": "touch /tmp/cls-sec-pwned"}).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(dashboard + "/api/jobs/", body, headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
out["submit"] = post(None)
out["submit_guess"] = post("0" * 64)
print(json.dumps(out))
"""


def test_a_local_sweep_is_reachable_by_its_user_only(tmp_path, other_user):
    """While a local `cls sweep` runs (under umask 002, which would let the group read what is not
    protected on purpose): every listening socket of its Ray processes is on 127.0.0.1; the job API wants
    the cluster's own token (not Ray's shared ~/.ray/auth_token); another user can read neither the token
    nor the driver's environment and cannot submit a job. SIGTERM ends it and removes the token and Ray's
    temp dir. The files the sweep wrote have the modes umask 002 gives."""
    shared_token = Path.home() / ".ray" / "auth_token"
    made_shared = not shared_token.exists()
    if made_shared:  # what a plain ray.init() leaves behind
        shared_token.parent.mkdir(exist_ok=True)
        shared_token.write_text("f" * 64)
    out_path, err_path = tmp_path / "out.txt", tmp_path / "err.txt"
    env = cls_env(tmp_path)
    command = [sys.executable, "-m", "cls", "sweep", str(REPO / "sweeps" / "quickstart.yaml"), *ONE_TRIAL,
               "trainer.epochs=60", "trainer.max_steps=4"]  # short epochs, and many: it runs until SIGTERM
    with open(out_path, "w") as out, open(err_path, "w") as err:
        driver = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=err,
                                  preexec_fn=with_umask(0o002))
    try:
        line = wait_for(lambda: re.search(r"Ray dashboard: (\S+) .*Token: (\S+) ", err_path.read_text()),
                        timeout=180, what="the dashboard line")
        dashboard, token_path = line.group(1), Path(line.group(2))
        assert err_path.read_text().count("Ray dashboard:") == 1  # printed once, not by every trial
        # A trial is training: its Train workers are up, with their ports.
        wait_for(lambda: list((tmp_path / "runs").rglob("epoch_0000.json")), timeout=300, what="an epoch")

        # The token: fresh, 0600 in a 0700 directory of ours, not Ray's shared one.
        assert token_path.stat().st_mode & 0o777 == 0o600 and token_path.stat().st_uid == os.getuid()
        assert token_path.parent.stat().st_mode & 0o777 == 0o700
        token = token_path.read_text()
        assert token != shared_token.read_text().strip()
        assert token not in " ".join(" ".join(p.cmdline()) for p in local_processes(driver.pid))

        # Every listening socket of the driver and its Ray processes is on the loopback address.
        listening = [(p.name(), c.laddr) for p in local_processes(driver.pid)
                     for c in connections(p) if c.status == psutil.CONN_LISTEN]
        names = {n for n, _ in listening}
        assert {"gcs_server", "raylet"} <= names and len(listening) >= 8, listening
        exposed = [(n, a) for n, a in listening if a.ip not in LOOPBACK]
        assert not exposed, f"listening beyond 127.0.0.1: {exposed}"

        # The job API: 200 with the cluster's token; 401 without one, 401/403 (Ray's answer to a wrong
        # token) with Ray's shared token.
        assert http_status(f"{dashboard}/api/jobs/", token) == 200
        assert http_status(f"{dashboard}/api/jobs/") == 401
        assert http_status(f"{dashboard}/api/jobs/", shared_token.read_text().strip()) in (401, 403)
        job = {"entrypoint": "touch /tmp/cls-sec-pwned"}
        assert http_status(f"{dashboard}/api/jobs/", shared_token.read_text().strip(), job) in (401, 403)

        # Another user of the machine: no token, no environment, no job.
        seen = as_other_user(other_user, ATTACK, str(token_path), f"/proc/{driver.pid}/environ", dashboard,
                             str(shared_token))
        assert seen["token"] == "PermissionError" and seen["environ"] == "PermissionError", seen
        assert seen["submit"] == 401 and seen["submit_guess"] in (401, 403), seen
        assert not Path("/tmp/cls-sec-pwned").exists()

        # SIGTERM (scancel, a shutdown): the sweep stops, and the token and Ray's temp dir go with it.
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=180) == 130, err_path.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait()
        if made_shared:
            shared_token.unlink(missing_ok=True)
    assert not token_path.exists() and not token_path.parent.exists()
    # What the sweep wrote before it stopped (store rows, epoch files, a checkpoint persisted by Ray Train).
    assert list((tmp_path / "runs").rglob("checkpoint.pt"))
    assert_umask_modes(0o002, tmp_path / "runs", tmp_path / "results")


def local_processes(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def connections(process: psutil.Process) -> list:
    try:
        return process.net_connections(kind="inet")
    except psutil.Error:  # a worker that ended meanwhile
        return []
