"""The little HTTP/1.1 the metadata service speaks: parse one request head, render one reply.

This module owns the wire syntax and nothing else (no sockets: server.py reads the bounded bytes
and writes what this renders). It is deliberately strict, because the peer is an untrusted guest:
- the head (request line + headers) must end in CRLF CRLF and fit the reader's limit (server.py
  enforces the size; this refuses anything malformed with BadRequest -> 400 and a closed
  connection);
- only HTTP/1.0 and HTTP/1.1; header names are RFC 7230 tokens; folded lines, control
  characters, a Transfer-Encoding (no chunked bodies: nothing here needs one, and refusing it
  rules out request smuggling) and a Content-Length above MAX_BODY are refused;
- header values are kept as received per name (lower-cased), every value, so callers can refuse
  duplicates where that matters (the token TTL).
Replies only ever contain Kumo's own header names and values plus the body bytes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import formatdate

from agent.metadata.reply import REASONS, Reply

#: Bodies are never used (token PUTs have none); a small one is read and dropped.
MAX_BODY = 1024
MAX_HEADERS = 64
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_TARGET = re.compile(r"^/[\x21-\x7e]*$")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class BadRequest(Exception):
    """The request cannot be parsed: answer 400 and close the connection."""


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    version: str
    #: lower-case header name -> every value received, in order.
    headers: dict[str, list[str]]

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]

    @property
    def content_length(self) -> int:
        return int(self.headers.get("content-length", ["0"])[0])

    @property
    def keep_alive(self) -> bool:
        tokens = {v.strip().lower() for value in self.headers.get("connection", [])
                  for v in value.split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


def parse_head(head: bytes) -> Request:
    """Parse a request head (up to and including the blank line)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("non-ASCII request head") from None
    if not text.endswith("\r\n\r\n"):
        raise BadRequest("unterminated head")
    lines = text[:-4].split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest("bad request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target):
        raise BadRequest("bad method or target")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest("unsupported version")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest("too many headers")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise BadRequest("bad header line")  # also catches obs-fold (leading whitespace)
        headers.setdefault(name.lower(), []).append(value.strip(" \t"))
    if "transfer-encoding" in headers:
        raise BadRequest("transfer-encoding not supported")
    lengths = headers.get("content-length", [])
    if len(lengths) > 1 or (lengths and not re.fullmatch(r"[0-9]{1,9}", lengths[0])):
        raise BadRequest("bad content-length")
    if lengths and int(lengths[0]) > MAX_BODY:
        raise BadRequest("body too large")
    return Request(method, target, version, headers)


def render(answer: Reply, keep_alive: bool, date: str | None = None) -> bytes:
    """The reply on the wire: status line, EC2-like headers, body."""
    lines = [
        f"HTTP/1.1 {answer.status} {REASONS[answer.status]}",
        f"Content-Type: {answer.content_type}",
        "Accept-Ranges: none",
        f"Content-Length: {len(answer.body)}",
        f"Date: {date or formatdate(usegmt=True)}",
        "Server: EC2ws",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    lines += [f"{name}: {value}" for name, value in answer.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + answer.body
