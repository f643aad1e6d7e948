"""The web console's users, sessions and CSRF protection, through the controller's HTTP API
(in process, fake agents), on SQLite and on PostgreSQL (tests/functional/pg.py):

- console users per account: argon2id hashes, create/list/delete, admin for other accounts;
- sign-in with a password or an API key; one generic 401 for every wrong credential; a
  throttle per username and client (429);
- sessions: only the token's hash stored, a new token at every sign-in (no fixation), idle and
  absolute expiry, sign-out; HttpOnly, SameSite=Strict, Secure over https;
- CSRF: a session cookie without the session's X-CSRF-Token header changes nothing (403);
- another account's instance is a 404 through a session too.
"""
from __future__ import annotations

import os
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from controller.ids import utcnow
from controller.models import ConsoleSession, ConsoleUser, KeyPair
from tests.functional.fake_agent import Cloud
from tests.functional import pg

PASSWORD = "correct horse battery staple"
COOKIE = "kumo_session"
postgres = pg.postgres  # the module's throw-away PostgreSQL server (a fixture), skipped without one


@pytest.fixture(params=["sqlite", "postgresql"])
def cloud(request, tmp_path):
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").create_database(
            icu_locale=os.environ.get("KUMO_TEST_PG_ICU_LOCALE"))
    c = Cloud(tmp_path, database_url=url)
    c.image()
    c.add_host("host-1")
    yield c
    c.close()


def _account(cloud: Cloud, name: str) -> tuple[TestClient, str]:
    r = cloud.admin.post("/v1/accounts", json={"name": name})
    assert r.status_code == 201, r.text
    return cloud.client(r.json()["api_key"]), r.json()["account_id"]


def _user(client: TestClient, username: str = "alice", password: str = PASSWORD) -> dict:
    r = client.post("/v1/account/users", json={"username": username, "password": password})
    assert r.status_code == 201, r.text
    return r.json()


def _browser(cloud: Cloud, base_url: str = "http://testserver") -> TestClient:
    return TestClient(cloud.app, base_url=base_url)


def _sign_in(browser: TestClient, **creds) -> dict:
    r = browser.post("/console/api/session", json=creds or {"username": "alice",
                                                            "password": PASSWORD})
    assert r.status_code == 201, r.text
    return r.json()


def _sessions(cloud: Cloud) -> list[ConsoleSession]:
    with cloud.db.session() as s:
        return list(s.exec(select(ConsoleSession)))


def _key_pairs(cloud: Cloud) -> int:
    with cloud.db.session() as s:
        return len(list(s.exec(select(KeyPair))))


def test_users_are_per_account_with_argon2_hashes(cloud):
    acme, acme_id = _account(cloud, "acme")
    other, _ = _account(cloud, "other")
    user = _user(acme)
    assert user["account_id"] == acme_id and user["username"] == "alice"
    assert "password" not in user and "password_hash" not in user
    with cloud.db.session() as s:
        row = s.exec(select(ConsoleUser)).one()
    assert row.password_hash.startswith("$argon2id$") and PASSWORD not in row.password_hash

    # Refused, nothing created: taken (anywhere in the cloud), bad names, short passwords.
    for client, body, status, code in [
            (other, {"username": "alice", "password": PASSWORD}, 409, "UserAlreadyExists"),
            (acme, {"username": "Alice", "password": PASSWORD}, 400, "InvalidParameterValue"),
            (acme, {"username": "<b>", "password": PASSWORD}, 400, "InvalidParameterValue"),
            (acme, {"username": "bob", "password": "short"}, 400, "InvalidParameterValue"),
            (acme, {"username": "bob"}, 400, "MissingParameter")]:
        r = client.post("/v1/account/users", json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    assert [u["username"] for u in acme.get("/v1/account/users").json()["items"]] == ["alice"]
    assert other.get("/v1/account/users").json()["items"] == []

    # Another account cannot delete it; admins manage any account's users.
    r = other.delete("/v1/account/users/alice")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "InvalidUser.NotFound")
    assert other.post(f"/v1/accounts/{acme_id}/users",
                      json={"username": "eve", "password": PASSWORD}).status_code == 403
    r = cloud.admin.post(f"/v1/accounts/{acme_id}/users",
                         json={"username": "bob", "password": PASSWORD})
    assert r.status_code == 201 and r.json()["account_id"] == acme_id
    names = [u["username"] for u in cloud.admin.get(f"/v1/accounts/{acme_id}/users").json()["items"]]
    assert names == ["alice", "bob"]
    r = cloud.admin.get("/v1/accounts/acct-00000000000000000/users")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "InvalidAccountID.NotFound")

    # Deleting a user ends its sessions at once.
    browser = _browser(cloud)
    _sign_in(browser, username="bob", password=PASSWORD)
    assert browser.get("/v1/instances").status_code == 200
    assert cloud.admin.delete(f"/v1/accounts/{acme_id}/users/bob").status_code == 200
    assert browser.get("/v1/instances").status_code == 401
    assert _sessions(cloud) == []


def test_sign_in_with_password_or_key_one_generic_failure(cloud):
    acme, acme_id = _account(cloud, "acme")
    _user(acme)
    key = acme.headers["authorization"].removeprefix("Bearer ")
    browser = _browser(cloud)
    failures = [{"username": "alice", "password": "wrong password!"},
                {"username": "nobody", "password": PASSWORD},
                {"api_key": "kumo_not-a-key"},
                {"username": "alice", "password": PASSWORD, "api_key": key},  # both: refused
                {"username": "alice"}, {}]
    answers = set()
    for creds in failures:
        r = browser.post("/console/api/session", json=creds)
        assert r.status_code == 401, (creds, r.text)
        assert COOKIE not in r.cookies
        answers.add((r.json()["error"]["code"], r.json()["error"]["message"]))
    assert answers == {("SignInFailed", "incorrect username and password, or API key")}
    assert _sessions(cloud) == []

    body = _sign_in(browser)
    assert body["account_id"] == acme_id and body["username"] == "alice"
    assert body["account_name"] == "acme" and body["is_admin"] is False and body["csrf_token"]
    by_key = _browser(cloud)
    body = _sign_in(by_key, api_key=key)
    assert body["account_id"] == acme_id and body["username"] is None
    assert by_key.get("/v1/account").json()["name"] == "acme"
    r = by_key.get("/console/api/session")
    assert r.status_code == 200 and r.json()["csrf_token"] == body["csrf_token"]


def test_cookie_flags_and_only_the_token_hash_is_stored(cloud):
    acme, _ = _account(cloud, "acme")
    _user(acme)
    r = _browser(cloud).post("/console/api/session",
                             json={"username": "alice", "password": PASSWORD})
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http (127.0.0.1): a Secure cookie would never come back
    token = r.cookies[COOKIE]
    [row] = _sessions(cloud)
    assert token not in (row.token_sha256, row.csrf_token) and len(row.token_sha256) == 64
    r = _browser(cloud, "https://testserver").post(
        "/console/api/session", json={"username": "alice", "password": PASSWORD})
    assert "Secure" in r.headers["set-cookie"]


def test_sign_in_makes_a_new_session_and_ends_the_one_presented(cloud):
    acme, _ = _account(cloud, "acme")
    _user(acme)
    creds = {"username": "alice", "password": PASSWORD}

    def sign_in_with(cookie: str) -> str:
        c = _browser(cloud)
        r = c.post("/console/api/session", json=creds, headers={"Cookie": f"{COOKIE}={cookie}"})
        assert r.status_code == 201, r.text
        return r.cookies[COOKIE]

    # A token planted before sign-in (by an attacker) is never the one signed in.
    first = sign_in_with("planted-token")
    assert first != "planted-token"
    # Signing in again with a live session replaces it: the old token is dead.
    second = sign_in_with(first)
    assert second != first and len(_sessions(cloud)) == 1
    for token, status in ((first, 401), ("planted-token", 401), (second, 200)):
        r = _browser(cloud).get("/v1/instances", headers={"Cookie": f"{COOKIE}={token}"})
        assert r.status_code == status, (token, r.text)


def test_csrf_header_required_for_unsafe_methods(cloud):
    acme, _ = _account(cloud, "acme")
    _user(acme)
    browser = _browser(cloud)
    csrf = _sign_in(browser)["csrf_token"]
    assert browser.get("/v1/key-pairs").status_code == 200  # reads need no header
    for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": ""}):
        r = browser.post("/v1/key-pairs", json={"name": "k1"}, headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "InvalidCsrfToken"), r.text
        r = browser.delete("/console/api/session", headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "InvalidCsrfToken")
    assert _key_pairs(cloud) == 0 and len(_sessions(cloud)) == 1  # nothing changed
    # Another session's CSRF token is no good either.
    other = _browser(cloud)
    other_csrf = _sign_in(other, username="alice", password=PASSWORD)["csrf_token"]
    assert browser.post("/v1/key-pairs", json={"name": "k1"},
                        headers={"X-CSRF-Token": other_csrf}).status_code == 403
    r = browser.post("/v1/key-pairs", json={"name": "k1"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201, r.text
    # A bearer key is not a cookie: no CSRF header needed (the CLI's way).
    assert acme.post("/v1/key-pairs", json={"name": "k2"}).status_code == 201


def test_sessions_expire_idle_and_absolute(cloud):
    acme, _ = _account(cloud, "acme")
    _user(acme)
    idle_s = cloud.settings.console_session_idle_s
    browser = _browser(cloud)
    _sign_in(browser)
    # Idle: no request for longer than the idle timeout.
    cloud.set_rows(select(ConsoleSession),
                   last_seen_at=utcnow() - timedelta(seconds=idle_s + 1))
    r = browser.get("/v1/instances")
    assert (r.status_code, r.json()["error"]["code"]) == (401, "AuthFailure")
    assert "expired" in r.json()["error"]["message"] and _sessions(cloud) == []
    # Activity keeps a session alive (last_seen_at moves on, at most once a minute)...
    _sign_in(browser)
    seen = utcnow() - timedelta(seconds=idle_s - 5)
    cloud.set_rows(select(ConsoleSession), last_seen_at=seen)
    assert browser.get("/v1/instances").status_code == 200
    [row] = _sessions(cloud)
    assert row.last_seen_at > seen + timedelta(seconds=60)
    # ...but never past its absolute end.
    cloud.set_rows(select(ConsoleSession), expires_at=utcnow() - timedelta(seconds=1))
    assert browser.get("/v1/instances").status_code == 401
    assert browser.get("/console/api/session").status_code == 401


def test_sign_out_ends_the_session(cloud):
    acme, _ = _account(cloud, "acme")
    _user(acme)
    browser = _browser(cloud)
    csrf = _sign_in(browser)["csrf_token"]
    token = browser.cookies[COOKIE]
    r = browser.delete("/console/api/session", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 204
    assert COOKIE in r.headers["set-cookie"] and "Max-Age=0" in r.headers["set-cookie"]
    assert _sessions(cloud) == []
    replay = _browser(cloud)
    replay.cookies.set(COOKIE, token)
    assert replay.get("/v1/instances").status_code == 401
    assert replay.delete("/console/api/session").status_code == 204  # again: fine


def test_another_accounts_instance_is_404_through_a_session(cloud):
    acme, _ = _account(cloud, "acme")
    other, _ = _account(cloud, "other")
    iid = cloud.launch_running(other)
    _user(acme)
    browser = _browser(cloud)
    csrf = {"X-CSRF-Token": _sign_in(browser)["csrf_token"]}
    for method, path in [("GET", f"/v1/instances/{iid}"), ("GET", f"/v1/instances/{iid}/console"),
                         ("POST", f"/v1/instances/{iid}/stop"),
                         ("POST", f"/v1/instances/{iid}/terminate"),
                         ("PATCH", f"/v1/instances/{iid}")]:
        r = browser.request(method, path, headers=csrf,
                            json={"instance_type": "t3.micro"} if method == "PATCH" else None)
        assert r.status_code == 404, (method, path, r.text)
    assert browser.get("/v1/instances").json()["items"] == []
    assert cloud.instance(other, iid)["state"] == "running"


def test_failed_sign_ins_are_throttled_per_username_and_client(cloud):
    acme, _ = _account(cloud, "acme")
    _user(acme)
    _user(acme, "bob")
    browser = _browser(cloud)
    limit = cloud.settings.console_signin_max_failures
    for _ in range(limit):
        r = browser.post("/console/api/session", json={"username": "alice", "password": "nope-nope-nope"})
        assert r.status_code == 401
    # Even the right password is refused now, for this username from this client...
    r = browser.post("/console/api/session", json={"username": "alice", "password": PASSWORD})
    assert (r.status_code, r.json()["error"]["code"]) == (429, "SignInThrottled")
    assert r.json()["error"]["retryable"] is True and _sessions(cloud) == []
    # ...but not for another username.
    _sign_in(browser, username="bob", password=PASSWORD)


def test_cli_manages_console_users(cloud):
    import json

    from typer.testing import CliRunner

    from controller.cli.context import CliState
    from controller.cli.main import app as cli_app

    _, acme_id = _account(cloud, "acme")

    def kumo(*args: str, stdin: str | None = None):
        state = CliState(client_factory=lambda url, key: cloud.client(key), clock=lambda: 0.0,
                         sleep=lambda s: None)
        return CliRunner().invoke(cli_app, ["-o", "json", *args], obj=state, input=stdin,
                                  env={"KUMO_URL": "http://controller.test:8787",
                                       "KUMO_API_KEY": cloud.admin_key})

    r = kumo("users", "create", "carol", "--account", acme_id, "--password-stdin",
             stdin=PASSWORD + "\n")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["account_id"] == acme_id
    r = kumo("users", "create", "dave", "--account", acme_id, stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert r.exit_code == 0, r.output  # the hidden prompt, asked twice
    r = kumo("users", "list", "--account", acme_id)
    assert [u["username"] for u in json.loads(r.stdout)["items"]] == ["carol", "dave"]
    _sign_in(_browser(cloud), username="carol", password=PASSWORD)
    r = kumo("users", "delete", "carol", "--account", acme_id)
    assert r.exit_code == 0, r.output
    r = kumo("users", "delete", "carol", "--account", acme_id)
    assert r.exit_code != 0 and "InvalidUser.NotFound" in r.output
    assert kumo("users", "list").exit_code == 0  # the admin's own account: none


def test_console_pages_are_served_with_a_strict_policy(cloud):
    browser = _browser(cloud)
    r = browser.get("/console", follow_redirects=False)
    assert r.status_code in (302, 307) and r.headers["location"] == "/console/"
    for path in ("/console/", "/console/js/app.js", "/console/style.css"):
        r = browser.get(path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    assert browser.get("/console/no-such-file.js").status_code == 404
    assert "/console/api/session" not in str(cloud.admin.get("/openapi.json").json()["paths"])
