"""Console users and console sessions (the web console, docs/console.md).

A console user belongs to one account and signs in with a username (unique in the whole cloud:
the sign-in form names no account) and a password, stored only as an argon2id hash. A console
session is a row per signed-in browser: only the sha256 of its cookie token is stored, with the
CSRF token the page must send back on every unsafe request, and its idle and absolute expiry.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Optional

from pydantic import BaseModel, StringConstraints
from pydantic import Field as PField
from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime

#: Lowercase, so "Alice" and "alice" cannot be two users that look alike.
Username = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
#: Long enough to be worth hashing, short enough that hashing it is no denial of service.
Password = Annotated[str, StringConstraints(min_length=10, max_length=256)]


class ConsoleUserBase(SQLModel):
    username: Username = Field(index=True, unique=True, max_length=63)


class ConsoleUserCreate(ConsoleUserBase):
    password: Password


class ConsoleUserPublic(ConsoleUserBase):
    user_id: str
    account_id: str
    created_at: datetime


class ConsoleUser(ConsoleUserBase, table=True):
    __tablename__ = "console_user"
    user_id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(index=True, max_length=32)
    #: argon2id encoded hash (parameters and salt included), never the password.
    password_hash: str = Field(max_length=255)
    created_at: datetime = Field(sa_type=UtcDateTime)


class ConsoleSession(SQLModel, table=True):
    __tablename__ = "console_session"
    #: sha256 hex of the cookie's token: a copy of the database signs nobody in.
    token_sha256: str = Field(primary_key=True, max_length=64)
    account_id: str = Field(index=True, max_length=32)
    #: The console user who signed in; None when the session was opened with an API key.
    user_id: Optional[str] = Field(default=None, index=True, max_length=32)
    csrf_token: str = Field(max_length=64)
    created_at: datetime = Field(sa_type=UtcDateTime)
    #: Refreshed (at most once a minute) by requests; idle expiry counts from it.
    last_seen_at: datetime = Field(sa_type=UtcDateTime)
    #: Absolute expiry: created_at + the maximum session lifetime.
    expires_at: datetime = Field(sa_type=UtcDateTime)


class SignInRequest(BaseModel):
    """Either username + password, or api_key (an account's API key)."""
    username: Optional[str] = PField(default=None, max_length=256)
    password: Optional[str] = PField(default=None, max_length=256)
    api_key: Optional[str] = PField(default=None, max_length=256)


class SessionPublic(BaseModel):
    account_id: str
    account_name: str
    is_admin: bool
    #: None when signed in with an API key.
    username: Optional[str] = None
    #: Send it back as the X-CSRF-Token header on every POST, PUT, PATCH and DELETE.
    csrf_token: str
    expires_at: datetime
    idle_timeout_s: float
