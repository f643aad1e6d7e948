"""The CLI's HTTP layer: one `Api` wrapper over an httpx client, error translation, pagination.

Clients come from a factory `(url, api_key) -> httpx.Client` so tests inject an
httpx.MockTransport-backed client instead of patching httpx. Every failure the user should see
becomes a `CliError(code, message)`; the root command prints it as `error: <code>: <message>`.
"""
from __future__ import annotations

from typing import Any, Callable

import httpx

ClientFactory = Callable[[str, "str | None"], httpx.Client]


class CliError(Exception):
    """A failure reported to the user with a stable code (exit status 1)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ApiError(CliError):
    """The API answered with an error envelope (or at least an HTTP error status)."""

    def __init__(self, code: str, message: str, status: int, retryable: bool = False):
        super().__init__(code, message)
        self.status = status
        self.retryable = retryable


def default_client_factory(url: str, api_key: str | None) -> httpx.Client:
    """A real client; imported lazily so `kumo --help` stays fast."""
    from agent.contract.transport import client

    return client(url, api_key, timeout=60.0)


def _error_from(resp: httpx.Response) -> ApiError:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return ApiError(str(err.get("code") or f"HTTP{resp.status_code}"),
                        str(err.get("message") or resp.reason_phrase), resp.status_code,
                        bool(err.get("retryable", False)))
    if isinstance(body, dict) and "detail" in body:
        # FastAPI's own responses (request validation, unknown route) lack Kumo's envelope.
        detail = body["detail"]
        if isinstance(detail, list):
            detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}"
                               for d in detail if isinstance(d, dict))
        code = "InvalidParameterValue" if resp.status_code == 422 else f"HTTP{resp.status_code}"
        return ApiError(code, str(detail), resp.status_code)
    text = resp.text.strip()[:200] or resp.reason_phrase
    return ApiError(f"HTTP{resp.status_code}", text, resp.status_code)


class Api:
    """Typed-enough access to /v1: JSON in, JSON out, CliError on any failure."""

    def __init__(self, client: httpx.Client, url: str | None = None):
        self.client = client
        self.url = url or str(client.base_url)  # what the user configured, for messages

    def request(self, method: str, path: str, *, params: dict | None = None,
                json: Any = None, content: Any = None, headers: dict | None = None) -> Any:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self.client.request(method, path, params=params, json=json, content=content,
                                       headers=headers)
        except httpx.TimeoutException as e:
            raise CliError("RequestTimeout", f"{method} {path}: {e}") from e
        except httpx.TransportError as e:
            raise CliError("ConnectionError",
                           f"cannot reach the Kumo API at {self.url}: {e}") from e
        if resp.status_code >= 400:
            raise _error_from(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as e:
            raise CliError("InvalidResponse", f"{method} {path}: response is not JSON") from e

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def get_text(self, path: str, **params: Any) -> str:
        """A GET answered in text (e.g. `format=csv`), with request()'s error handling."""
        params = {k: v for k, v in params.items() if v is not None}
        try:
            resp = self.client.request("GET", path, params=params)
        except httpx.TransportError as e:
            raise CliError("ConnectionError",
                           f"cannot reach the Kumo API at {self.url}: {e}") from e
        if resp.status_code >= 400:
            raise _error_from(resp)
        return resp.text

    def post(self, path: str, json: Any = None, **params: Any) -> Any:
        return self.request("POST", path, json=json, params=params)

    def put(self, path: str, json: Any) -> Any:
        return self.request("PUT", path, json=json)

    def patch(self, path: str, json: Any) -> Any:
        return self.request("PATCH", path, json=json)

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params=params)

    def paginate(self, path: str, params: dict | None = None, page_size: int | None = None,
                 limit: int | None = None) -> list[dict]:
        """All items of a list endpoint, following next_token until it is null (or `limit`)."""
        params = dict(params or {})
        if page_size:
            params["max_results"] = page_size
        items: list[dict] = []
        seen: set[str] = set()
        while True:
            page = self.request("GET", path, params=params)
            if not isinstance(page, dict) or not isinstance(page.get("items"), list):
                raise CliError("InvalidResponse", f"GET {path}: expected {{items, next_token}}")
            items.extend(page["items"])
            token = page.get("next_token")
            if limit is not None and len(items) >= limit:
                return items[:limit]
            if not token:
                return items
            if token in seen:  # a server bug must not turn into an endless loop
                raise CliError("InvalidResponse", f"GET {path}: next_token {token!r} repeated")
            seen.add(token)
            params["next_token"] = token
