"""A real headless Chromium for the tests, driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
JSON messages ending in a NUL byte, commands on the browser's fd 3, replies and events on its fd 4), so no
port is opened and nothing beyond Debian's `chromium` package is needed.

    with Chromium(executable, tmp_path) as browser:
        page = browser.load(Path("report.html"))   # PageLoad: requests, failures, console errors, screenshot
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The flags /work/.library/env/machines/python.md gives for this machine's closed network: without the
# background-networking ones Chromium keeps trying to reach Google's hosts.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1600", "--remote-debugging-pipe")
TIMEOUT_S = 60


def find_or_install() -> str | None:
    """The chromium executable, installed with apt-get (as root) when missing; None if it cannot be had."""
    found = shutil.which("chromium")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        subprocess.run(install, env=env, capture_output=True, check=True)
    return shutil.which("chromium")


@dataclass
class PageLoad:
    """What loading one page did: every request's URL, the failed ones, console and log errors, uncaught
    exceptions, images that did not decode, and a PNG screenshot."""

    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    images: int = 0
    screenshot: bytes = b""


class Chromium:
    def __init__(self, executable: str, workdir: Path):
        profile = workdir / "chromium-profile"  # a fresh profile: no state from an earlier run
        profile.mkdir(parents=True)
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The browser expects the pipe on fds 3 and 4 exactly: let bash put them there (dash takes one-digit fds only).
        script = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
        self.process = subprocess.Popen(
            ["bash", "-c", script, executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL,
            stderr=open(workdir / "chromium.log", "wb"))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._events: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._messages.put(json.loads(message))
        self._messages.put(None)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Send one command and wait for its reply (events that arrive meanwhile are kept)."""
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            command["sessionId"] = session
        os.write(self._to_browser, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            message = self._get(deadline, method)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._events.append(message)

    def wait_for(self, event: str, session: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        for i, message in enumerate(self._events):
            if message.get("method") == event and message.get("sessionId") == session:
                return message
        while True:
            message = self._get(deadline, event)
            self._events.append(message)
            if message.get("method") == event and message.get("sessionId") == session:
                return message

    def _get(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        try:
            message = self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"Chromium did not answer {waiting_for} within {TIMEOUT_S} s") from None
        if message is None:
            raise RuntimeError(f"Chromium closed its pipe (exit {self.process.poll()}) while waiting for {waiting_for}")
        return message

    def load(self, path: Path) -> PageLoad:
        """Open `path` in a new tab, wait for its load event, and report what happened."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        start = len(self._events)
        self.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        self.wait_for("Page.loadEventFired", session)
        # Images decoded: a data: URI that is not a valid PNG loads as a broken image, with no failed request.
        check = ("JSON.stringify({n: document.images.length, broken: Array.from(document.images)"
                 ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80))})")
        images = json.loads(self.send("Runtime.evaluate", {"expression": check, "returnByValue": True},
                                      session=session)["result"]["value"])
        shot = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"])
        page = PageLoad(images=images["n"], broken_images=images["broken"], screenshot=shot)
        for event in self._events[start:]:
            if event.get("sessionId") != session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Network.requestWillBeSent":
                page.requests.append(params["request"]["url"])
            elif method == "Network.loadingFailed":
                page.failed.append(f"{params.get('errorText')} {params.get('blockedReason') or ''}".strip())
            elif method == "Runtime.exceptionThrown":
                page.errors.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                page.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                page.errors.append(params["entry"]["text"])
        self.send("Target.closeTarget", {"targetId": target})
        return page

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
