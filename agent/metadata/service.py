"""The metadata service wired into the host (issue 12): one 169.254.169.254:80 listener in each
VPC router namespace, answering the host's own guests of that VPC from the specs the controller
pushed (agent/contract/metadata_v1.py), while the controller is away too.

Where it listens. A guest's route to 169.254.169.254 is its default route: the subnet's router
(.1), which is the router namespace of its VPC *on its own host* (agent/network/desired.py: the
router MAC has a static fdb entry towards the local kq veth on every host, so a guest's routed
traffic never crosses VXLAN). The service puts 169.254.169.254/32 on that namespace's `lo` (the
dataplane does not manage addresses on lo) and binds a listening socket there, made inside the
namespace (a short-lived thread enters it with setns) and then served from the service's own
asyncio loop (one thread for every VPC). The socket is bound to the router's kr-<vni> device
(SO_BINDTODEVICE): only connections arriving from the VPC's bridge are accepted, never ones
routed in from the transit link (the internet side).

Who is asking: (VPC, source IPv4) -> the port of this host with that address in that VPC
(NetworkSpec.ports of the VPC, which are this host's ports only) -> its instance. This is sound
because of the firewall's anti-spoofing (agent/firewall/render.py, bridge table, prerouting
priority -300, before the bridge or br_netfilter sees the frame): a frame from a guest's tap is
dropped unless its source MAC and IPv4 are the port's own (sets port_mac / port_ip), so a source
address seen in the router namespace of VPC v on this host is the address of the port it came
in on. A guest on another host cannot reach this namespace with a spoofed address either: its
own host drops the spoofed frame, and its routed traffic goes to its own host's router.
Addresses are only compared within one VPC (one listener, one namespace, one conntrack zone per
VPC), so two accounts' instances with the same private IP each get their own document. No
header and no claimed address is ever used (server.py).

Supervision: ensure() runs in every network pass (a Subsystem "metadata", after the dataplane,
agent/network/subsystems.py style): a listener whose namespace is missing, was re-created
(another inode) or whose server closed is (re)opened; listeners of VPCs the host no longer
carries are closed in prepare(), before the dataplane deletes their namespaces.

Tokens: one TokenIssuer whose secret the wiring passes (the agent's is kept in its state
directory, so tokens issued before a restart stay valid; tests default to a random one). Identity: the controller signed each
document (PresignedSigner serves its signature and pkcs7); the key is never on the host.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import secrets
import socket
import threading
from base64 import b64decode
from concurrent.futures import Future
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Callable, Optional

from agent.contract.v1 import ErrorInfo, InstanceSpec, NetworkSpec
from agent.metadata import METADATA_IP, METADATA_PORT
from agent.metadata.document import InstanceDocument
from agent.metadata.identity import identity_document
from agent.metadata.ratelimit import RateLimiter
from agent.metadata.server import ConnectionInfo, MetadataServer
from agent.metadata.tokens import TokenIssuer
from agent.netns import inode as netns_inode
from agent.netns import netns_path
from agent.network import names
from agent.network.subsystems import Subsystem

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000


class PresignedSigner:
    """The IdentitySigner interface tree.py uses, answering with signatures the controller made.

    Keyed by the identity document's bytes; a document nobody signed raises KeyError (server.py
    logs it and closes that connection only)."""

    def __init__(self) -> None:
        self._by_doc: dict[bytes, tuple[bytes, bytes]] = {}
        self._lock = threading.Lock()

    def replace(self, signed: dict[bytes, tuple[bytes, bytes]]) -> None:
        with self._lock:
            self._by_doc = dict(signed)

    def add(self, document: bytes, signature: bytes, pkcs7: bytes) -> None:
        with self._lock:
            self._by_doc[document] = (signature, pkcs7)

    def signature(self, document: bytes) -> bytes:
        with self._lock:
            return self._by_doc[document][0]

    def pkcs7(self, document: bytes) -> bytes:
        with self._lock:
            return self._by_doc[document][1]


class Documents:
    """instance id -> its InstanceDocument (user-data filled in from the spec), built once per
    spec; the signed identity registered with the PresignedSigner."""

    def __init__(self, specs: Callable[[str], Optional[InstanceSpec]],
                 signer: PresignedSigner) -> None:
        self._specs = specs
        self._signer = signer
        self._cache: dict[str, tuple[InstanceSpec, Optional[InstanceDocument]]] = {}
        self._lock = threading.Lock()

    def get(self, instance_id: str) -> Optional[InstanceDocument]:
        spec = self._specs(instance_id)
        if spec is None or spec.metadata is None:
            return None
        with self._lock:
            hit = self._cache.get(instance_id)
            if hit is not None and hit[0] is spec:
                return hit[1]
        doc = self._build(spec)
        with self._lock:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[instance_id] = (spec, doc)
        return doc

    def _build(self, spec: InstanceSpec) -> Optional[InstanceDocument]:
        md = spec.metadata
        assert md is not None
        try:
            user_data = b64decode(spec.user_data_b64) if spec.user_data_b64 else None
            doc = md.document.model_copy(update={"user_data": user_data})
        except ValueError as e:
            log.error("metadata of %s unusable: %s", spec.instance_id, e)
            return None
        if md.identity is not None:
            body = md.identity.document.encode()
            if identity_document(doc) != body:
                log.warning("identity document of %s differs from the one the controller "
                            "signed; its identity entries will fail", spec.instance_id)
            self._signer.add(body, md.identity.signature.encode(), md.identity.pkcs7.encode())
        return doc


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def in_netns(path: Optional[str], fn: Callable[[], Any]) -> Any:
    """Run fn() in a thread that entered the network namespace at `path` (None: this one).
    Sockets fn creates stay in that namespace when the thread ends; the caller's threads are
    never moved."""
    if path is None:
        return fn()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            _setns(path)
            box["value"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e
    t = threading.Thread(target=run, name="kumo-netns", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def router_listener(device: str, ip: str = METADATA_IP, port: int = METADATA_PORT) -> socket.socket:
    """Inside a router namespace: 169.254.169.254/32 on lo, and a listening TCP socket on it
    bound to `device` (the router's VPC-side veth). Runs in the namespace (in_netns)."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=lo, family=socket.AF_INET)}
        if ip not in have:
            ipr.addr("add", index=lo, address=ip, prefixlen=32)
        ipr.link("set", index=lo, state="up")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        sock.bind((ip, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class _Listener:
    netns_inode: Optional[int]
    server: asyncio.AbstractServer


@dataclass(frozen=True)
class VpcListener:
    """What one VPC's listener needs: its label, namespace file and the router's device."""

    label: str
    #: The router namespace's `ip netns` name (None: this process's own, tests only).
    netns: Optional[str]
    device: str


class MetadataService:
    """The host's metadata listeners and the server behind them.

    documents(instance_id) -> InstanceDocument | None; listen(VpcListener) -> a bound listening
    socket (default: router_listener inside the namespace; tests pass a loopback one)."""

    def __init__(self, documents: Callable[[str], Optional[InstanceDocument]],
                 signer: PresignedSigner, *,
                 listen: Optional[Callable[[VpcListener], socket.socket]] = None,
                 limiter: Optional[RateLimiter] = None,
                 set_ttl: Optional[Callable[[socket.socket, int], None]] = None,
                 token_secret: Optional[bytes] = None) -> None:
        self._documents = documents
        self._listen = listen or (lambda v: in_netns(
            netns_path(v.netns) if v.netns else None, lambda: router_listener(v.device)))
        kw: dict[str, Any] = {} if set_ttl is None else {"set_ttl": set_ttl}
        self.server = MetadataServer(self.resolve, signer, TokenIssuer(token_secret or secrets.token_bytes(32)),
                                     limiter or RateLimiter(rate=50, burst=100), **kw)
        #: (listener label, source IPv4) -> instance id, from the last NetworkSpec.
        self._ports: dict[tuple[str, str], str] = {}
        self._listeners: dict[str, _Listener] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kumo-metadata",
                                        daemon=True)
        self._thread.start()

    # -- identification (see the module docstring) -------------------------------------------
    def set_ports(self, ports: dict[tuple[str, str], str]) -> None:
        with self._lock:
            self._ports = dict(ports)

    def resolve(self, info: ConnectionInfo) -> Optional[InstanceDocument]:
        with self._lock:
            iid = self._ports.get((info.listener or "", info.peer[0]))
        if iid is None:
            return None
        doc = self._documents(iid)
        if doc is None:
            return None
        # The document must own the address too (a spec and a network document in flux).
        mine = {a for n in doc.interfaces for a in n.local_ipv4s} | {doc.local_ipv4}
        return doc if IPv4Address(info.peer[0]) in mine else None

    # -- listeners ---------------------------------------------------------------------------
    def _call(self, coro, timeout: float = 10.0):
        fut: Future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def labels(self) -> set[str]:
        with self._lock:
            return set(self._listeners)

    def ensure(self, wanted: list[VpcListener],
               inode: Callable[[Optional[str]], Optional[int]]) -> list[tuple[str, Exception]]:
        """Open what is missing, re-open what is stale, close what is not wanted."""
        errors: list[tuple[str, Exception]] = []
        self.prune({v.label for v in wanted})
        for v in wanted:
            ino = inode(v.netns)
            with self._lock:
                cur = self._listeners.get(v.label)
            if cur is not None and cur.netns_inode == ino and cur.server.is_serving():
                continue
            if cur is not None:
                self._close(v.label)
            try:
                sock = self._listen(v)
                server = self._call(self.server.serve(sock=sock, listener=v.label))
            except Exception as e:
                errors.append((v.label, e))
                continue
            with self._lock:
                self._listeners[v.label] = _Listener(ino, server)
            log.info("metadata: serving %s:%d for %s", METADATA_IP, METADATA_PORT, v.label)
        return errors

    def prune(self, keep: set[str]) -> None:
        for label in self.labels() - keep:
            self._close(label)

    def _close(self, label: str) -> None:
        with self._lock:
            cur = self._listeners.pop(label, None)
        if cur is None:
            return

        async def stop() -> None:
            cur.server.close()
        try:
            self._call(stop())
        except Exception as e:
            log.debug("closing metadata listener %s: %s", label, e)

    def close(self) -> None:
        self.prune(set())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def ports_of(spec: NetworkSpec) -> dict[tuple[str, str], str]:
    """(listener label = VPC id, port IPv4) -> instance id, for this host's ports."""
    return {(v.vpc_id, str(p.ip)): p.port_id for v in spec.vpcs for p in v.ports}


def metadata_subsystem(service: MetadataService, router_netns: Callable[[int], str],
                       inode: Callable[[Optional[str]], Optional[int]] = netns_inode):
    """"metadata": after the dataplane, a listener per carried VPC (its router namespace exists
    by then); listeners of VPCs gone are closed before the dataplane removes their namespace."""

    def wanted(spec: NetworkSpec) -> list[VpcListener]:
        return [VpcListener(v.vpc_id, router_netns(v.vni), names.link_name("r", v.vni))
                for v in spec.vpcs]

    def prepare(host) -> None:
        keep = {v.vpc_id for v in getattr(host, "vpcs", [])}
        service.prune(keep)

    def run(ctx) -> Optional[ErrorInfo]:
        service.set_ports(ports_of(ctx.spec))
        errors = service.ensure(wanted(ctx.spec), inode)
        if not errors:
            return None
        label, e = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return ErrorInfo(code="MetadataListenFailed",
                         message=f"metadata listener of {label}: {e}{more}", retryable=True)

    return Subsystem("metadata", run, needs_host=True, prepare=prepare, rank=3,
                     close=service.close)
