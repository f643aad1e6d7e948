"""The NBD storage node (agent/storage_node) for lab tests, two ways:

- the lab's own storage node (`kumo lab up` runs it in {prefix}-sn at 100.64.0.250): a lab of the
  test's own with the storage node and no controller (`storage_lab`: the lab's controller owns the
  node's volumes and deletes every one it does not know of, so a test driving the node's API itself
  must not share a lab with one), a client for its storage_v1 API on its unix socket, a volume made
  through that API and always deleted again (checked: no file, no export), and where its daemon
  keeps its pid;
- a bare NbdBackend: a qemu-storage-daemon under the supervisor inside a network namespace the
  test creates and wires itself (nothing in the machine's own namespace). On the way out the
  daemon is stopped, the namespace deleted and the state dir removed, and all of it is checked.

Plus qemu-io/qemu-img over NBD from inside a lab namespace.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from agent import netns
from agent.contract import transport
from agent.contract.storage_v1 import VolumeObserved
from agent.drivers.base import NetworkHost, NetworkSource
from agent.storage_node.backend import NbdBackend
from agent.supervisor import pid_alive
from lab import Lab, network, procs, services
from lab import naming as nm
from lab.testing import ns_run, unique_prefix
from lab.testing import skip_reason as lab_skip_reason


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "nsenter", "qemu-storage-daemon", "qemu-io", "qemu-img"):
        if shutil.which(tool) is None:
            return f"{tool} missing"
    return None


def ip(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """`ip -n ns ...`: always inside a namespace the test or the lab made."""
    return subprocess.run(["ip", "-n", ns, *argv], check=check, capture_output=True, text=True)


@contextlib.contextmanager
def backend_in_netns(ns: str, state: Path, addr: str, port: int, wire: Callable[[str], None],
                     unwire: Callable[[], None], pids: list[int],
                     **backend_kw) -> Iterator[NbdBackend]:
    """An NbdBackend (state dir `state`) serving on addr:port inside the new namespace `ns`,
    which `wire(ns)` connects (its loopback is up already); `unwire()` undoes what wire made
    outside `ns`. On the way out the daemon's pid is appended to `pids`, the daemon stopped,
    unwire() run, the namespace deleted and `state` removed; checking that is the caller's."""
    subprocess.run(["ip", "netns", "add", ns], check=True)
    backend = None
    try:
        ip(ns, "link", "set", "lo", "up")
        wire(ns)
        backend = NbdBackend(state, addr, port, netns=ns, **backend_kw)
        yield backend
    finally:
        try:
            if backend is not None:
                pids.extend(backend.daemon_pids())
                backend.stop()
        finally:
            try:
                unwire()
            finally:
                subprocess.run(["ip", "netns", "del", ns], check=False)
                shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def storage_node(ns: str, addr: str, port: int, wire: Callable[[str], None],
                 unwire: Callable[[], None] = lambda: None
                 ) -> Iterator[tuple[NbdBackend, Path, list[int]]]:
    """(backend, state dir, pids) of an NbdBackend serving on addr:port inside the new namespace
    `ns`, which `wire(ns)` connects (its loopback is up already); `unwire()` undoes what wire
    made outside `ns`. Append the PIDs of daemons you kill to `pids`: none may survive."""
    state = Path(tempfile.mkdtemp(prefix="kumo-nbd-"))
    pids: list[int] = []
    with backend_in_netns(ns, state, addr, port, wire, unwire, pids,
                          max_size=1 << 30) as backend:
        yield backend, state, pids
    assert not [p for p in pids if pid_alive(p)], "a daemon survived"
    assert not netns.is_live(ns) and not os.path.exists(netns.netns_path(ns))
    assert not state.exists()


def nbd_url(addr: str, port: int, volume_id: str) -> str:
    return f"nbd://{addr}:{port}/{volume_id}"


def qemu_io(ns: str, url: str, command: str) -> subprocess.CompletedProcess:
    return ns_run(ns, "qemu-io", "-f", "raw", url, "-c", command, check=False, timeout=15)


# -- the lab's storage node ------------------------------------------------------------------
@contextlib.contextmanager
def storage_lab(hosts: int) -> Iterator[Lab]:
    """A lab of its own (unique prefix, temporary state dir): network, libvirtds and the storage
    node, no controller or agents. Always torn down; then checked: no namespace of it, neither
    the storage node nor its qemu-storage-daemon left running."""
    state = Path(tempfile.mkdtemp(prefix="kumo-slab-"))
    state.chmod(0o755)  # like the session lab's: libvirt's qemu must traverse it
    lab = Lab(state, prefix=unique_prefix(), start_services="storage", bootstrap=False)
    seen: dict[int, int] = {}  # pid -> start time of every node and daemon this lab ran

    def note() -> None:
        for pid in (lab.status().storage.service.pid, *daemon_pids(lab)):
            t = procs.start_time(pid) if pid else None
            if t is not None:
                seen[pid] = t

    try:
        st = lab.up(hosts=hosts)
        assert st.ok and st.storage.service.answering, st.to_text()
        note()
        yield lab
        note()
    finally:
        try:
            lab.down()
        finally:
            shutil.rmtree(state, ignore_errors=True)
    pattern = nm.all_netns_pattern(lab.prefix)
    assert not [n for n in network.list_netns() if pattern.match(n)]
    assert not [p for p, t in seen.items() if procs.start_time(p) == t], "a storage process survived"


def storage_lab_fixture(hosts: int = 2, tls: bool = False):
    """A module's storage-only lab fixture (`slab = storage_lab_fixture()`): storage_lab(hosts)
    for the whole module, skipped where this machine cannot run one. `tls`: per-host NBD over
    TLS whatever KUMO_LAB_STORAGE_TLS says (the modules that test TLS itself)."""
    @pytest.fixture(scope="module")
    def slab():
        reason = skip_reason() or lab_skip_reason()
        if reason:
            pytest.skip(reason)
        with pytest.MonkeyPatch.context() as mp:
            if tls:
                mp.setenv("KUMO_LAB_STORAGE_TLS", "1")
            with storage_lab(hosts=hosts) as the_lab:
                yield the_lab
    return slab


def lab_storage_client(lab) -> httpx.Client:
    """A client for the lab's storage node API (storage_v1): with the lab's agent token, or,
    when the node serves its API over mutual TLS (KUMO_LAB_STORAGE_TLS=1), with the lab
    controller's certificate (made now, as the controller would, when it has not run)."""
    from lab import libvirtd

    if libvirtd.nbd_tls_enabled():
        from agent.contract import tls
        from controller.services import cloud_ca

        cdir = services.controller_dir(lab.state_dir)
        ctx = tls.client_context(cloud_ca.load(cdir).cert_pem,
                                 str(cloud_ca.controller_certificate(cdir)),
                                 peer_uri=tls.ANY_STORAGE)
        return transport.client(services.storage_url(lab.state_dir), timeout=30, tls=ctx)
    token = services.ensure_token(lab.state_dir)
    return transport.client(services.storage_url(lab.state_dir), token, timeout=30)


def host_nbd_identity(lab, hid: str) -> Path:
    """Host `hid`'s certificate from the lab's cloud CA, stored as its agent stores it (a
    storage-only lab runs no agents): the NBD copies in QEMU's names, in the directory the
    lab's qemu.conf points libvirt at (returned), which qemu-io's tls-creds-x509 takes too."""
    from agent.identity import AgentIdentity, make_csr, new_key
    from controller.services import cloud_ca
    from lab import libvirtd

    ca = cloud_ca.load(services.controller_dir(lab.state_dir))
    key = new_key()
    issued = ca.issue_host(make_csr(key, hid), hid)
    ident = AgentIdentity(services.agent_state_dir(lab.state_dir, hid), hid)
    ident._store(key, {"certificate": issued.pem.decode(), "ca_certificate": ca.cert_pem.decode(),
                       "serial": issued.serial})
    assert ident.nbd_dir == libvirtd.HostPaths(lab.state_dir / "hosts" / hid).nbd_tls_dir
    return ident.nbd_dir


def volume_file(lab, volume_id: str) -> Path:
    return services.storage_dir(lab.state_dir) / "volumes" / f"{volume_id}.qcow2"


def daemon_pid(lab) -> int | None:
    """The pid in the lab storage node's qemu-storage-daemon pid file (None: none written)."""
    try:
        return int((services.storage_dir(lab.state_dir) / "qsd.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def daemon_pids(lab) -> list[int]:
    """daemon_pid, and the pids of the per-host daemons (hosts/<host id>/qsd.pid) of a node
    serving NBD over TLS per host."""
    out = [p] if (p := daemon_pid(lab)) is not None else []
    for f in sorted((services.storage_dir(lab.state_dir) / "hosts").glob("*/qsd.pid")):
        with contextlib.suppress(ValueError, OSError):
            out.append(int(f.read_text().strip()))
    return out


def nbd_source(obs: VolumeObserved) -> NetworkSource:
    """The source a host's DomainDisk attaches, from what the storage node answered."""
    assert obs.exported and obs.source is not None, obs
    src = obs.source
    return NetworkSource("nbd", src.export, (NetworkHost(src.host, src.port),))


@contextlib.contextmanager
def lab_volume(lab, client: httpx.Client, volume_id: str, size_bytes: int,
               exported: bool = True, host: str | None = None) -> Iterator[VolumeObserved]:
    """A volume on the lab's storage node, made with PUT (exported for `host`: a node serving
    NBD over TLS refuses an export without one); on the way out it is deleted with DELETE
    (detach it from every guest first) and checked gone: no volume, no file, no export."""
    body = {"volume_id": volume_id, "size_bytes": size_bytes, "exported": exported}
    if host is not None:
        body["host"] = host
    r = client.put(f"/v1/volumes/{volume_id}", json=body)
    assert r.status_code == 200, r.text
    try:
        yield VolumeObserved.model_validate(r.json())
    finally:
        r = client.delete(f"/v1/volumes/{volume_id}")
        assert r.status_code == 204, r.text
        assert client.get(f"/v1/volumes/{volume_id}").status_code == 404
        assert volume_id not in [v["volume_id"] for v in client.get("/v1/volumes").json()]
        assert not volume_file(lab, volume_id).exists()


@contextlib.contextmanager
def qemu_io_session(argv: list[str], *, ended_is_refusal: bool,
                    failure_words: tuple[str, ...] = ("failed",)) -> Iterator[Callable[[], bool]]:
    """An interactive qemu-io (`argv`, e.g. `ip netns exec NS qemu-io -f raw URL`) holding its
    image open for the `with` block: contract.Connected's probe. The yielded `works()` writes
    512 bytes and says whether qemu-io reported them written; `works.last_words(cmds)` sends
    commands, ends qemu-io and returns all it printed since. A qemu-io that has ended counts as
    refusing when `ended_is_refusal` (a client the backend may cut off by ending it), else it
    fails the test (a probe must not pass because its client died). The first read proves the
    connection is up before the check goes on."""
    import queue
    import threading
    import time
    client = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in client.stdout], daemon=True)
    reader.start()

    def run(command: str, success: str) -> bool:
        if client.poll() is not None:
            assert ended_is_refusal, "qemu-io ended"
            return False
        client.stdin.write(command + "\n")
        client.stdin.flush()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                if ended_is_refusal and client.poll() is not None:
                    return False
                continue
            if success in line:
                return True
            if any(w in line.lower() for w in failure_words):
                return False
        raise AssertionError(f"qemu-io did not answer {command!r} within 15 s")

    def works() -> bool:
        return run("write -P 0x5a 0 512", "wrote 512/512")

    def last_words(commands: str) -> str:
        time.sleep(0.2)
        while not lines.empty():  # what earlier commands printed
            lines.get_nowait()
        client.stdin.write(commands)
        client.stdin.close()
        client.wait(15)
        reader.join(5)
        return "".join(lines.queue)
    works.last_words = last_words  # type: ignore[attr-defined]
    try:
        assert run("read 0 512", "read 512/512"), "qemu-io could not read the image"
        yield works
    finally:
        with contextlib.suppress(BrokenPipeError, OSError):
            client.stdin.close()
        try:
            client.wait(10)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait(5)
        reader.join(5)
