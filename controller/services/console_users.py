"""Console users: per-account usernames with argon2id password hashes (argon2-cffi). Create,
list, delete (which also ends the user's sessions), and check a username + password.

Usernames are unique across the cloud: the sign-in form names no account. A failed check costs
the same whether the username exists or not (a dummy hash is verified), so the answer time does
not tell which usernames exist.
"""
from __future__ import annotations

from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete as sa_delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from controller.db import Database
from controller.errors import Conflict, NotFound
from controller.events import record
from controller.ids import new_id, utcnow
from controller.models import Account, ConsoleSession, ConsoleUser, ConsoleUserPublic
from controller.services import pagination
from controller.services.pagination import Page, PageRequest

ORDER = pagination.Order(ConsoleUser.created_at, ConsoleUser.user_id)

#: argon2-cffi's defaults are RFC 9106's second recommendation (argon2id, 64 MiB, t=3, p=4).
_HASHER = PasswordHasher()


class UserNotFound(NotFound):
    code = "InvalidUser.NotFound"


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _HASHER.hash("not-a-password-of-anyone")


def _public(u: ConsoleUser) -> ConsoleUserPublic:
    return ConsoleUserPublic(user_id=u.user_id, account_id=u.account_id, username=u.username,
                             created_at=u.created_at)


def _account(s, account_id: str) -> Account:
    acct = s.get(Account, account_id)
    if acct is None:
        raise NotFound(f"account {account_id} does not exist", code="InvalidAccountID.NotFound")
    return acct


def create(db: Database, account_id: str, username: str, password: str) -> ConsoleUserPublic:
    # Hash outside the transaction: it takes tens of milliseconds on purpose.
    user = ConsoleUser(user_id=new_id("user"), account_id=account_id, username=username,
                       password_hash=hash_password(password), created_at=utcnow())
    exists = Conflict(f"console user {username!r} already exists", code="UserAlreadyExists")
    try:
        with db.session() as s:
            _account(s, account_id)
            if s.exec(select(ConsoleUser).where(ConsoleUser.username == username)).first():
                raise exists
            s.add(user)
            record(s, "console-user", user.user_id, account_id, None, "active", "created")
            public = _public(user)
    except IntegrityError:
        raise exists from None
    return public


def list_page(db: Database, account_id: str, page: PageRequest) -> Page[ConsoleUserPublic]:
    with db.session() as s:
        _account(s, account_id)
        query = select(ConsoleUser).where(ConsoleUser.account_id == account_id)
        return pagination.list_page(s, query, ORDER, page,
                                    lambda rows: [_public(u) for u in rows])


def delete(db: Database, account_id: str, username: str) -> ConsoleUserPublic:
    """Delete the account's user `username` and end its sessions. Another account's user is
    404, like a missing one."""
    with db.session() as s:
        user = s.exec(select(ConsoleUser).where(ConsoleUser.username == username,
                                                ConsoleUser.account_id == account_id)).first()
        if user is None:
            raise UserNotFound(f"console user {username!r} does not exist")
        public = _public(user)
        s.exec(sa_delete(ConsoleSession).where(ConsoleSession.user_id == user.user_id))
        s.delete(user)
        record(s, "console-user", user.user_id, account_id, "active", "deleted", "deleted")
    return public


def check_password(db: Database, username: str | None, password: str | None) -> ConsoleUser | None:
    """The user these credentials name, or None (wrong password, unknown user: the same)."""
    with db.session(notify=False) as s:
        user = (s.exec(select(ConsoleUser).where(ConsoleUser.username == username)).first()
                if username else None)
    encoded = user.password_hash if user is not None else _dummy_hash()
    try:
        _HASHER.verify(encoded, password or "")
    except (VerificationError, InvalidHashError):
        return None
    if user is None:
        return None
    if _HASHER.check_needs_rehash(user.password_hash):
        # Parameters were raised since this hash was made: store a stronger one now that the
        # password is at hand.
        with db.session(notify=False) as s:
            row = s.get(ConsoleUser, user.user_id)
            if row is not None:
                row.password_hash = hash_password(password)
                s.add(row)
    return user
