"""Console sessions: sign in (a console user's password, or an account's API key), resolve a
session cookie to a Caller (idle and absolute expiry, the CSRF check on unsafe methods), sign out,
and the failed sign-in throttle.

The cookie carries a random token; the database keeps only its sha256, so neither a copy of the
database nor its logs can sign anybody in. Every sign-in makes a new token (and deletes the
session the browser presented, if any): a token planted in a browser before sign-in is never the
one that gets signed in (no session fixation). The CSRF token is per session and is required, in
the X-CSRF-Token header, on every POST, PUT, PATCH and DELETE made with the cookie; the cookie is
SameSite=Strict too, but the header check does not depend on the browser honouring that.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete as sa_delete
from sqlalchemy import or_

from controller.db import Database
from controller.errors import AuthFailure, KumoError, Unauthorized
from controller.ids import utcnow
from controller.models import Account, ConsoleSession, ConsoleUser
from controller.services import accounts, console_users
from controller.services.accounts import Caller
from controller.settings import Settings

COOKIE = "kumo_session"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: last_seen_at is written at most this often per session (seconds), not on every poll.
TOUCH_EVERY_S = 60.0


class SignInFailed(AuthFailure):
    """The one answer to any wrong credential: it never says which part was wrong."""
    code = "SignInFailed"


class SignInThrottled(KumoError):
    code, status, retryable = "SignInThrottled", 429, True


class InvalidCsrfToken(Unauthorized):
    code = "InvalidCsrfToken"


class NoSession(AuthFailure):
    code = "AuthFailure"


@dataclass(frozen=True)
class SignedIn:
    token: str  # for the cookie; shown nowhere else
    caller: Caller
    username: str | None
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True)
class SessionCaller:
    caller: Caller
    username: str | None
    csrf_token: str
    expires_at: datetime


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SignInThrottle:
    """Failed sign-ins per (username or key fingerprint, client address) in a sliding window,
    kept in this process's memory (several controllers each count their own: the limit is per
    controller)."""

    def __init__(self, max_failures: int, window_s: float, clock=time.monotonic):
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def check(self, key: tuple[str, str]) -> None:
        with self._lock:
            now = self.clock()
            q = self._recent(key, now)
            if len(q) >= self.max_failures:
                wait = int(q[0] + self.window_s - now) + 1
                raise SignInThrottled(f"too many failed sign-ins: try again in {wait} s")
            if not q:
                del self._failures[key]

    #: More keys than this: forget every key whose failures have all left the window (names
    #: tried once and never again would otherwise stay forever).
    MAX_KEYS = 10000

    def failed(self, key: tuple[str, str]) -> None:
        with self._lock:
            now = self.clock()
            self._recent(key, now).append(now)
            if len(self._failures) > self.MAX_KEYS:
                for k in [k for k, q in self._failures.items() if q[-1] <= now - self.window_s]:
                    del self._failures[k]

    def succeeded(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._failures.pop(key, None)


def _throttle_key(username: str | None, api_key: str | None, client: str) -> tuple[str, str]:
    # An API key is never kept in memory as such: a short hash of it names its bucket.
    who = f"user:{username}" if username else f"key:{_digest(api_key or '')[:16]}"
    return who, client


def sign_in(db: Database, settings: Settings, throttle: SignInThrottle, *, client: str,
            username: str | None = None, password: str | None = None,
            api_key: str | None = None, old_token: str | None = None) -> SignedIn:
    """A new session for these credentials (username + password, or api_key), replacing the
    session `old_token` names, if any. SignInFailed (401) for any wrong or missing credential,
    SignInThrottled (429) after too many failures for this username (or key) and client."""
    key = _throttle_key(username, api_key, client)
    throttle.check(key)
    user: ConsoleUser | None = None
    caller: Caller | None = None
    if username is not None and password is not None and api_key is None:
        user = console_users.check_password(db, username, password)
        if user is not None:
            with db.session(notify=False) as s:
                acct = s.get(Account, user.account_id)
            caller = Caller(acct.account_id, acct.name, acct.is_admin) if acct else None
    elif api_key is not None and username is None and password is None:
        try:
            caller = accounts.authenticate(db, api_key)
        except AuthFailure:
            caller = None
    if caller is None:
        throttle.failed(key)
        raise SignInFailed("incorrect username and password, or API key")
    throttle.succeeded(key)
    now = utcnow()
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    row = ConsoleSession(token_sha256=_digest(token), account_id=caller.account_id,
                         user_id=user.user_id if user else None, csrf_token=csrf,
                         created_at=now, last_seen_at=now,
                         expires_at=now + timedelta(seconds=settings.console_session_max_s))
    idle_cutoff = now - timedelta(seconds=settings.console_session_idle_s)
    with db.session(notify=False) as s:
        # The presented session (if any) ends: no fixation. Expired ones go too (housekeeping).
        stale = [ConsoleSession.expires_at < now, ConsoleSession.last_seen_at < idle_cutoff]
        if old_token:
            stale.append(ConsoleSession.token_sha256 == _digest(old_token))
        s.exec(sa_delete(ConsoleSession).where(or_(*stale)))
        s.add(row)
    return SignedIn(token, caller, user.username if user else None, csrf, row.expires_at)


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=utcnow().tzinfo)


def resolve(db: Database, settings: Settings, token: str | None, *, method: str = "GET",
            csrf_header: str | None = None) -> SessionCaller:
    """The session `token` names, as its Caller. NoSession (401) when there is none or it has
    expired (an expired one is deleted); InvalidCsrfToken (403) for an unsafe `method` without
    the session's CSRF token."""
    if not token:
        raise NoSession("no console session: sign in")
    digest = _digest(token)
    now = utcnow()
    with db.session(notify=False) as s:
        row = s.get(ConsoleSession, digest)
        if row is None:
            raise NoSession("no console session: sign in")
        idle_end = _aware(row.last_seen_at) + timedelta(seconds=settings.console_session_idle_s)
        if now >= _aware(row.expires_at) or now >= idle_end:
            s.delete(row)
            expired = True
        else:
            expired = False
            acct = s.get(Account, row.account_id)
            username = None
            if row.user_id is not None:
                user = s.get(ConsoleUser, row.user_id)
                username = user.username if user else None
            if method.upper() in UNSAFE_METHODS and not (
                    csrf_header and hmac.compare_digest(csrf_header.encode(),
                                                        row.csrf_token.encode())):
                raise InvalidCsrfToken(
                    f"missing or wrong {CSRF_HEADER} header for a console session")
            if (now - _aware(row.last_seen_at)).total_seconds() >= min(
                    TOUCH_EVERY_S, settings.console_session_idle_s / 4):
                row.last_seen_at = now
                s.add(row)
            result = (None if acct is None else SessionCaller(
                Caller(acct.account_id, acct.name, acct.is_admin), username, row.csrf_token,
                _aware(row.expires_at)))
    if expired:
        raise NoSession("the console session has expired: sign in again")
    if result is None:
        raise NoSession("no console session: sign in")
    return result


def sign_out(db: Database, token: str | None) -> None:
    """End the session `token` names; nothing when there is none (signing out twice is fine)."""
    if not token:
        return
    with db.session(notify=False) as s:
        s.exec(sa_delete(ConsoleSession).where(ConsoleSession.token_sha256 == _digest(token)))
