"""Heartbeats: the agent tells the controller who it is, what it can hold and what it runs.

Every `heartbeat_interval` seconds, and right after an observed state changes (kick()), POST a
HeartbeatRequest to `<controller_url>/v1/agent/heartbeat`, with the VPC dataplane's
NetworkObserved when the agent has one (extension vpc-network; it carries each network
subsystem's own status in `subsystems`). An unreachable controller is logged and retried at the
next tick; the agent keeps reconciling on its own meanwhile.

NAT gateways' byte counters (extension nat-processed) ride in that NetworkObserved only once
the controller's last answer said it reads them (HeartbeatResponse.nat_processed): a controller
that predates them would refuse the unknown field. They include the final counts of gateways
that left the host; a 2xx answer is their acknowledgement (nat_delivered).

A heartbeat never waits on a slow hypervisor call. What it reports (host facts, instances,
network) is gathered in a thread of its own (Latest); the sender waits at most COLLECT_WAIT for
it and otherwise sends the newest observation that finished, so the controller keeps seeing the
host up while libvirt is busy. Measured on a freshly deployed host: libvirtd answers every call
that needs QEMU's capabilities only after probing QEMU (seconds each, and at every call while
its capability cache is invalid), and the reconciler's define/start calls queue behind the same
probes; heartbeats that asked libvirt inline paused for 8-20 s at a time. The hypervisor's
versions (HostInfo.versions) are likewise read in the background and cached (VersionsCache).
"""
from __future__ import annotations

import logging
import os
import platform
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import httpx

from agent.contract import transport
from agent.contract.v1 import EXTENSIONS, HeartbeatRequest, HeartbeatResponse, HostInfo
from agent.contract.v1 import InstanceObserved, NatProcessed, NetworkObserved
from agent.settings import AgentSettings

log = logging.getLogger(__name__)

#: Minimum seconds between two heartbeats.
MIN_GAP = 0.2
#: Seconds a heartbeat waits for a fresh observation before it sends the newest finished one.
COLLECT_WAIT = 1.0
#: Seconds the hypervisor's versions are reused before they are read again (in the background).
VERSIONS_MAX_AGE = 300.0

_NOTHING = object()


class Latest:
    """The newest result of `fn`, computed in a thread of its own so that a caller waits only
    as long as it chooses to. At most one run is in flight; a run that outlives its caller's
    wait still finishes and serves the next get()."""

    def __init__(self, fn: Callable[[], object], name: str):
        self._fn = fn
        self.name = name
        self._cv = threading.Condition()
        self._value: object = _NOTHING
        self._at = 0.0  # monotonic time the newest value was computed
        self._error: BaseException | None = None
        self._running = False
        self._started = 0.0
        self._runs = 0  # finished runs

    def get(self, wait: float, max_age: float = 0.0):
        """A result no older than `max_age` if there is one; otherwise start a run (unless one
        is in flight) and wait for it until `wait` s after that run started (a run already
        slow is not waited for again). A run that finishes in time gives its result (or
        raises its error); one that does not leaves the newest earlier result, and
        TimeoutError when there never was one."""
        with self._cv:
            now = time.monotonic()
            if self._value is not _NOTHING and now - self._at <= max_age:
                return self._value
            if not self._running:
                self._running, self._started = True, now
                threading.Thread(target=self._run, name=f"kumo-{self.name}", daemon=True).start()
            target = self._runs + 1
            if self._cv.wait_for(lambda: self._runs >= target,
                                 timeout=max(self._started + wait - now, 0.0)):
                if self._error is not None:
                    raise self._error
                return self._value
            if self._value is _NOTHING:
                raise TimeoutError(f"{self.name}: no result yet (running for "
                                   f"{now - self._started:.1f} s)")
            return self._value

    @property
    def busy_for(self) -> float:
        """Seconds the run in flight has taken so far (0 when none is)."""
        with self._cv:
            return time.monotonic() - self._started if self._running else 0.0

    def _run(self) -> None:
        value: object = _NOTHING
        error: BaseException | None = None
        try:
            value = self._fn()
        except Exception as e:  # handed to the caller that waits for this run
            error = e
        with self._cv:
            self._runs += 1
            self._running = False
            self._error = error
            if error is None:
                self._value, self._at = value, time.monotonic()
            self._cv.notify_all()


class VersionsCache:
    """hypervisor.versions() for HostInfo.versions without ever waiting for it: the last read
    (empty until the first one finishes), read again in the background every VERSIONS_MAX_AGE.
    libvirt answers getVersion only once QEMU's capabilities are probed."""

    def __init__(self, hypervisor):
        getter = getattr(hypervisor, "versions", None)
        self._latest = Latest(getter, "hypervisor-versions") if callable(getter) else None

    def __call__(self) -> dict[str, str]:
        if self._latest is None:
            return {}
        try:
            return self._latest.get(wait=0.0, max_age=VERSIONS_MAX_AGE)
        except Exception as e:  # versions are informative; never fail a heartbeat for them
            log.debug("hypervisor versions: %s", e)
            return {}


def host_memory_mib(meminfo: Path = Path("/proc/meminfo")) -> int:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024  # the value is in KiB
    except (OSError, ValueError, IndexError):
        pass
    return 0


def disk_bytes(path: Path) -> int:
    """Size of the filesystem holding `path` (the agent's state dir)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_blocks * st.f_frsize


def agent_version() -> str:
    try:
        return metadata.version("kumo")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def host_info(settings: AgentSettings, hypervisor, network=None,
              hypervisor_versions: Callable[[], dict[str, str]] | None = None) -> HostInfo:
    """HostInfo of this host, measured now. `network` is the NetworkService (extension
    vpc-network: underlay_ip), None when the agent runs without a VPC dataplane.
    `hypervisor_versions`: where the hypervisor's versions come from (a VersionsCache, so
    that the heartbeat never waits on libvirt); None asks the hypervisor now."""
    versions = {"agent": agent_version()}
    getter = hypervisor_versions or getattr(hypervisor, "versions", None)
    if callable(getter):
        try:
            versions.update({k: str(v) for k, v in getter().items()})
        except Exception as e:  # versions are informative; never fail a heartbeat for them
            log.debug("hypervisor versions: %s", e)
    arch = platform.machine() or "x86_64"
    extensions = [e for e in EXTENSIONS
                  if network is not None or e not in ("vpc-network", "nat-processed")]
    return HostInfo(host_id=settings.host_id, agent_url=settings.agent_url(),
                    hypervisor=hypervisor.kind, architecture=arch,
                    vcpus=os.cpu_count() or 1, memory_mib=host_memory_mib(),
                    disk_bytes=disk_bytes(settings.state_dir), extensions=extensions,
                    versions=versions,
                    underlay_ip=network.underlay_ip() if network is not None else None)


class Heartbeat:
    """Background sender of heartbeats."""

    def __init__(self, settings: AgentSettings, host: Callable[[], HostInfo],
                 instances: Callable[[], list[InstanceObserved]],
                 network: Callable[[], NetworkObserved] | None = None, identity=None,
                 nat_processed: Callable[[], list[NatProcessed]] | None = None,
                 nat_delivered: Callable[[list[NatProcessed]], None] | None = None):
        """`identity`: the host's AgentIdentity (auth "mtls"): heartbeats go over mutual TLS
        and the certificate is renewed through the same client once renewal is due.
        `nat_processed`: the NAT gateways' counters, sent once the controller asks for them.
        `nat_delivered`: told which counters a heartbeat carried once the controller answered
        it with 2xx (it recorded them in that transaction): final counts of gateways that left
        are dropped after a few deliveries (agent.network.nat_finals)."""
        self.settings = settings
        self.identity = identity
        self.host = host
        self.instances = instances
        self.network = network
        self.nat_processed = nat_processed
        self.nat_delivered = nat_delivered
        #: The controller's last answer asked for NAT counters (HeartbeatResponse.nat_processed).
        self.send_nat = False
        self.interval = settings.heartbeat_interval
        self.sent = 0
        self.failures = 0
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: httpx.Client | None = None
        self._observation = Latest(self._observe, "heartbeat-observe")
        self._stalled = False

    def start(self) -> None:
        if not self.settings.controller_url:
            log.info("no controller_url: heartbeats disabled")
            return
        self._thread = threading.Thread(target=self._main, name="kumo-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._client is not None:
            self._client.close()

    def kick(self) -> None:
        """Send one now (an observed state changed)."""
        self._wake.set()

    def _observe(self) -> tuple[HostInfo, list[InstanceObserved], NetworkObserved | None]:
        """What a heartbeat reports, gathered now (in Latest's thread: it may ask libvirt)."""
        network = self.network() if self.network is not None else None
        return self.host(), self.instances(), network

    def send_once(self) -> HeartbeatResponse:
        # The newest observation; never a wait of more than COLLECT_WAIT on a slow call.
        host, instances, network = self._observation.get(wait=COLLECT_WAIT)
        busy = self._observation.busy_for
        if busy > COLLECT_WAIT and not self._stalled:  # once per stall
            log.warning("observing the host is slow (%.1f s so far, e.g. libvirt probing "
                        "QEMU): heartbeats carry the last observation meanwhile", busy)
        self._stalled = busy > COLLECT_WAIT
        sent_nat: list[NatProcessed] = []
        if network is not None and self.send_nat and self.nat_processed is not None:
            try:
                items = self.nat_processed()
                network = network.model_copy(update={"nat_processed": items})
                sent_nat = items
            except Exception as e:  # counts are cumulative: the next heartbeat carries them
                log.warning("NAT gateway counters: %s", e)
        req = HeartbeatRequest(host=host, instances=instances, network=network,
                               sent_at=time.time())
        if self._client is None:
            if self.identity is not None:
                self._client = transport.client(self.settings.controller_url,
                                                tls=self.identity.client)
            else:
                self._client = transport.client(self.settings.controller_url,
                                                self.settings.token)
        if self.identity is not None and self.identity.renewal_due():
            try:
                self.identity.renew(self._client)
            except Exception as e:  # retried at the next heartbeat; the old one still works
                log.warning("certificate renewal failed: %s", e)
        r = self._client.post("/v1/agent/heartbeat", json=req.model_dump(mode="json"))
        r.raise_for_status()
        resp = HeartbeatResponse.model_validate(r.json())
        self.send_nat = resp.nat_processed
        if sent_nat and self.nat_delivered is not None:
            try:
                self.nat_delivered(sent_nat)
            except Exception as e:  # kept: sent again, which bills nothing twice
                log.warning("NAT counters delivered: %s", e)
        return resp

    def _main(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                resp = self.send_once()
                self.sent += 1
                self.last_error = None
                # The controller may ask for a faster pace, never a slower one than configured.
                self.interval = min(self.settings.heartbeat_interval, max(resp.interval, 0.2))
            except Exception as e:  # unreachable, 5xx, garbage: log and retry next tick
                self.failures += 1
                if self.last_error != str(e):
                    log.warning("heartbeat to %s failed: %s", self.settings.controller_url, e)
                self.last_error = str(e)
                if self._client is not None:
                    self._client.close()
                    self._client = None
            # A burst of state changes must not become a burst of heartbeats.
            if self._stop.wait(MIN_GAP):
                break
            self._wake.wait(max(self.interval - MIN_GAP, 0))
