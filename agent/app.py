"""The agent's HTTP API (FastAPI app factory) and the wiring of drivers, loop and heartbeat.

Routes are thin: they validate, persist the accepted spec and kick the reconciler; everything
that touches the host happens in agent/reconcile/. Real drivers are imported lazily, only when
settings.driver == "libvirt", so tests and `driver=fake` agents need no libvirt at all.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from contextlib import asynccontextmanager
from typing import Annotated, Any, Callable

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import FileResponse

from agent.capture import CaptureError, Captures, fake_convert
from agent.console import read_tail
from agent.contract import tls
from agent.contract.generations import GenerationConflict, is_resend
from agent.contract.v1 import (INSTANCE_ID_RE, CaptureObserved, CaptureRequest, ConsoleOutput,
                               HostInfo, InstanceObserved, InstanceSpec, NetworkObserved,
                               NetworkSpec)
from agent.drivers.base import DriverError
from agent.http_errors import ApiError, bearer_check, install_error_handlers
from agent.heartbeat import Heartbeat, VersionsCache, host_info
from agent.identity import AgentIdentity
from agent.metrics import Sampler
from agent.network.host import (LinkProbe, Underlay, fake_underlay_ip, resolve_namespace,
                                resolve_underlay)
from agent.network.service import KERNEL_RESYNC, NetworkService, NetworkSpecRejected
from agent.reconcile import Reconciler
from agent.reconcile.steps import Drivers
from agent.settings import AgentSettings
from agent.state import StateStore

log = logging.getLogger(__name__)


class AgentApiError(ApiError):
    """An error of the agent's API (the shared shape: agent/http_errors.py)."""


def _with_metadata(svc: NetworkService, settings: AgentSettings, host_tag: str,
                   instance_specs: Any) -> NetworkService:
    """Register the metadata service ("metadata" subsystem) when settings ask for it and the
    instance specs it serves from are known."""
    if not settings.metadata or instance_specs is None:
        return svc
    from agent.metadata.service import (Documents, MetadataService, PresignedSigner,
                                        metadata_subsystem)
    from agent.metadata.tokens import persistent_secret
    from agent.network import names
    signer = PresignedSigner()
    service = MetadataService(Documents(instance_specs, signer).get, signer,
                              token_secret=persistent_secret(settings.state_dir /
                                                             "metadata-token.key"))
    svc.register(metadata_subsystem(service, lambda vni: names.router_netns(host_tag, vni)))
    return svc


def build_network_service(settings: AgentSettings, dataplane: Any = None,
                          instance_specs: Any = None) -> NetworkService | None:
    """The VPC dataplane service (extension vpc-network), or None when network mode is "none"
    and no dataplane is injected. Fake driver: a FakeDataplane, a FakeFirewall, no DHCP
    and a static underlay (KUMO_AGENT_UNDERLAY_IP, else fake_underlay_ip(host_id); device
    underlay_dev or uplink0). Otherwise the security groups (FirewallSync: libnftables when the
    host namespace is the agent's own, the nft CLI entered into it otherwise) and DHCP (DhcpSync,
    files in <state_dir>/dhcp) of the host namespace, as settings.firewall / settings.dhcp ask."""
    mode = settings.network_mode()
    if dataplane is None and mode not in ("vpc", "fake"):
        return None
    kw: dict[str, Any] = dict(resync_interval=settings.network_resync_interval)

    def real_parts(netns: str | None, host_tag: str) -> dict[str, Any]:
        from agent.network.dhcp_sync import DhcpSync
        from agent.network.firewall_sync import FirewallSync
        return dict(firewall=FirewallSync(netns) if settings.firewall else None,
                    dhcp=DhcpSync(settings.state_dir / "dhcp", host_tag, user=settings.dhcp_user)
                    if settings.dhcp else None)

    if settings.driver == "fake" or (dataplane is None and mode == "fake"):
        if dataplane is None:
            from agent.drivers.fake import FakeDataplane
            dataplane = FakeDataplane()
        if settings.firewall:
            from agent.drivers.fake import FakeFirewall
            kw["firewall"] = FakeFirewall()
        ul = Underlay(settings.underlay_ip or fake_underlay_ip(settings.host_id),
                      settings.underlay_dev or "uplink0")
        link_up = getattr(dataplane, "link_up", None) or LinkProbe(getattr(dataplane, "netns", None))
        return NetworkService(settings.state_dir, dataplane=dataplane, underlay=lambda: ul,
                              link_up=link_up, **kw)
    if dataplane is not None:  # an injected real Dataplane: its namespace is the host's
        netns = dataplane.netns
        return _with_metadata(NetworkService(
            settings.state_dir, dataplane=dataplane,
            underlay=lambda: resolve_underlay(netns, settings.underlay_dev, settings.underlay_ip),
            link_up=LinkProbe(netns), **real_parts(netns, dataplane.host_tag), **kw),
            settings, dataplane.host_tag, instance_specs)
    from agent.network.apply import Dataplane, DataplaneError
    try:
        host = resolve_namespace(settings.netns, settings.host_id, settings.allow_root_netns)
    except DataplaneError as e:
        # Reported in NetworkObserved.error (and the log); nothing is ever touched.
        log.error("VPC dataplane disabled: %s", e)
        refused = e  # `e` is unbound after the except block; the closure keeps this one

        def _refuse(*_a):
            raise refused
        return NetworkService(settings.state_dir, dataplane=_refuse, underlay=_refuse,
                              link_up=lambda name: False, **kw)
    log.info("VPC dataplane in namespace %s (router namespaces %s-kvr-*)",
             host.netns or "(own)", host.host_tag)
    return _with_metadata(NetworkService(
        settings.state_dir,
        dataplane=lambda: Dataplane(host.netns, host_tag=host.host_tag,
                                    allow_own_namespace=host.netns is None,
                                    resync_seconds=KERNEL_RESYNC),
        underlay=lambda: resolve_underlay(host.netns, settings.underlay_dev, settings.underlay_ip),
        link_up=LinkProbe(host.netns), **real_parts(host.netns, host.host_tag), **kw),
        settings, host.host_tag, instance_specs)


def build_drivers(settings: AgentSettings, hypervisor=None, storage=None, network=None,
                  network_service: NetworkService | None = None, tls_client=None) -> Drivers:
    """The drivers `settings` ask for; injected ones win. Fake and real drivers render the
    same seed network-config (agent.seed.network_config_v2, Drivers' default)."""
    if settings.driver == "fake":
        from agent.drivers.fake import FakeHypervisor, FakeStorage
        hypervisor = hypervisor or FakeHypervisor(
            kind="kvm" if settings.hypervisor == "kvm" else "qemu")
        storage = storage or FakeStorage(settings.state_dir)
    else:
        if hypervisor is None:
            from agent.hypervisor_choice import choose_hypervisor
            from agent.libvirt.driver import LibvirtHypervisor
            hypervisor = LibvirtHypervisor(settings.libvirt_uri,
                                           choose_hypervisor(settings.hypervisor))
        if storage is None:
            from agent.storage import ImageFetcher, LocalStorage
            # Image URLs may be controller paths (/v1/...): fetch them the way we heartbeat.
            storage = LocalStorage(settings.state_dir, ImageFetcher(
                token=None if tls_client is not None else settings.token or None,
                controller_url=settings.controller_url, tls=tls_client))
    if network is None and network_service is not None:
        # The fake dataplane too: an instance on a VPC bridge waits (NetworkNotReady) until the
        # network document carrying its VPC is applied, exactly as in production.
        from agent.network.driver import VpcNetwork
        network = VpcNetwork(network_service)
    return Drivers(hypervisor=hypervisor, storage=storage, network=network)


def controller_only(settings: AgentSettings) -> Callable[[Request], None]:
    """The API's one authentication dependency: with auth "mtls", the connection's client
    certificate (chain and expiry checked by TLS against the cloud CA) must be the
    controller's (SAN `kumo:controller`): 401 AuthFailure without one, 403 NotController for
    another (a host's); with auth "token", the shared bearer token."""
    if settings.auth != "mtls":
        return bearer_check(lambda: settings.token)

    def require_controller(request: Request) -> None:
        refused = tls.controller_refusal(request.scope, "this agent")
        if refused:
            raise AgentApiError(*refused)
    return require_controller


def _instance_id(instance_id: str) -> str:
    if not INSTANCE_ID_RE.match(instance_id):
        raise AgentApiError(400, "InvalidInstanceID.Malformed",
                            f"instance id {instance_id!r} is not of the form i-<17 hex digits>")
    return instance_id


InstanceIdPath = Annotated[str, Depends(_instance_id)]


def _router() -> APIRouter:
    r = APIRouter(prefix="/v1")

    @r.get("/host", response_model=HostInfo)
    def get_host(request: Request) -> HostInfo:
        st = request.app.state
        return host_info(st.settings, st.drivers.hypervisor, st.network)

    def _network(request: Request) -> NetworkService:
        svc = request.app.state.network
        if svc is None:
            raise AgentApiError(501, "UnsupportedOperation",
                                "this agent runs without a VPC dataplane (network mode "
                                f"{request.app.state.settings.network_mode()!r})")
        return svc

    @r.get("/network", response_model=NetworkObserved)
    def get_network(request: Request) -> NetworkObserved:
        return _network(request).observed()

    @r.put("/network", response_model=NetworkObserved)
    def put_network(spec: NetworkSpec, request: Request) -> NetworkObserved:
        try:
            return _network(request).accept(spec)
        except NetworkSpecRejected as e:
            raise AgentApiError(e.status, e.code, e.message) from None

    @r.get("/instances", response_model=list[InstanceObserved])
    def list_instances(request: Request) -> list[InstanceObserved]:
        return request.app.state.reconciler.observed_all()

    @r.get("/instances/{instance_id}", response_model=InstanceObserved)
    def get_instance(instance_id: InstanceIdPath, request: Request) -> InstanceObserved:
        obs = request.app.state.reconciler.observed(instance_id)
        if obs is None:
            raise AgentApiError(404, "InstanceNotFound", f"instance {instance_id} is not on this host")
        return obs

    @r.put("/instances/{instance_id}", response_model=InstanceObserved)
    def put_instance(instance_id: InstanceIdPath, spec: InstanceSpec,
                     request: Request) -> InstanceObserved:
        st = request.app.state
        if spec.instance_id != instance_id:
            raise AgentApiError(400, "InvalidParameterValue",
                                f"spec.instance_id {spec.instance_id} does not match the URL")
        with st.put_lock:
            cur = st.store.spec(instance_id)
            try:
                if is_resend(spec, cur):
                    return st.reconciler.observed(instance_id)  # a re-send: nothing to do
            except GenerationConflict as e:
                raise AgentApiError(409, e.code, e.message) from None
            if cur is None:
                gone = st.store.deleted_generation(instance_id)
                if gone is not None and spec.generation <= gone:
                    raise AgentApiError(409, "StaleGeneration",
                                        f"instance {instance_id} was deleted at generation {gone}")
            st.store.put_spec(spec)
        st.reconciler.kick(instance_id)
        return st.reconciler.observed(instance_id)

    @r.delete("/instances/{instance_id}", status_code=204)
    def delete_instance(instance_id: InstanceIdPath, request: Request) -> Response:
        st = request.app.state
        with st.put_lock:
            st.store.remove_spec(instance_id)
        try:
            st.reconciler.delete(instance_id)
        except DriverError as e:
            # The spec is gone for good; the orphan sweep keeps retrying, and so may the caller.
            raise AgentApiError(503, e.code, f"teardown of {instance_id} failed: {e}",
                                retryable=True) from None
        return Response(status_code=204)

    @r.get("/instances/{instance_id}/console", response_model=ConsoleOutput)
    def get_console(instance_id: InstanceIdPath, request: Request,
                    tail_bytes: Annotated[int | None, Query(ge=0)] = None) -> ConsoleOutput:
        st = request.app.state
        if st.store.spec(instance_id) is None:
            raise AgentApiError(404, "InstanceNotFound", f"instance {instance_id} is not on this host")
        log_path = st.drivers.storage.instance_dir(instance_id) / "console.log"
        return ConsoleOutput(instance_id=instance_id, output=read_tail(log_path, tail_bytes))

    # -- extension image-capture (agent/capture.py does the work) ---------------------------
    def _captures(request: Request) -> Captures:
        st = request.app.state
        with st.put_lock:
            if getattr(st, "captures", None) is None:
                storage = st.drivers.storage
                st.captures = Captures(
                    st.settings.state_dir, lambda iid: storage.instance_dir(iid) / "root.qcow2",
                    convert=fake_convert if st.settings.driver == "fake" else None)
            return st.captures

    def _capture_call(fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except CaptureError as e:
            raise AgentApiError(e.status, e.code, e.message, e.retryable) from None

    @r.post("/instances/{instance_id}/image", response_model=CaptureObserved)
    def capture_image(instance_id: InstanceIdPath, body: CaptureRequest,
                      request: Request) -> CaptureObserved:
        obs = request.app.state.reconciler.observed(instance_id)
        if obs is None:
            raise AgentApiError(404, "InstanceNotFound", f"instance {instance_id} is not on this host")
        return _capture_call(_captures(request).start, instance_id, body.image_id,
                             running=obs.power not in ("shutoff", "absent", "crashed"),
                             allow_running=body.allow_running)

    @r.get("/instances/{instance_id}/image/{image_id}", response_model=CaptureObserved)
    def get_capture(instance_id: InstanceIdPath, image_id: str,
                    request: Request) -> CaptureObserved:
        return _capture_call(_captures(request).get, instance_id, image_id)

    @r.get("/instances/{instance_id}/image/{image_id}/file", response_class=FileResponse)
    def capture_file(instance_id: InstanceIdPath, image_id: str, request: Request):
        path, sha = _capture_call(_captures(request).file, instance_id, image_id)
        return FileResponse(path, media_type="application/octet-stream",
                            headers={"X-Kumo-Sha256": sha})

    @r.delete("/instances/{instance_id}/image/{image_id}", status_code=204)
    def delete_capture(instance_id: InstanceIdPath, image_id: str, request: Request) -> Response:
        _capture_call(_captures(request).delete, instance_id, image_id)
        return Response(status_code=204)

    return r


def create_app(settings: AgentSettings, hypervisor: Any = None, storage: Any = None,
               network: Any = None, dataplane: Any = None) -> FastAPI:
    """One agent: API + reconcile loop + VPC dataplane service + heartbeat, over
    `settings.state_dir`.

    Drivers and the VPC dataplane may be injected (tests pass fakes); otherwise settings pick
    them. Starting the app loads the accepted specs (instances and network) and reconciles;
    stopping it leaves guests and their networks as they are.
    """
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = StateStore(settings.state_dir)
    identity = AgentIdentity(settings.state_dir, settings.host_id) \
        if settings.auth == "mtls" else None
    tls_client = identity.client if identity is not None and identity.exists() else None
    network_service = build_network_service(settings, dataplane, store.spec)
    drivers = build_drivers(settings, hypervisor, storage, network, network_service, tls_client)
    reconciler = Reconciler(store, drivers, shutdown_timeout=settings.shutdown_timeout,
                            resync_interval=settings.resync_interval,
                            readiness_interval=settings.readiness_interval,
                            max_backoff=settings.max_backoff, workers=settings.reconcile_workers)
    # The heartbeat never waits for libvirt's versions (agent/heartbeat.py: VersionsCache).
    hypervisor_versions = VersionsCache(drivers.hypervisor)
    heartbeat = Heartbeat(settings,
                          host=lambda: host_info(settings, drivers.hypervisor, network_service,
                                                 hypervisor_versions),
                          instances=reconciler.observed_all,
                          network=network_service.observed if network_service else None,
                          identity=identity,
                          nat_processed=network_service.nat_processed if network_service else None,
                          nat_delivered=network_service.nat_delivered if network_service else None)
    reconciler.on_change = heartbeat.kick
    sampler = Sampler(settings, drivers.hypervisor, tls=tls_client)
    if network_service is not None:
        network_service.on_change = heartbeat.kick

    def start_all() -> None:
        # The dataplane first: instances' NICs join bridges it creates.
        if network_service is not None:
            network_service.start()
        reconciler.start()
        heartbeat.start()
        sampler.start()

    def stop_all() -> None:
        sampler.stop()
        heartbeat.stop()
        reconciler.stop()
        if network_service is not None:
            network_service.stop()
        close = getattr(drivers.hypervisor, "close", None)
        if callable(close):
            close()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Off the event loop's thread: starting and stopping touch netlink and libvirt, and
        # pyroute2's synchronous IPRoute runs an asyncio loop of its own, which cannot run
        # inside uvicorn's ("This event loop is already running": the underlay was then
        # unknown until the network thread's first pass).
        await asyncio.to_thread(start_all)
        try:
            yield
        finally:
            await asyncio.to_thread(stop_all)

    app = FastAPI(title="kumo-agent", version="v1", lifespan=lifespan,
                  dependencies=[Depends(controller_only(settings))])
    app.state.settings = settings
    app.state.drivers = drivers
    app.state.store = store
    app.state.reconciler = reconciler
    app.state.heartbeat = heartbeat
    app.state.sampler = sampler
    app.state.identity = identity
    app.state.network = network_service
    app.state.put_lock = threading.Lock()
    install_error_handlers(app)
    app.include_router(_router())
    return app
