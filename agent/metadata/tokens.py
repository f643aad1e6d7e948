"""IMDSv2 session tokens: issuing them, checking them, and the rules for when one is needed.

This module owns the token format and the IMDSv2 policy; server.py only passes it the request's
headers and the instance the request came from.

Format: base64url (no padding) of 8 bytes of expiry (Unix seconds, big-endian) followed by the
32-byte HMAC-SHA256, under the host's secret, of a domain tag, the instance id and the expiry.
Nothing is stored per token: a token is valid for the instance it was issued to until it expires,
on any metadata server of the host that holds the same secret. A token of another instance, an
expired one, a tampered one or garbage all fail the same way (401) and say nothing about why.
The secret is the wiring's to choose: the agent keeps one in its state directory
(persistent_secret), so a token stays valid until its TTL ends even across an agent restart
(as on EC2); tests may use a random one per process.

Rules (as EC2):
- PUT /latest/api/token needs X-aws-ec2-metadata-token-ttl-seconds, a decimal 1..21600; missing,
  repeated, 0, 21601 or text -> 400. A PUT carrying X-Forwarded-For -> 403 (the request went
  through a proxy: a token must only reach the instance itself).
- GET with X-aws-ec2-metadata-token: valid -> served (with the remaining lifetime in
  X-aws-ec2-metadata-token-ttl-seconds), invalid -> 401, whatever http_tokens says.
- GET without a token: served when http_tokens is "optional", 401 when "required".
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
import time
from pathlib import Path
from typing import Callable, Mapping

from agent.metadata import reply
from agent.metadata.document import MetadataOptions
from agent.metadata.reply import Reply

SECRET_BYTES = 32
TOKEN_PATH = "/latest/api/token"
TOKEN_HEADER = "x-aws-ec2-metadata-token"
TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds"
MAX_TTL = 21600
_DOMAIN = b"kumo-imdsv2-token-v1\0"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{54}$")
_TTL_RE = re.compile(r"^[0-9]{1,5}$")


class TokenIssuer:
    """Issues and checks tokens with one host secret; `clock` returns Unix seconds (injectable)."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 32:
            raise ValueError("the token secret needs at least 32 bytes")
        self._secret = secret
        self._clock = clock

    def _mac(self, instance_id: str, expiry: int) -> bytes:
        msg = _DOMAIN + instance_id.encode() + b"\0" + struct.pack(">Q", expiry)
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def issue(self, instance_id: str, ttl_seconds: int) -> str:
        """A token for this instance, valid for ttl_seconds from now."""
        if not 1 <= ttl_seconds <= MAX_TTL:
            raise ValueError("ttl out of range")
        expiry = int(self._clock()) + ttl_seconds
        raw = struct.pack(">Q", expiry) + self._mac(instance_id, expiry)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def remaining(self, instance_id: str, token: str) -> int | None:
        """Seconds left on a valid token of this instance; None when it is not one."""
        if not _TOKEN_RE.fullmatch(token):
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "==")
        except (binascii.Error, ValueError):
            return None
        # The last base64 character carries 2 unused bits: refuse non-canonical spellings, so
        # exactly one string is the token (no look-alike variants of a valid token).
        if len(raw) != 40 or base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token:
            return None
        (expiry,) = struct.unpack(">Q", raw[:8])
        if not hmac.compare_digest(raw[8:], self._mac(instance_id, expiry)):
            return None
        left = expiry - int(self._clock())
        return left if left > 0 else None


def parse_ttl(values: list[str]) -> int | None:
    """The requested TTL from the header's values; None (-> 400) unless exactly one valid value."""
    if len(values) != 1 or not _TTL_RE.fullmatch(values[0].strip()):
        return None
    ttl = int(values[0].strip())
    return ttl if 1 <= ttl <= MAX_TTL else None


def put_token(issuer: TokenIssuer, instance_id: str, headers: Mapping[str, list[str]]) -> Reply:
    """Answer PUT /latest/api/token. `headers`: lower-case name -> every value received."""
    if "x-forwarded-for" in headers:
        return reply.error(403)
    ttl = parse_ttl(headers.get(TTL_HEADER, []))
    if ttl is None:
        return reply.error(400)
    token = issuer.issue(instance_id, ttl)
    return reply.Reply(200, token.encode("ascii"), reply.TEXT,
                       (("X-aws-ec2-metadata-token-ttl-seconds", str(ttl)),))


def authorize_get(issuer: TokenIssuer, instance_id: str, options: MetadataOptions,
                  headers: Mapping[str, list[str]]) -> Reply | int | None:
    """Decide a GET: a Reply (401) to send instead, else the token's remaining seconds or None.

    An int means a valid token was presented (the server echoes it in the TTL header); None
    means no token and http_tokens is optional.
    """
    values = headers.get(TOKEN_HEADER)
    if values is None:
        return reply.error(401) if options.http_tokens == "required" else None
    left = issuer.remaining(instance_id, values[0].strip()) if len(values) == 1 else None
    if left is None:
        return reply.error(401)
    return left


def persistent_secret(path: Path) -> bytes:
    """The token secret kept at `path` (owner-only), made on first use. Two agents racing to
    make it both end up with the one that reached the disk first."""
    try:
        data = path.read_bytes()
        if len(data) == SECRET_BYTES:
            return data
        path.unlink()  # truncated by a crash mid-write: tokens issued with it never left
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, os.urandom(SECRET_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process made it first: keep theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()
