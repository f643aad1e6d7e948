"""What the metadata service answers: a status, a body and its content type, and EC2's error pages.

This module owns the shape of an answer, shared by tree.py (paths), tokens.py (IMDSv2) and
server.py (HTTP framing). Error pages are fixed text chosen by status code only, so nothing from
the request (path, headers) is ever echoed back: EC2 answers errors with the same small XHTML
page, which is what this reproduces.
"""
from __future__ import annotations

from dataclasses import dataclass, field

TEXT = "text/plain"
BINARY = "application/octet-stream"
HTML = "text/html"

REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 429: "Too Many Requests", 500: "Internal Server Error",
}


@dataclass(frozen=True)
class Reply:
    """One answer. `headers` are extra response headers (names and values are Kumo's own text)."""

    status: int
    body: bytes
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = field(default=())


def ok(body: bytes | str, content_type: str = TEXT) -> Reply:
    """A 200 with a body (str is encoded as UTF-8)."""
    return Reply(200, body.encode() if isinstance(body, str) else body, content_type)


def error(status: int, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """EC2's error page for a status: fixed text, nothing from the request in it."""
    title = f"{status} - {REASONS[status]}"
    page = (
        '<?xml version="1.0" encoding="iso-8859-1"?>\n'
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"\n'
        '\t"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
        " <head>\n"
        f"  <title>{title}</title>\n"
        " </head>\n"
        " <body>\n"
        f"  <h1>{title}</h1>\n"
        " </body>\n"
        "</html>\n"
    )
    return Reply(status, page.encode("ascii"), HTML, headers)
