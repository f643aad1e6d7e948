"""Accounts and API keys: create (key shown once), authenticate a bearer key, list (admins),
bootstrap admin."""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from controller.db import Database
from controller.errors import AuthFailure, Conflict
from controller.events import record
from controller.ids import new_id, utcnow
from controller.models import Account, AccountPublic
from controller.services import pagination
from controller.services.pagination import Page, PageRequest

ORDER = pagination.Order(Account.created_at, Account.account_id)


@dataclass(frozen=True)
class Caller:
    account_id: str
    name: str
    is_admin: bool


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _new_key() -> str:
    return "kumo_" + secrets.token_urlsafe(32)


def create(db: Database, name: str, *, is_admin: bool = False) -> tuple[Account, str]:
    key = _new_key()
    acct = Account(account_id=new_id("acct"), name=name, is_admin=is_admin,
                   api_key_hash=_hash(key), created_at=utcnow())
    try:
        with db.session() as s:
            if s.exec(select(Account).where(Account.name == name)).first():
                raise Conflict(f"account {name!r} already exists", code="AccountAlreadyExists")
            s.add(acct)
            record(s, "account", acct.account_id, acct.account_id, None, "active", "created")
    except IntegrityError:
        raise Conflict(f"account {name!r} already exists", code="AccountAlreadyExists") from None
    return acct, key


def authenticate(db: Database, key: str | None) -> Caller:
    if not key:
        raise AuthFailure("missing bearer API key")
    digest = _hash(key)
    with db.session() as s:
        acct = s.exec(select(Account).where(Account.api_key_hash == digest)).first()
    # Lookup is by hash; compare again in constant time for good measure.
    if acct is None or not hmac.compare_digest(acct.api_key_hash, digest):
        raise AuthFailure("invalid API key")
    return Caller(acct.account_id, acct.name, acct.is_admin)


def list_page(db: Database, page: PageRequest) -> Page[AccountPublic]:
    with db.session() as s:
        return pagination.list_page(
            s, select(Account), ORDER, page,
            lambda rows: [AccountPublic.model_validate(a, from_attributes=True) for a in rows])


def bootstrap_admin(db: Database, state_dir: Path) -> None:
    """First start: create the `admin` account and write its key to state_dir/admin.key (0600)."""
    with db.session() as s:
        if s.exec(select(Account).where(Account.name == "admin")).first():
            return
    try:
        _, key = create(db, "admin", is_admin=True)
    except Conflict:
        return  # another controller process sharing the database created it just now
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "admin.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.chmod(path, 0o600)
