"""Client for the storage node's HTTP API (agent.contract.storage_v1 over agent.contract.transport).

The same habits as the agents' client (controller/agents.py): transport failures and the node's
error bodies become one StorageError (the node's code, its message, whether a retry can help,
the HTTP status) at this boundary, so the reconciler never sees httpx exceptions; a DELETE of a
volume already gone is success; tests inject an http factory that routes to an in-process node.
"""
from __future__ import annotations

import ssl
from typing import Callable

import httpx

from agent.contract import transport
from agent.contract.storage_v1 import StorageInfo, VolumeObserved, VolumeSpec

HttpFactory = Callable[[str, "str | None", float], httpx.Client]


class StorageError(Exception):
    def __init__(self, code: str, message: str, retryable: bool = True, status: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.retryable, self.status = code, message, retryable, status


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    code, message, retryable = f"HTTP{resp.status_code}", resp.text[:300], resp.status_code >= 500
    try:
        body = resp.json()
        err = body.get("error") or body
        code = str(err.get("code", code))
        message = str(err.get("message", message))
        retryable = bool(err.get("retryable", retryable))
    except Exception:
        pass
    raise StorageError(code, message, retryable, resp.status_code)


class StorageClient:
    """One storage node. `http_factory(url, token, timeout) -> httpx.Client` (default:
    agent.contract.transport, which understands unix:<path> URLs and sends the bearer token).
    `tls`: mutual TLS instead of the token (docs/security.md "Storage access"): the
    controller's client context that also checks the server is a storage node
    (controller/agent_tls.py storage_client); the token is then not sent."""

    def __init__(self, url: str, token: str | None, timeout: float = 10.0,
                 http_factory: HttpFactory | None = None, tls: ssl.SSLContext | None = None):
        self.url = url
        if tls is not None:
            token = None
        factory = http_factory or (lambda u, tok, t: transport.client(u, tok, t, tls=tls))
        self.http = factory(url, token, timeout)

    def _call(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            return self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise StorageError("StorageUnreachable", f"{type(exc).__name__}: {exc}") from exc

    def _decode(self, resp: httpx.Response, model):
        try:
            return model.model_validate(resp.json())
        except Exception as exc:  # a node answering something else than the contract
            raise StorageError("StorageBadResponse", f"{type(exc).__name__}: {exc}"[:300],
                               True, resp.status_code) from exc

    def info(self) -> StorageInfo:
        resp = self._call("GET", "/v1/storage")
        _raise_for(resp)
        return self._decode(resp, StorageInfo)

    def list_volumes(self) -> list[VolumeObserved]:
        resp = self._call("GET", "/v1/volumes")
        _raise_for(resp)
        try:
            items = resp.json()
            return [VolumeObserved.model_validate(v) for v in items]
        except Exception as exc:
            raise StorageError("StorageBadResponse", f"{type(exc).__name__}: {exc}"[:300],
                               True, resp.status_code) from exc

    def put_volume(self, spec: VolumeSpec) -> VolumeObserved:
        resp = self._call("PUT", f"/v1/volumes/{spec.volume_id}",
                          json=spec.model_dump(mode="json"))
        _raise_for(resp)
        return self._decode(resp, VolumeObserved)

    def get_volume(self, volume_id: str) -> VolumeObserved | None:
        resp = self._call("GET", f"/v1/volumes/{volume_id}")
        if resp.status_code == 404:
            return None
        _raise_for(resp)
        return self._decode(resp, VolumeObserved)

    def delete_volume(self, volume_id: str) -> None:
        resp = self._call("DELETE", f"/v1/volumes/{volume_id}")
        if resp.status_code == 404:
            return  # already gone is success
        _raise_for(resp)

    def close(self) -> None:
        try:
            self.http.close()
        except Exception:
            pass
