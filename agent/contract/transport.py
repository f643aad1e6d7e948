"""How either side turns a Kumo service URL into an httpx client.

Two URL forms: `http(s)://host:port` and `unix:/absolute/path.sock`. The lab uses unix sockets
so agents inside host network namespaces and the controller in the root namespace can talk
without any address or route in the machine's own namespace.
"""
from __future__ import annotations

import httpx


def _split(url: str) -> tuple[str, httpx.BaseTransport | None]:
    if url.startswith("unix:"):
        return "http://kumo.local", httpx.HTTPTransport(uds=url[len("unix:"):])
    return url.rstrip("/"), None


def client(url: str, token: str | None = None, timeout: float = 10.0) -> httpx.Client:
    """A synchronous client for `url`, sending `token` as a bearer token."""
    base, transport = _split(url)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base, transport=transport, headers=headers, timeout=timeout)


def async_client(url: str, token: str | None = None, timeout: float = 10.0) -> httpx.AsyncClient:
    """An asyncio client for `url`, sending `token` as a bearer token."""
    if url.startswith("unix:"):
        base, transport = "http://kumo.local", httpx.AsyncHTTPTransport(uds=url[len("unix:"):])
    else:
        base, transport = url.rstrip("/"), None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=base, transport=transport, headers=headers, timeout=timeout)
