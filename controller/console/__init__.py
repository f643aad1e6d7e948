"""The web console's static files (static/: HTML, JavaScript modules, CSS; no build step, nothing
fetched from elsewhere at run time), served by the controller at /console/.

`mount(app)` serves them with a strict Content-Security-Policy (scripts and styles from this
origin only, no inline script, no framing): even a rendering bug that put user text into HTML
could not run it. The pages call /console/api/session (controller/api/console.py) and the /v1 API.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

STATIC = Path(__file__).parent / "static"

SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
     b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


class _ConsoleFiles(StaticFiles):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)
        await super().__call__(scope, receive, send_with_headers)


def mount(app: FastAPI) -> None:
    @app.get("/console", include_in_schema=False)
    def console_root():
        return RedirectResponse("/console/")

    app.mount("/console", _ConsoleFiles(directory=STATIC, html=True), name="console")
