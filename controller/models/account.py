"""Accounts: the tenants. API keys are stored only as sha256 hashes."""
from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime
from controller.models.common import AccountName


class AccountBase(SQLModel):
    name: AccountName = Field(index=True, unique=True, max_length=63)


class AccountCreate(AccountBase):
    pass


class AccountPublic(AccountBase):
    account_id: str
    is_admin: bool = False


class AccountCreated(AccountBase):
    account_id: str
    api_key: str


class Account(AccountBase, table=True):
    account_id: str = Field(primary_key=True, max_length=32)
    is_admin: bool = False
    api_key_hash: str = Field(index=True, unique=True, max_length=64)
    created_at: datetime = Field(sa_type=UtcDateTime)
