"""Benchmark of the instance metadata service (issue 12): requests per second and latency per host
for metadata and token requests, and what the per-instance rate limit holds.

Needs root. Everything happens in two network namespaces the run creates and deletes
(`kumo-bmd-<pid>-r` and `-g`), never in the machine's own:

    [kumo-bmd-<pid>-g]  "guests": N instance addresses (10.20.1.10, .11, ...) on eth0,
            |           default route via the VPC router 10.20.1.1; the load generator runs here
         veth
            |
    [kumo-bmd-<pid>-r]  the VPC's router: kr-000001 (10.20.1.1/24), 169.254.169.254/32 on lo and
                        the agent's metadata listener bound to kr-000001

The server is the agent's own: agent.metadata.service.MetadataService (its thread and asyncio
loop, its Documents cache of the pushed InstanceSpecs, PresignedSigner with identity documents
signed by a controller-side IdentitySigner), opened by metadata_subsystem() from a NetworkSpec
exactly as in a network pass, listening through service.router_listener() inside the router
namespace. Each of the N instances has a realistic document (one ENI with a public address, two
security groups, a key, tags, 1-2 KiB of cloud-config user-data) and is identified, as on a real
host, by its source address within the VPC.

The load generator is this script run as separate process(es) in the guest namespace
(`--client`, stdlib only, asyncio Protocols): P processes x C keep-alive connections in a closed
loop, each connection from one instance's address (rotated to the next instance whenever the
server closes it: after 100 requests, or after every token PUT, which closes by design). It
measures each request's latency from write to the last byte of the reply, and checks every answer
(the instance-id must be the source instance's own, a token must look like one, the identity
document must name the instance): the service is only fast if it is also right.

Rows:
1. baseline: a minimal asyncio HTTP server (asyncio streams, read a head, answer a fixed 200,
   same 100-request keep-alive budget) on 169.254.169.254:8080 beside the service (same
   namespace, address and device binding, made by the same router_listener()), loaded by the
   same client: (a) keep-alive, (b) one new connection per request. Baseline and kumo rows are
   interleaved over --repeat rounds (machine drift hits both) and the best round is shown.
2. kumo, the rate limit raised out of the way: GET meta-data/instance-id without a token
   (IMDSv1; the instances' http_tokens is "optional"), the same with an IMDSv2 token, PUT
   /latest/api/token (one connection per token, as the server closes after it; compare with
   baseline b), GET dynamic/instance-identity/document with a token.
   Server CPU per request: this process's CPU time (user+sys: the service's thread plus the
   kernel's work for its sockets) over every request the phase made; it does not depend on
   whether the client or the server was the bottleneck.
3. rate limit, the agent's default (RateLimiter(rate=50, burst=100) per instance): one instance
   hammers over C connections in a closed loop while --normal-instances other instances make
   paced IMDSv2 GETs (each on one keep-alive connection; latency from the send, or from the
   scheduled time when the previous request ran past it, so a stall is not hidden). The paced
   instances alone, then beside the hammering one, then beside it again with the limit raised
   out of the way (what the limit buys when the host's CPU is the shared
   resource). The bucket's bound (burst + rate x window) is checked against what the hammering
   instance was served.

Every phase is bounded in requests and in time and stops by itself; namespaces, the client
processes and the service are removed in `finally`, also on Ctrl-C or SIGTERM.

    .venv/bin/python bench/bench_metadata.py [--instances 50] [--clients 1] [--connections 8]
        [--seconds 5] [--repeat 2] [--max-requests 200000] [--limit-seconds 5]
        [--hammer-connections 8] [--normal-instances 5] [--paced-rate 20] [--smoke]

--smoke: 4 instances, 1 client x 2 connections, 1 round of 0.4 s per row, 1.5 s rate-limit
windows with 2 normal instances at 10/s. It prints the same lines; no timing judges any run, only the checks set the exit status, plus (in a
real run) the target that the other instance keeps 100 % success while one hammers.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SMOKE_HELP, exit_status, machine_note, percentile  # noqa: E402

PY = sys.executable
SCRIPT = str(Path(__file__).resolve())
MD_IP = "169.254.169.254"
ROUTER_IP = "10.20.1.1"
VNI = 1
VPC_ID = "vpc-0b3e5a1c2d4f60789"
SUBNET_ID = "subnet-0c4d2e6f8a1b3c5d7"
ACCOUNT = "123456789012"
AGENT_RATE, AGENT_BURST = 50.0, 100  # MetadataService's default RateLimiter
BASE_PORT = 8080  # the baseline listens beside the service (same address, device, namespace)

# -- the load generator (runs as its own process in the guest namespace; stdlib only) ------------

_CL = re.compile(rb"\r\nContent-Length: *([0-9]+)", re.I)


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        w = self.waiter
        if w is None or w.done():
            return
        i = self.buf.find(b"\r\n\r\n")
        if i < 0:
            return
        head = bytes(self.buf[:i + 2])
        m = _CL.search(head)
        end = i + 4 + (int(m.group(1)) if m else 0)
        if len(self.buf) < end:
            return
        body = bytes(self.buf[i + 4:end])
        del self.buf[:end]
        w.set_result((int(head[9:12]), body, b"\r\nConnection: close\r\n" in head))

    def connection_lost(self, exc) -> None:
        self.closed = True
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(EOFError(len(self.buf)))

    async def request(self, data: bytes, timeout: float):
        w = self.waiter = self.loop.create_future()
        self.transport.write(data)
        handle = self.loop.call_later(timeout, _expire, w)
        try:
            return await w
        finally:
            handle.cancel()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(w: asyncio.Future) -> None:
    if not w.done():
        w.set_exception(TimeoutError())


def _req(kind: str, token: str | None = None) -> bytes:
    path = {"v1": "/latest/meta-data/instance-id", "v2": "/latest/meta-data/instance-id",
            "identity": "/latest/dynamic/instance-identity/document",
            "token": "/latest/api/token"}[kind]
    lines = [f"{'PUT' if kind == 'token' else 'GET'} {path} HTTP/1.1", f"Host: {MD_IP}",
             "User-Agent: kumo-bench/1", "Accept: */*"]
    if kind == "token":
        lines += ["X-aws-ec2-metadata-token-ttl-seconds: 21600", "Connection: close"]
    elif token is not None:
        lines.append(f"X-aws-ec2-metadata-token: {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _good(check: str, iid: str, status: int, body: bytes) -> bool:
    if status != 200:
        return True  # counted by status, not as a wrong answer
    if check == "iid":
        return body == iid.encode()
    if check == "token":
        return len(body) == 54
    if check == "identity":
        return f'"instanceId" : "{iid}"'.encode() in body
    return body == b"ok"


async def _client(spec: dict) -> dict:
    loop = asyncio.get_running_loop()
    sources = [tuple(s) for s in spec["sources"]]
    kind, check, timeout = spec["kind"], spec["check"], spec["timeout"]
    made = {"requests": 0, "setup_requests": 0, "connects": 0, "retries": 0, "errors": 0,
            "wrong": 0}
    statuses: dict[str, int] = {}
    lat: list[float] = []

    async def connect(src: str) -> _Conn:
        made["connects"] += 1
        _, conn = await asyncio.wait_for(loop.create_connection(
            lambda: _Conn(loop), MD_IP, spec.get("port", 80), local_addr=(src, 0)), timeout)
        return conn

    # IMDSv2 kinds: one token per instance, fetched before the clock starts.
    reqs: dict[str, bytes] = {}
    for src, iid in sources:
        token = None
        if spec.get("token"):
            conn = await connect(src)
            status, body, _ = await conn.request(_req("token"), timeout)
            conn.close()
            made["setup_requests"] += 1
            if status != 200:
                raise SystemExit(f"token for {src}: HTTP {status}")
            token = body.decode()
        reqs[src] = _req(kind, token)

    delay = spec["start_at"] - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    clock = time.perf_counter
    t_start = clock()
    warm_end = t_start + spec["warmup"]
    end = t_start + spec["duration"]
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    budget = [spec["max_requests"]]
    last_done = [t_start]

    def record(t_sched: float, t1: float, status: int, ok: bool) -> None:
        made["requests"] += 1
        if t_sched >= warm_end:
            lat.append(t1 - t_sched)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            last_done[0] = t1
            if not ok:
                made["wrong"] += 1

    async def one(conn_box: list, src: str, iid: str, t_sched: float) -> None:
        for attempt in (0, 1):
            if conn_box[0] is None or conn_box[0].closed:
                conn_box[0] = await connect(src)
            try:
                status, body, close = await conn_box[0].request(reqs[src], timeout)
            except EOFError as e:
                conn_box[0] = None
                # The server closed an idle keep-alive connection before our request reached
                # it (nothing of a reply arrived): resend once on a new connection.
                if attempt == 0 and not e.args[0]:
                    made["retries"] += 1
                    continue
                raise
            if close:
                conn_box[0].close()
                conn_box[0] = None
            record(t_sched, clock(), status, _good(check, iid, status, body))
            return

    async def closed_loop(slot: int) -> None:
        box: list = [None]
        n = slot
        src, iid = sources[n % len(sources)]
        while clock() < end and budget[0] > 0:
            budget[0] -= 1
            if box[0] is None or box[0].closed:
                # a new connection: from the next instance of this slot's rotation
                n += spec["rotate"]
                src, iid = sources[n % len(sources)]
            t0 = clock()
            try:
                await one(box, src, iid, t0)
            except (OSError, EOFError, TimeoutError, asyncio.TimeoutError):
                made["errors"] += 1
                if box[0] is not None:
                    box[0].close()
                box[0] = None
        if box[0] is not None:
            box[0].close()

    async def paced(k: int) -> None:
        # One keep-alive connection per instance, each `rate`/s, phases staggered.
        box: list = [None]
        src, iid = sources[k]
        interval = 1.0 / spec["rate"]
        offset = interval * k / len(sources)
        i = 0
        while budget[0] > 0:
            t_sched = t_start + offset + i * interval
            if t_sched >= end:
                break
            i += 1
            budget[0] -= 1
            now = clock()
            if t_sched > now:
                # On time: latency counts from the actual send (not the timer's overshoot).
                await asyncio.sleep(t_sched - now)
                origin = clock()
            else:
                # The previous request ran past this one's slot: count from the scheduled
                # time, so a stall is not hidden (coordinated omission).
                origin = t_sched
            try:
                await one(box, src, iid, origin)
            except (OSError, EOFError, TimeoutError, asyncio.TimeoutError):
                made["errors"] += 1
                if t_sched >= warm_end:
                    statuses["error"] = statuses.get("error", 0) + 1
                if box[0] is not None:
                    box[0].close()
                box[0] = None
        if box[0] is not None:
            box[0].close()

    if spec["mode"] == "paced":
        await asyncio.gather(*(paced(k) for k in range(len(sources))))
    else:
        await asyncio.gather(*(closed_loop(k) for k in range(spec["connections"])))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return {**made, "statuses": statuses, "lat": lat,
            "window": max(1e-9, last_done[0] - warm_end),
            "elapsed": clock() - t_start,
            "cpu": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)}


def client_main(arg: str) -> None:
    spec = json.loads(arg)
    print(json.dumps(asyncio.run(_client(spec))), flush=True)


# -- the servers (this process, in the router namespace) -----------------------------------------

def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


class Bed:
    """The two namespaces and the veth between them; N instance addresses in the guest one."""

    def __init__(self, n: int) -> None:
        self.router = f"kumo-bmd-{os.getpid()}-r"
        self.guest = f"kumo-bmd-{os.getpid()}-g"
        self.addrs = [f"10.20.1.{10 + i}" for i in range(n)]
        self.made: list[str] = []

    def up(self) -> None:
        from agent.network import names
        self.device = names.link_name("r", VNI)
        for ns in (self.router, self.guest):
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
        r, g = self.router, self.guest
        sh("ip", "-n", r, "link", "add", self.device, "type", "veth", "peer", "name", "eth0",
           "netns", g)
        batches = {r: [f"addr add {ROUTER_IP}/24 dev {self.device}",
                       f"link set {self.device} up", "link set lo up"],
                   g: ["link set lo up", "link set eth0 up",
                       *[f"addr add {a}/24 dev eth0" for a in self.addrs],
                       f"route add default via {ROUTER_IP}"]}
        for ns, lines in batches.items():  # one `ip` process per namespace
            subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n",
                           text=True, check=True, timeout=60, capture_output=True)

    def down(self) -> None:
        for ns in reversed(self.made):
            sh("ip", "netns", "del", ns, check=False)
        self.made.clear()


def make_cloud(n: int, addrs: list[str]):
    """N instances as the controller would push them: specs with documents + signed identities,
    and the host's NetworkSpec (one VPC, the ports with their addresses)."""
    import base64
    from datetime import datetime, timedelta, timezone

    from agent.contract.metadata_v1 import (IdentitySigner, InstanceMetadata, SignedIdentity,
                                            identity_document)
    from agent.contract.v1 import InstanceSpec, NetworkSpec
    from agent.metadata.document import InstanceDocument

    ctl = IdentitySigner.generate()  # the controller's key; the agent never holds it
    specs: dict[str, InstanceSpec] = {}
    ids: list[str] = []
    t0 = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
    for i, ip in enumerate(addrs):
        iid = f"i-0{i + 1:016x}"
        ids.append(iid)
        mac = f"02:00:0a:14:01:{10 + i:02x}"
        pub = f"203.0.113.{10 + i}"
        host = f"ip-10-20-1-{10 + i}.kumo-1.compute.internal"
        doc = InstanceDocument.model_validate({
            "instance_id": iid, "ami_id": "ami-0a1b2c3d4e5f60718",
            "instance_type": ("t3.micro", "t3.small", "m5.large")[i % 3], "owner_id": ACCOUNT,
            "reservation_id": f"r-0{i + 1:016x}", "hostname": host, "local_hostname": host,
            "local_ipv4": ip, "public_ipv4": pub,
            "public_hostname": f"ec2-203-0-113-{10 + i}.kumo-1.compute.kumo.example",
            "availability_zone": "kumo-1a", "region": "kumo-1",
            "pending_time": t0 + timedelta(minutes=i),
            "interfaces": [{
                "mac": mac, "device_number": 0, "interface_id": f"eni-0{i + 1:016x}",
                "local_ipv4s": [ip], "public_ipv4s": [pub], "owner_id": ACCOUNT,
                "subnet_id": SUBNET_ID, "subnet_ipv4_cidr_block": "10.20.1.0/24",
                "vpc_id": VPC_ID, "vpc_ipv4_cidr_blocks": ["10.20.0.0/16"],
                "security_group_ids": ["sg-0a1b2c3d4e5f60001", "sg-0a1b2c3d4e5f60002"],
                "security_group_names": ["default", "web servers"]}],
            "block_device_mapping": {"ami": "/dev/xvda", "root": "/dev/xvda"},
            "public_keys": [{"name": "deploy", "openssh_key":
                             "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK9f0mXl0lQm8s7c2yq3rQm1q8s"
                             "V7m2fXcWqz1Jm3d0 deploy@kumo"}],
            "tags": {"Name": f"web-{i + 1}", "env": "prod", "team": "platform"},
            "metadata_options": {"http_tokens": "optional", "instance_metadata_tags": "enabled",
                                 "http_put_response_hop_limit": 1}})
        body = identity_document(doc)
        user_data = ("#cloud-config\nhostname: web-%d\npackage_update: false\nwrite_files:\n"
                     "  - path: /etc/app.conf\n    content: |\n%s" % (
                         i + 1, "".join(f"      key{k} = value-{k}-{'x' * 20}\n"
                                        for k in range(30)))).encode()
        specs[iid] = InstanceSpec.model_validate({
            "instance_id": iid, "generation": 1, "power": "running", "vcpus": 1,
            "memory_mib": 512, "root_disk_bytes": 8 << 30,
            "image": {"image_id": "ami-0a1b2c3d4e5f60718", "url": "/v1/images/x/file",
                      "sha256": "0" * 64, "virtual_size": 8 << 30},
            "hostname": f"web-{i + 1}", "user_data_b64": base64.b64encode(user_data).decode(),
            "metadata": InstanceMetadata(
                document=doc, identity=SignedIdentity(
                    document=body.decode(), signature=ctl.signature(body).decode(),
                    pkcs7=ctl.pkcs7(body).decode())).model_dump(mode="json")})
    net = NetworkSpec.model_validate({"generation": 1, "vpcs": [{
        "vpc_id": VPC_ID, "vni": VNI, "cidr": "10.20.0.0/16",
        "subnets": [{"subnet_id": SUBNET_ID, "cidr": "10.20.1.0/24", "router_ip": ROUTER_IP}],
        "ports": [{"port_id": iid, "mac": f"02:00:0a:14:01:{10 + i:02x}", "ip": ip,
                   "subnet_id": SUBNET_ID} for i, (iid, ip) in enumerate(zip(ids, addrs))]}]})
    return specs, net, ids


class Kumo:
    """The agent's metadata service, opened the way a network pass opens it."""

    def __init__(self, bed: Bed, specs, net, rate: float, burst: int) -> None:
        from agent.metadata.ratelimit import RateLimiter
        from agent.metadata.service import (Documents, MetadataService, PresignedSigner,
                                            metadata_subsystem)
        from agent.network.subsystems import PassContext
        signer = PresignedSigner()
        self.svc = MetadataService(Documents(specs.get, signer).get, signer,
                                   limiter=RateLimiter(rate=rate, burst=burst))
        try:
            sub = metadata_subsystem(self.svc, lambda vni: bed.router)
            error = sub.run(PassContext(net))
            if error is not None:
                raise RuntimeError(f"metadata subsystem: {error}")
        except BaseException:
            self.svc.close()
            raise

    def close(self) -> None:
        self.svc.close()


FIXED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
         b"Connection: keep-alive\r\n\r\nok")
FIXED_CLOSE = FIXED.replace(b"keep-alive", b"close")


class Baseline:
    """A minimal asyncio HTTP server: read a head, answer a fixed 200; the same listener socket
    (router_listener in the router namespace, bound to kr-000001), its own loop thread; the
    same 100-request keep-alive budget as the metadata server."""

    def __init__(self, bed: Bed) -> None:
        from agent.metadata.service import in_netns, router_listener
        from agent.netns import netns_path
        sock = in_netns(netns_path(bed.router),
                        lambda: router_listener(bed.device, port=BASE_PORT))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, sock=sock, limit=8192), self.loop).result(10)

    @staticmethod
    async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(100):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                close = b"\r\nConnection: close\r\n" in head
                writer.write(FIXED_CLOSE if close else FIXED)
                await writer.drain()
                if close:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()
        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


# -- the orchestration ------------------------------------------------------------------------

PROCS: list[subprocess.Popen] = []


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_clients(bed: Bed, specs: list[dict], bound: float) -> list[dict]:
    """Start one client process per spec in the guest namespace, together; their results."""
    start_at = time.time() + 1.0 + 0.05 * len(specs)
    procs = []
    for spec in specs:
        spec = {**spec, "start_at": start_at}
        p = subprocess.Popen(["ip", "netns", "exec", bed.guest, PY, SCRIPT, "--client",
                              json.dumps(spec)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        PROCS.append(p)
        procs.append(p)
    results = []
    deadline = start_at + bound
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.time()))
            if p.returncode != 0:
                raise RuntimeError(f"client exited {p.returncode}: {err[-2000:]}")
            results.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            PROCS.remove(p)
    return results


def merge(results: list[dict]) -> dict:
    m: dict = {"lat": [], "statuses": {}, "window": max(r["window"] for r in results),
               "cpu": sum(r["cpu"] for r in results),
               "elapsed": max(r["elapsed"] for r in results)}
    for key in ("requests", "setup_requests", "connects", "retries", "errors", "wrong"):
        m[key] = sum(r[key] for r in results)
    for r in results:
        m["lat"] += r["lat"]
        for s, c in r["statuses"].items():
            m["statuses"][s] = m["statuses"].get(s, 0) + c
    return m


ROWS = (  # name, request kind, answer check, IMDSv2 token, server
    ("baseline fixed 200, keep-alive", "v1", "fixed", False, "base"),
    ("baseline fixed 200, new conn per request", "token", "fixed", False, "base"),
    ("kumo GET instance-id, IMDSv1", "v1", "iid", False, "kumo"),
    ("kumo GET instance-id, IMDSv2 token", "v2", "iid", True, "kumo"),
    ("kumo PUT /latest/api/token", "token", "token", False, "kumo"),
    ("kumo GET identity document, token", "identity", "identity", True, "kumo"),
)


def rps(m: dict) -> float:
    return len(m["lat"]) / m["window"]


def us_per_request(m: dict) -> float:
    return m["server_cpu"] / max(1, m["requests"] + m["setup_requests"]) * 1e6


class Runner:
    def __init__(self, bed: Bed, ids: list[str], args) -> None:
        self.bed, self.ids, self.args = bed, ids, args
        self.sources = list(zip(bed.addrs, ids))
        self.checks: list[tuple[str, bool]] = []

    def throughput(self, kind: str, check: str, token: bool, port: int) -> dict:
        a = self.args
        specs = [{"mode": "closed", "kind": kind, "check": check, "token": token, "port": port,
                  "sources": self.sources[p * a.connections:] + self.sources[:p * a.connections],
                  "connections": a.connections, "rotate": a.connections * a.clients,
                  "duration": a.seconds, "warmup": a.warmup,
                  "max_requests": a.max_requests // a.clients, "timeout": 5.0}
                 for p in range(a.clients)]
        cpu0 = cpu_self()
        m = merge(run_clients(self.bed, specs, a.seconds + 60))
        m["server_cpu"] = cpu_self() - cpu0
        return m

    def check_row(self, name: str, m: dict) -> None:
        other = {s: c for s, c in m["statuses"].items() if s != "200"}
        ok = not other and not m["errors"] and not m["wrong"] and len(m["lat"]) > 0
        self.checks.append((name, ok))
        if not ok:
            print(f"  CHECK FAILED ({name}): statuses {m['statuses']}, errors {m['errors']}, "
                  f"wrong answers {m['wrong']}", flush=True)

    @staticmethod
    def row(name: str, m: dict, rounds: list[float]) -> None:
        lat = [x * 1000 for x in m["lat"]]
        spread = "/".join(f"{x:.0f}" for x in rounds)
        print(f"{name:<42} {rps(m):7.0f} {percentile(lat, 50):7.2f} {percentile(lat, 99):7.2f} "
              f"{us_per_request(m):7.0f} {100 * m['cpu'] / max(1e-9, m['elapsed']):6.0f} %  "
              f"{m['statuses'].get('200', 0):>6}/{len(lat):<6} {m['connects']:>6} "
              f"{m['retries']:>6}  {spread}", flush=True)

    def limit_window(self, hammer: bool) -> tuple[dict, dict | None]:
        """The paced instances (ids[1:1+k]) alone or beside the hammering one (ids[0])."""
        a = self.args
        normal = {"mode": "paced", "kind": "v2", "check": "iid", "token": True,
                  "sources": self.sources[1:1 + a.normal_instances], "connections": 1,
                  "rotate": 1, "rate": a.paced_rate, "duration": a.limit_seconds,
                  "warmup": 0.0, "timeout": 2.0,
                  "max_requests": int(a.paced_rate * a.limit_seconds + 1) * a.normal_instances}
        specs = [normal]
        if hammer:
            specs.append({"mode": "closed", "kind": "v1", "check": "iid", "token": False,
                          "sources": [self.sources[0]], "connections": a.hammer_connections,
                          "rotate": 0, "duration": a.limit_seconds, "warmup": 0.0,
                          "max_requests": a.max_requests, "timeout": 5.0})
        cpu0 = cpu_self()
        res = run_clients(self.bed, specs, a.limit_seconds + 60)
        cpu = cpu_self() - cpu0
        made = sum(x["requests"] + x["setup_requests"] for x in res)
        for x in res:
            x["server_cpu_per_request"] = cpu / max(1, made)
            x["server_cpu_share"] = cpu / max(1e-9, x["elapsed"])
        return res[0], (res[1] if hammer else None)


def paced_line(label: str, m: dict) -> bool:
    lat = [x * 1000 for x in m["lat"]]
    attempts = sum(m["statuses"].values())
    ok = m["statuses"].get("200", 0) - m["wrong"]
    print(f"    {label:<46} p50 {percentile(lat, 50):6.2f} ms  p99 {percentile(lat, 99):6.2f} ms"
          f"  max {max(lat, default=float('nan')):6.2f} ms  success {ok}/{attempts} "
          f"({100 * ok / max(1, attempts):.1f} %)", flush=True)
    return attempts > 0 and ok == attempts


def hammer_line(label: str, h: dict, rate: float | None, burst: int | None) -> bool:
    served = h["statuses"].get("200", 0)
    refused = h["statuses"].get("429", 0)
    other = {s: c for s, c in h["statuses"].items() if s not in ("200", "429")}
    text = (f"    {label}: {h['requests']} requests in {h['elapsed']:.2f} s "
            f"({h['requests'] / h['elapsed']:.0f}/s): served {served}, refused 429 {refused}; "
            f"server CPU {h['server_cpu_per_request'] * 1e6:.0f} us/request, "
            f"{100 * h['server_cpu_share']:.0f} % of a CPU")
    ok = not other and not h["wrong"] and not h["errors"]
    if rate is not None:
        bound = burst + rate * (h["elapsed"] + 0.5)
        ok = ok and served <= bound and refused > 0
        text += (f"; the bucket allows at most {burst} + {rate:.0f}/s x {h['elapsed']:.2f} s "
                 f"(+0.5 s slack) = {bound:.0f}: {'ok' if served <= bound else 'EXCEEDED'}")
    print(text + ("" if ok else f"  CHECK FAILED: {h['statuses']}, errors {h['errors']}, "
                  f"wrong {h['wrong']}"), flush=True)
    return ok


def bench(args) -> int:
    bed = Bed(args.instances)
    kumo = base = None
    try:
        print(f"metadata service benchmark; {machine_note()}", flush=True)
        t = time.monotonic()
        bed.up()
        specs, net, ids = make_cloud(args.instances, bed.addrs)
        doc_sizes = [len(s.metadata.document.model_dump_json()) for s in specs.values()]
        print(f"namespaces {bed.router} (VPC router: {MD_IP}/32 on lo, listeners bound to "
              f"{bed.device}) and {bed.guest} ({args.instances} instance addresses "
              f"{bed.addrs[0]}..{bed.addrs[-1]} behind a veth); {args.instances} instances, "
              f"documents ~{sum(doc_sizes) // len(doc_sizes)} bytes of JSON + ~1.5 KiB "
              f"user-data, identity signed by a controller key; set-up {time.monotonic() - t:.1f} s",
              flush=True)
        print(f"load: {args.clients} client process(es) x {args.connections} keep-alive "
              f"connections, closed loop, one instance per connection (next instance on "
              f"reconnect), in {bed.guest}; {args.seconds:g} s per row ({args.warmup:g} s "
              f"warm-up not counted) or {args.max_requests} requests; {os.cpu_count()} CPUs "
              f"shared by the server and the clients", flush=True)
        print(f"servers: kumo = the agent's MetadataService on {MD_IP}:80, rate limit raised "
              f"out of the way; baseline = a minimal asyncio HTTP server (fixed 200) on "
              f"{MD_IP}:{BASE_PORT}, same namespace and device; rows interleaved, "
              f"{args.repeat} round(s), the round with the most req/s shown")
        r = Runner(bed, ids, args)
        base = Baseline(bed)
        kumo = Kumo(bed, specs, net, rate=1e9, burst=10**9)
        results: dict[str, list[dict]] = {name: [] for name, *_ in ROWS}
        for _ in range(args.repeat):
            for name, kind, check, token, server in ROWS:
                m = r.throughput(kind, check, token, BASE_PORT if server == "base" else 80)
                r.check_row(name, m)
                results[name].append(m)
        base.close()
        base = None
        print(f"\n{'':<42} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'srv us':>7} "
              f"{'client':>8}  {'200/n':>13} {'conns':>6} {'resent':>6}  req/s by round")
        best = {}
        for name, *_ in ROWS:
            best[name] = max(results[name], key=rps)
            r.row(name, best[name], [rps(m) for m in results[name]])
        bk, bn = best[ROWS[0][0]], best[ROWS[1][0]]
        v1, v2, tok, ident = (best[ROWS[i][0]] for i in (2, 3, 4, 5))
        print("(srv us: this process's CPU time per request, user+sys; client: the load "
              "generator's CPU, % of one CPU; resent: requests resent once on a new connection "
              "after the server closed a keep-alive one)")
        print(f"kumo/baseline req/s: IMDSv1 {rps(v1) / rps(bk):.2f}x, IMDSv2 "
              f"{rps(v2) / rps(bk):.2f}x, identity {rps(ident) / rps(bk):.2f}x (vs keep-alive); "
              f"token PUT {rps(tok) / rps(bn):.2f}x (vs new conn per request)")
        print(f"server CPU per request above the baseline: IMDSv1 "
              f"+{us_per_request(v1) - us_per_request(bk):.0f} us, IMDSv2 "
              f"+{us_per_request(v2) - us_per_request(bk):.0f} us, identity "
              f"+{us_per_request(ident) - us_per_request(bk):.0f} us, token PUT "
              f"+{us_per_request(tok) - us_per_request(bn):.0f} us")
        wrong = sum(m["wrong"] for ms_ in results.values() for m in ms_)
        print(f"wrong answers (not the source instance's own): {wrong}", flush=True)

        # -- the rate limit ------------------------------------------------------------------
        normal = ids[1:1 + args.normal_instances]
        print(f"\nrate limit: hammering instance {ids[0]} ({bed.addrs[0]}, "
              f"{args.hammer_connections} connections, closed loop, IMDSv1 GETs) beside "
              f"{len(normal)} normal instance(s) {ids[1]}.. ({args.paced_rate:g} IMDSv2 GETs/s "
              f"each on one keep-alive connection; latency from the send, or from the "
              f"scheduled time when the previous request ran late); {args.limit_seconds:g} s "
              f"windows")
        print("  limit raised out of the way (the same service as above)", flush=True)
        p_nolimit, h_nolimit = r.limit_window(True)
        hammer_line("hammering instance", h_nolimit, None, None)
        kumo.close()
        kumo = Kumo(bed, specs, net, rate=AGENT_RATE, burst=AGENT_BURST)
        print(f"  the agent's default limit: {AGENT_RATE:g} requests/s per instance, burst "
              f"{AGENT_BURST} (a fresh service)", flush=True)
        p_alone, _ = r.limit_window(False)
        p_hammer, h_limit = r.limit_window(True)
        r.checks.append(("rate limit bound",
                         hammer_line("hammering instance", h_limit, AGENT_RATE, AGENT_BURST)))
        print(f"  normal instances ({len(normal)} x {args.paced_rate:g}/s):")
        alone_ok = paced_line("alone (default limit)", p_alone)
        limited_ok = paced_line("while one hammers, default limit", p_hammer)
        paced_line("while one hammers, limit out of the way", p_nolimit)
        r.checks.append(("normal instances alone: 100 % success", alone_ok))
        kumo.close()
        kumo = None

        checks_ok = all(ok for _, ok in r.checks)
        failed = sorted({name for name, ok in r.checks if not ok})
        print(f"\nchecks (every answer 200 and the instance's own, no errors; bucket bound; "
              f"normal instances served alone): {'all ok' if checks_ok else 'FAILED: ' + ', '.join(failed)}")
        print(f"target: the other instances keep 100 % success while one hammers past its "
              f"limit: {'PASS' if limited_ok else 'FAIL'}", flush=True)
        return exit_status(checks_ok, limited_ok, args.smoke)
    finally:
        for p in list(PROCS):
            if p.poll() is None:
                p.kill()
                p.wait()
        for thing in (kumo, base):
            if thing is not None:
                try:
                    thing.close()
                except Exception as e:  # clean-up goes on
                    print(f"clean-up: {e}", file=sys.stderr)
        bed.down()


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--client":
        client_main(sys.argv[2])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=50)
    ap.add_argument("--clients", type=int, default=1, help="load generator processes")
    ap.add_argument("--connections", type=int, default=8, help="connections per process")
    ap.add_argument("--seconds", type=float, default=5.0, help="per throughput row")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=2, help="rounds of the throughput rows")
    ap.add_argument("--max-requests", type=int, default=200_000, help="per row, all clients")
    ap.add_argument("--limit-seconds", type=float, default=5.0, help="per rate-limit window")
    ap.add_argument("--hammer-connections", type=int, default=8)
    ap.add_argument("--normal-instances", type=int, default=5)
    ap.add_argument("--paced-rate", type=float, default=20.0,
                    help="each normal instance's requests/s (below its limit)")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = ap.parse_args()
    if args.smoke:
        args.instances, args.clients, args.connections, args.repeat = 4, 1, 2, 1
        args.seconds, args.warmup, args.max_requests = 0.4, 0.1, 20000
        args.limit_seconds, args.hammer_connections = 1.5, 2
        args.normal_instances, args.paced_rate = 2, 10.0
    if not 2 <= args.instances <= 200 or not 1 <= args.normal_instances < args.instances:
        ap.error("--instances: 2..200; --normal-instances: 1..instances-1")
    if os.geteuid() != 0:
        sys.exit("this benchmark needs root (network namespaces)")

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in background
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
