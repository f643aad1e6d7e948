"""What the web console's browser tests share: a Cloud (fake agents) served by uvicorn on
127.0.0.1 on a free port in a thread, a background converger standing in for the reconciler and
the agents' heartbeats, and headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.
Everything started here is stopped by close()."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn

from tests.functional.fake_agent import Cloud

CHROMIUM = "/usr/bin/chromium"


class ServedCloud:
    """cloud.app on http://127.0.0.1:<free port>; `converging` on: every 0.2 s one reconciler
    tick and every agent's heartbeat (under `lock`, which tests hold to change the cloud)."""

    def __init__(self, tmp: Path, **overrides):
        self.cloud = Cloud(tmp, **overrides)
        self.lock = threading.RLock()
        self.converging = threading.Event()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.cloud.app, log_level="warning",
                                                    lifespan="on"))
        self._threads = [threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                          name="console-uvicorn", daemon=True),
                         threading.Thread(target=self._converge, name="console-converger",
                                          daemon=True)]
        for t in self._threads:
            t.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def _converge(self) -> None:
        while not self._stop.wait(0.2):
            if self.converging.is_set():
                with self.lock:
                    self.cloud.tick()
                    self.cloud.heartbeat()

    def close(self) -> None:
        self._stop.set()
        self.server.should_exit = True
        for t in self._threads:
            t.join(15)
        self._sock.close()
        self.cloud.close()
