"""The storage node's HTTP API (agent/contract/storage_v1.py) over any VolumeBackend, and the loop
that keeps what the backend serves equal to its persisted desired state.

The app owns only the translation between the wire contract and the backend Protocol
(agent/drivers/volumes.py): the backend keeps the volumes, the export set and their rules, so the
same app runs on the NBD backend, the RBD backend (the real node, `python -m agent.storage_node`,
chooses by its settings) and on FakeVolumeBackend (fast tests). Every request needs the bearer
token, or with auth "mtls" the controller's client certificate from the cloud CA (the TLS
listener checks the chain; here the certificate must name the controller); errors are answered as
{"error": {"code", "message", "retryable"}}, as the host agents answer them.

Observed `exported` means "served now", not "wanted": after the serving process crashed a volume
reads as not exported until the ensure loop (or the next PUT) has put its export back, so the
controller never hands hosts a source nobody serves.
"""
from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Sequence

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse

from agent.contract import storage_tls, tls
from agent.contract.storage_v1 import EXTENSIONS, StorageInfo, VolumeObserved, VolumeSpec
from agent.contract.v1 import VOLUME_ID_RE, VolumeSource
from agent.drivers.base import DriverError, NetworkSource
from agent.drivers.volumes import VolumeBackend, VolumeInfo
from agent.http_errors import ApiError, bearer_check, error_body, install_error_handlers
from agent.storage_node import cert_install
from agent.storage_node.snapshot_routes import SNAPSHOT_STATUS_OF_CODE, snapshot_router

log = logging.getLogger(__name__)

#: Backend error code -> HTTP status. Other DriverErrors (the serving process or a tool failed)
#: are 503 when retryable, else 500.
STATUS_OF_CODE = {
    "InvalidVolumeSize": 400,
    "InvalidVolumeID.Malformed": 400,
    "IdempotentParameterMismatch": 400,
    "InvalidVolume.NotFound": 404,
    "VolumeInUse": 409,
    "HostRequired": 400,
    "InvalidParameterValue": 400,
    **SNAPSHOT_STATUS_OF_CODE,
}


class StorageApiError(ApiError):
    """An error of the storage node's API (the shared shape: agent/http_errors.py)."""

    @classmethod
    def from_driver(cls, e: DriverError) -> "StorageApiError":
        status = STATUS_OF_CODE.get(e.code) or (503 if e.retryable else 500)
        # A volume in use frees up once the host lets go of it: the contract makes it retryable
        # although the backend (which cannot know whether anyone will detach) does not.
        retryable = True if e.code == "VolumeInUse" else bool(e.retryable)
        return cls(status, e.code, str(e), retryable)


def _volume_id(volume_id: str) -> str:
    if not VOLUME_ID_RE.match(volume_id):
        raise StorageApiError(400, "InvalidVolumeID.Malformed",
                              f"volume id {volume_id!r} is not vol- followed by 17 lowercase hex")
    return volume_id


VolumeIdPath = Annotated[str, Depends(_volume_id)]


def wire_source(src: NetworkSource) -> VolumeSource:
    """The backend's NetworkSource as the hosts' contract carries it: NBD over TCP (a unix socket
    export is local to the node and means nothing to a host), or RBD through its first monitor
    (the contract carries one; librbd learns the others from it)."""
    if src.protocol == "rbd":
        host = src.hosts[0]
        if host.name is None:
            raise DriverError(f"RBD image {src.name} has no TCP monitor: hosts cannot attach it",
                              code="UnsupportedExport", retryable=False)
        auth = ({"auth_user": src.auth.username, "auth_key": src.auth.key}
                if src.auth is not None else {})  # cephx: the host's own user and key
        return VolumeSource(protocol="rbd", host=host.name, port=host.port or 6789,
                            export=src.name, **auth)
    if src.protocol != "nbd" or len(src.hosts) != 1 or src.hosts[0].name is None:
        raise DriverError(f"export {src.name} is not NBD over TCP: hosts cannot attach it",
                          code="UnsupportedExport", retryable=False)
    host = src.hosts[0]
    return VolumeSource(host=host.name, port=host.port or 10809, export=src.name)


def extensions_of(backend: VolumeBackend) -> list[str]:
    """The contract's extensions this node offers: "snapshots" (and "snapshot-stored-bytes")
    only over a backend that keeps snapshots (both of Kumo's do; a backend may not), so a controller never relies on routes
    that would fail."""
    snaps = "snapshots" in backend.capabilities
    return [e for e in EXTENSIONS if snaps or e not in ("snapshots", "snapshot-stored-bytes")]


def backend_protocol(backend: VolumeBackend) -> str:
    """What the backend serves hosts: "rbd" when it says so in its capabilities, else "nbd"."""
    return "rbd" if "rbd" in backend.capabilities else "nbd"


class EnsureLoop:
    """Calls backend.ensure() every `interval` seconds on its own thread (the first time at once),
    so a serving process that died or restarted gets its exports back with no request needed.
    A failure is logged and the next pass tries again: nothing stops the loop but stop()."""

    def __init__(self, backend: VolumeBackend, interval: float):
        if interval <= 0:
            raise ValueError("ensure_interval must be > 0")
        self.backend, self.interval = backend, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0  # completed passes, failed or not (for status and tests)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="storage-ensure", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)  # a pass in progress finishes (it holds the backend lock)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.backend.ensure()
            except DriverError as e:
                log.warning("ensure exports failed (%s), retrying in %.1f s: %s", e.code,
                            self.interval, e)
            except Exception:  # a bug must not silently end the repairs either
                log.exception("ensure exports failed unexpectedly")
            self.passes += 1
            self._stop.wait(self.interval)


def _router() -> APIRouter:
    r = APIRouter(prefix="/v1")

    def backend_of(request: Request) -> VolumeBackend:
        return request.app.state.backend

    def observed(info: VolumeInfo, served: dict[str, NetworkSource]) -> VolumeObserved:
        src = served.get(info.volume_id) if info.exported else None
        return VolumeObserved(volume_id=info.volume_id, size_bytes=info.size_bytes,
                              exported=src is not None,
                              source=wire_source(src) if src is not None else None)

    def observe(backend: VolumeBackend, volume_id: str) -> VolumeObserved | None:
        info = backend.volume(volume_id)
        return None if info is None else observed(info, backend.exports())

    @r.get("/storage", response_model=StorageInfo)
    def get_storage(request: Request) -> StorageInfo:
        backend = backend_of(request)
        vols = backend.volumes()
        return StorageInfo(node_id=request.app.state.node_id, extensions=extensions_of(backend),
                           protocol=backend_protocol(backend), capabilities=sorted(backend.capabilities), volume_count=len(vols),
                           provisioned_bytes=sum(v.size_bytes for v in vols))

    @r.get("/volumes", response_model=list[VolumeObserved])
    def list_volumes(request: Request) -> list[VolumeObserved]:
        backend = backend_of(request)
        vols, served = backend.volumes(), backend.exports()  # volumes() comes sorted by id
        return [observed(v, served) for v in vols]

    @r.get("/volumes/{volume_id}", response_model=VolumeObserved)
    def get_volume(volume_id: VolumeIdPath, request: Request) -> VolumeObserved:
        obs = observe(backend_of(request), volume_id)
        if obs is None:
            raise StorageApiError(404, "InvalidVolume.NotFound", f"volume {volume_id} does not exist")
        return obs

    @r.put("/volumes/{volume_id}", response_model=VolumeObserved)
    def put_volume(volume_id: VolumeIdPath, spec: VolumeSpec, request: Request) -> VolumeObserved:
        if spec.volume_id != volume_id:
            raise StorageApiError(400, "InvalidParameterValue",
                                  f"spec.volume_id {spec.volume_id} does not match the URL")
        backend = backend_of(request)
        # One change at a time: "missing -> create, smaller -> grow" compares then acts.
        with request.app.state.put_lock:
            have = backend.volume(volume_id)
            # Size first: a refused size (smaller) changes nothing, not even the export.
            if have is None:
                backend.create(volume_id, spec.size_bytes, from_snapshot=spec.from_snapshot)
            elif spec.size_bytes != have.size_bytes:
                backend.grow(volume_id, spec.size_bytes)  # smaller: InvalidVolumeSize
            if spec.exported:
                if spec.host is not None:  # extension export-host: per-host TLS nodes need it
                    backend.export(volume_id, host=spec.host)
                else:
                    backend.export(volume_id)
            else:  # disconnect: a force detach cuts connected hosts off (no VolumeInUse)
                backend.unexport(volume_id, force=spec.disconnect)
            obs = observe(backend, volume_id)
        if obs is None:  # deleted behind our back between the change and the read
            raise StorageApiError(503, "InvalidVolume.NotFound",
                                  f"volume {volume_id} vanished while it was changed", True)
        return obs

    @r.delete("/volumes/{volume_id}", status_code=204)
    def delete_volume(volume_id: VolumeIdPath, request: Request) -> Response:
        backend = backend_of(request)
        with request.app.state.put_lock:
            backend.unexport(volume_id)  # a connected host: VolumeInUse, nothing deleted
            backend.delete(volume_id)  # already gone: success
        return Response(status_code=204)

    return r


def _install_error_handlers(app: FastAPI) -> None:
    install_error_handlers(app)

    @app.exception_handler(DriverError)
    async def _driver_error(request: Request, exc: DriverError) -> JSONResponse:
        e = StorageApiError.from_driver(exc)
        return JSONResponse(error_body(e.code, e.message, e.retryable), e.status)


def controller_only(request: Request) -> None:
    """With auth "mtls": the connection's client certificate must be the controller's (401
    AuthFailure without one, 403 NotController for a host's or anyone else's)."""
    refused = tls.controller_refusal(request.scope, "this storage node")
    if refused:
        raise StorageApiError(*refused)


def _tls_router(node_id: str, tls_dirs: Sequence[Path], api_context) -> APIRouter:
    """PUT /v1/tls/server-certificate (agent/contract/storage_tls.py): the controller installs
    the node's renewed certificate (agent/storage_node/cert_install.py). The controller's
    certificate is required here whatever the API's auth (a bearer token is not enough: the
    token is shared with the hosts in token mode)."""
    r = APIRouter(dependencies=[Depends(controller_only)])

    @r.put(storage_tls.PATH, response_model=storage_tls.NodeCertificateInstalled)
    def put_server_certificate(body: storage_tls.NodeCertificate, request: Request):
        try:
            with request.app.state.put_lock:  # one installation at a time
                cert = cert_install.install(tls_dirs, node_id, body.certificate_pem,
                                            body.key_pem, api_context)
        except cert_install.Refused as e:
            raise StorageApiError(e.status, e.code, e.message) from None
        log.info("server certificate %x installed (until %s)", cert.serial_number,
                 cert.not_valid_after_utc)
        return storage_tls.NodeCertificateInstalled(
            serial=f"{cert.serial_number:x}", not_after=cert.not_valid_after_utc,
            reloaded=["api"] if api_context is not None else [], on_next_start=["nbd"])

    return r


def create_storage_app(backend: VolumeBackend, *, node_id: str, token: str | None,
                       ensure_interval: float = 5.0, auth: str = "token",
                       tls_dirs: Sequence[Path] = (), tls_context=None) -> FastAPI:
    """The storage node's API over `backend`. The ensure loop runs while the app does (started
    and stopped by its lifespan). Auth "token": `token` None or empty refuses every request (a
    node is never open by accident); "mtls": the controller's certificate (serve it over TLS
    with agent/contract/tls.uvicorn_tls, which hands the app the peer's certificate).
    `tls_dirs`: the node's TLS directories (the API's first), where a renewed certificate is
    installed; `tls_context`: the API's server context, reloaded in place with it."""
    if auth not in ("token", "mtls"):
        raise ValueError(f"auth {auth!r} is not token or mtls")
    loop = EnsureLoop(backend, ensure_interval)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop.start()
        try:
            yield
        finally:
            loop.stop()

    app = FastAPI(title="kumo-storage-node", version="v1", lifespan=lifespan,
                  dependencies=[Depends(controller_only if auth == "mtls"
                                        else bearer_check(lambda: token))])
    app.state.backend = backend
    app.state.node_id = node_id
    app.state.ensure_loop = loop
    app.state.put_lock = threading.Lock()
    _install_error_handlers(app)
    app.include_router(_router())
    if "snapshots" in backend.capabilities:  # else its routes answer 404 like any unknown one
        app.include_router(snapshot_router(backend, lock=app.state.put_lock))
    app.include_router(_tls_router(node_id, tuple(tls_dirs), tls_context))
    return app
