"""EC2-style resource ids (prefix + 17 lowercase hex) and UTC time helpers."""
from __future__ import annotations

import secrets
from datetime import datetime, timezone


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(9)[:17]}"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
