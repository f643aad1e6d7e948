"""What the web console's browser tests share: a Cloud (fake agents) served by uvicorn on
127.0.0.1 on a free port in a thread, a background converger standing in for the reconciler and
the agents' heartbeats, and headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.
Everything started here is stopped by close()."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import uvicorn

from tests.functional.fake_agent import Cloud

CHROMIUM = "/usr/bin/chromium"

try:  # Playwright's expect() waits 5 s by default: too little on a loaded 2-core runner.
    from playwright.sync_api import expect as _expect
    _expect.set_options(timeout=15_000)
except ImportError:  # the tests that need it skip themselves
    pass


class ServedCloud:
    """cloud.app on http://127.0.0.1:<free port>; `converging` on: every 0.2 s one reconciler
    tick and every agent's heartbeat (under `lock`, which tests hold to change the cloud)."""

    def __init__(self, tmp: Path, *, cloud_class: type[Cloud] = Cloud, **overrides):
        # cloud_class: e.g. tests/functional/volume_cloud.py's VolumeCloud, for a storage node.
        self.cloud = cloud_class(tmp, **overrides)
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


#: Chromium's flags, here only: no sandbox (the tests run as root, where Chromium's sandbox
#: refuses to start) and no GPU (headless machines have none).
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu")


def launch_chromium(playwright):
    """Debian's headless Chromium started by a Playwright (sync) instance: the one launcher of
    the browser tests and the screenshot command. The caller closes the browser."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=list(CHROMIUM_ARGS))


@contextlib.contextmanager
def chromium() -> Iterator:
    """A fresh headless Chromium (Debian's; Playwright drives it), closed at the end: one per
    test module is enough (pages get their own contexts: cookies are not shared)."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def browser_page(browser, width: int = 1280, height: int = 900, timeout_ms: int = 15_000,
                 **context_args) -> Iterator:
    """A page in a new context of `browser`, watched: a dialog (user text run as script would
    open one: alert()) is dismissed and, like any uncaught script error or CSP violation,
    fails the test when the page closes."""
    ctx = browser.new_context(viewport={"width": width, "height": height}, **context_args)
    page = ctx.new_page()
    page.set_default_timeout(timeout_ms)
    dialogs: list[str] = []
    errors: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield page
    finally:
        ctx.close()
    assert not dialogs, f"a dialog opened (did user text run as script?): {dialogs}"
    assert not errors, f"JavaScript errors: {errors}"


@contextlib.contextmanager
def chromium_page(width: int = 1280, height: int = 900, timeout_ms: int = 15_000) -> Iterator:
    """A watched page (browser_page) of a fresh headless Chromium, closed at the end."""
    with chromium() as browser, browser_page(browser, width, height, timeout_ms) as page:
        yield page


def sign_in(page, base_url: str, *, username: str | None = None, password: str | None = None,
            api_key: str | None = None) -> None:
    """Sign in on the console's form (a console user, or an API key) and wait for the
    dashboard."""
    from playwright.sync_api import expect
    page.goto(f"{base_url}/console/")
    if api_key is not None:
        page.get_by_label("API key").fill(api_key)
    else:
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()


def wizard_step(page, n: int, button: str = "Next") -> None:
    """Move the launch wizard one step with `button` and wait until it shows step n of 7."""
    from playwright.sync_api import expect
    page.get_by_role("button", name=button).click()
    expect(page.locator("#step-title")).to_contain_text(f"Step {n} of 7")
