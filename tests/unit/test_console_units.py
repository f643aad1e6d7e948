"""The web console's pure parts: the failed sign-in throttle (a sliding window per username and
client), password hashing, and the static files (served from the controller alone, never
inserting text as HTML)."""
from __future__ import annotations

import re

import pytest

from controller.console import STATIC
from controller.services import console_users
from controller.services.console_sessions import SignInThrottle, SignInThrottled


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_counts_failures_per_username_and_client_in_a_window():
    clock = Clock()
    t = SignInThrottle(3, 60.0, clock=clock)
    alice_here, alice_there, bob_here = ("user:alice", "1.2.3.4"), ("user:alice", "5.6.7.8"), \
        ("user:bob", "1.2.3.4")
    for _ in range(3):
        t.check(alice_here)
        t.failed(alice_here)
        clock.now += 1
    with pytest.raises(SignInThrottled) as exc:
        t.check(alice_here)
    assert exc.value.status == 429 and exc.value.retryable
    t.check(alice_there)  # another client: its own count
    t.check(bob_here)  # another username: its own count
    clock.now += 57  # the first failure (only) leaves the window
    t.check(alice_here)
    t.failed(alice_here)
    with pytest.raises(SignInThrottled):
        t.check(alice_here)
    t.succeeded(alice_here)  # a success forgets the failures
    t.check(alice_here)


def test_throttle_forgets_old_keys_when_it_holds_many():
    clock = Clock()
    t = SignInThrottle(3, 60.0, clock=clock)
    t.MAX_KEYS = 10
    for n in range(10):
        t.failed((f"user:u{n}", "client"))
    clock.now += 61
    t.failed(("user:new", "client"))
    assert list(t._failures) == [("user:new", "client")]


def test_passwords_are_argon2id_with_a_salt():
    a, b = console_users.hash_password("same password"), console_users.hash_password("same password")
    assert a.startswith("$argon2id$") and b.startswith("$argon2id$") and a != b
    assert "same password" not in a
    assert console_users._HASHER.verify(a, "same password")


def _files():
    return [p for p in STATIC.rglob("*") if p.is_file()]


def test_static_files_exist_and_fetch_nothing_from_elsewhere():
    names = {p.relative_to(STATIC).as_posix() for p in _files()}
    assert {"index.html", "style.css", "js/app.js", "js/api.js", "js/dom.js", "js/instances.js",
            "js/launch.js"} <= names
    for p in _files():
        text = p.read_text()
        if "vendor" in p.relative_to(STATIC).parts:
            # Vendored code (pinned by sha256, controller/console/vendor.json) names its home
            # page and sources in comments: what matters is that it loads nothing from elsewhere.
            assert not re.search(r"""((import|from)\s*['"]|url\(\s*['"]?|(src|href)\s*=\s*['"])"""
                                 r"""\s*(https?:)?//""", text, re.I), p
            continue
        # No CDN, no font or script from the internet: sites may be offline.
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), p


def test_scripts_never_insert_text_as_html():
    for p in STATIC.rglob("*.js"):
        text = p.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                     "new Function"):
            assert sink not in text, (p, sink)
    html = (STATIC / "index.html").read_text()
    assert "<script>" not in html and "onclick" not in html  # no inline script (the CSP forbids it)
