"""How either side turns a Kumo service URL into an httpx client.

Two URL forms: `http(s)://host:port` and `unix:/absolute/path.sock`. The lab uses unix sockets
so agents inside host network namespaces and the controller in the root namespace can talk
without any address or route in the machine's own namespace. With `tls` (an ssl.SSLContext,
agent/contract/tls.py) the connection is TLS: over a unix socket too (`https://kumo.local`
through the socket), and an `http://` URL is upgraded to `https://`.
"""
from __future__ import annotations

import ssl

import httpx


def _base(url: str, tls: ssl.SSLContext | None) -> tuple[str, str | None]:
    if url.startswith("unix:"):
        return ("https" if tls else "http") + "://kumo.local", url[len("unix:"):]
    url = url.rstrip("/")
    if tls is not None and url.startswith("http://"):
        url = "https://" + url[len("http://"):]
    return url, None


def client(url: str, token: str | None = None, timeout: float = 10.0,
           tls: ssl.SSLContext | None = None) -> httpx.Client:
    """A synchronous client for `url`, sending `token` as a bearer token, over TLS with `tls`."""
    base, uds = _base(url, tls)
    verify = tls if tls is not None else True
    transport = httpx.HTTPTransport(uds=uds, verify=verify) if uds else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base, transport=transport, headers=headers, timeout=timeout,
                        verify=verify)


def async_client(url: str, token: str | None = None, timeout: float = 10.0,
                 tls: ssl.SSLContext | None = None) -> httpx.AsyncClient:
    """An asyncio client for `url`, sending `token` as a bearer token, over TLS with `tls`."""
    base, uds = _base(url, tls)
    verify = tls if tls is not None else True
    transport = httpx.AsyncHTTPTransport(uds=uds, verify=verify) if uds else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=base, transport=transport, headers=headers,
                             timeout=timeout, verify=verify)
