"""Client for the agents' HTTP API (agent.contract.v1 over agent.contract.transport).

Translates transport failures and agent error bodies into AgentError (with the agent's code and
whether a retry can help) at this boundary, so the reconciler never sees httpx exceptions.
"""
from __future__ import annotations

import threading
from typing import Callable

import httpx

from agent.contract import transport
from agent.contract.v1 import (CaptureObserved, CaptureRequest, ConsoleOutput, InstanceObserved,
                               InstanceSpec, NetworkObserved, NetworkSpec)

HttpFactory = Callable[[str, "str | None", float], httpx.Client]


class AgentError(Exception):
    def __init__(self, code: str, message: str, retryable: bool = True, status: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.retryable, self.status = code, message, retryable, status


class StaleGeneration(AgentError):
    pass


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    code, message, retryable = f"HTTP{resp.status_code}", resp.text[:300], resp.status_code >= 500
    try:
        err = resp.json().get("error") or resp.json()
        code = err.get("code", code)
        message = err.get("message", message)
        retryable = err.get("retryable", retryable)
    except Exception:
        pass
    cls = StaleGeneration if code == "StaleGeneration" else AgentError
    raise cls(code, message, retryable, resp.status_code)


class AgentClient:
    def __init__(self, http: httpx.Client):
        self.http = http

    def _call(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise AgentError("AgentUnreachable", f"{type(exc).__name__}: {exc}") from exc
        return resp

    def put_instance(self, spec: InstanceSpec) -> InstanceObserved:
        resp = self._call("PUT", f"/v1/instances/{spec.instance_id}",
                          json=spec.model_dump(mode="json"))
        _raise_for(resp)
        return InstanceObserved.model_validate(resp.json())

    def delete_instance(self, instance_id: str) -> None:
        resp = self._call("DELETE", f"/v1/instances/{instance_id}")
        if resp.status_code == 404:
            return  # already gone is success
        _raise_for(resp)

    def get_instance(self, instance_id: str) -> InstanceObserved | None:
        resp = self._call("GET", f"/v1/instances/{instance_id}")
        if resp.status_code == 404:
            return None
        _raise_for(resp)
        return InstanceObserved.model_validate(resp.json())

    def put_network(self, spec: NetworkSpec) -> NetworkObserved:
        """The host's whole VPC dataplane (extension vpc-network)."""
        resp = self._call("PUT", "/v1/network", json=spec.model_dump(mode="json"))
        _raise_for(resp)
        return NetworkObserved.model_validate(resp.json())

    def get_network(self) -> NetworkObserved:
        resp = self._call("GET", "/v1/network")
        _raise_for(resp)
        return NetworkObserved.model_validate(resp.json())

    def console(self, instance_id: str, tail_bytes: int = 65536) -> ConsoleOutput:
        resp = self._call("GET", f"/v1/instances/{instance_id}/console",
                          params={"tail_bytes": tail_bytes})
        _raise_for(resp)
        return ConsoleOutput.model_validate(resp.json())

    # -- extension image-capture -----------------------------------------------------------
    def start_capture(self, instance_id: str, image_id: str,
                      allow_running: bool = False) -> CaptureObserved:
        req = CaptureRequest(image_id=image_id, allow_running=allow_running)
        resp = self._call("POST", f"/v1/instances/{instance_id}/image",
                          json=req.model_dump(mode="json"))
        _raise_for(resp)
        return CaptureObserved.model_validate(resp.json())

    def get_capture(self, instance_id: str, image_id: str) -> CaptureObserved | None:
        resp = self._call("GET", f"/v1/instances/{instance_id}/image/{image_id}")
        if resp.status_code == 404:
            return None
        _raise_for(resp)
        return CaptureObserved.model_validate(resp.json())

    def download_capture(self, instance_id: str, image_id: str, dest) -> str | None:
        """Stream the finished capture into the open binary file `dest`; returns the agent's
        X-Kumo-Sha256 header (the caller verifies what it wrote)."""
        path = f"/v1/instances/{instance_id}/image/{image_id}/file"
        try:
            with self.http.stream("GET", path) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    _raise_for(resp)
                for chunk in resp.iter_bytes(1 << 20):
                    dest.write(chunk)
                return resp.headers.get("x-kumo-sha256")
        except httpx.HTTPError as exc:
            raise AgentError("AgentUnreachable", f"{type(exc).__name__}: {exc}") from exc

    def delete_capture(self, instance_id: str, image_id: str) -> None:
        resp = self._call("DELETE", f"/v1/instances/{instance_id}/image/{image_id}")
        if resp.status_code == 404:
            return
        _raise_for(resp)


class AgentPool:
    """One cached client per agent (URL and host id; agents move URLs rarely, a changed URL
    gets a new client)."""

    def __init__(self, token: str | None, timeout: float, http_factory: HttpFactory | None = None,
                 tls=None):
        """`tls`: a controller.agent_tls.ControllerTls (agent_auth "mtls"): clients present
        the controller's certificate, trust only the cloud CA and check that the agent's
        certificate names the host they meant to reach; no bearer token is sent.
        `http_factory(url, token, timeout)` replaces the transport (tests)."""
        self.token, self.timeout, self.tls = token, timeout, tls
        self._factory = http_factory
        self._clients: dict[tuple[str, str | None], AgentClient] = {}
        self._lock = threading.Lock()

    def for_host(self, host) -> AgentClient:
        """The client for `host` (anything with host_id and agent_url, e.g. a Host row)."""
        return self.for_url(host.agent_url, host.host_id)

    def for_url(self, url: str, host_id: str | None = None) -> AgentClient:
        """The client for the agent at `url`; with `host_id` (always, in the controller) an
        agent whose certificate names another host is refused before a request is sent."""
        if self.tls is not None:
            self.tls.maybe_refresh()
        with self._lock:
            c = self._clients.get((url, host_id))
            if c is None:
                c = self._clients[(url, host_id)] = AgentClient(self._http(url, host_id))
            return c

    def _http(self, url: str, host_id: str | None) -> httpx.Client:
        if self._factory is not None:
            return self._factory(url, self.token, self.timeout)
        if self.tls is None:
            return transport.client(url, self.token, self.timeout)
        ctx = self.tls.client_for(host_id) if host_id is not None else self.tls.client
        return transport.client(url, None, self.timeout, tls=ctx)

    def close(self) -> None:
        with self._lock:
            for c in self._clients.values():
                try:
                    c.http.close()
                except Exception:
                    pass
            self._clients.clear()
