"""Per-host storage access (issue 14, docs/security.md "Storage access"), the pure parts: the
per-host daemon's TLS argv and NBD server arguments, the persisted export hosts and host ports,
the NbdBackend's refusals in TLS mode, the contract's `host` field, the controller's spec, the
storage node's certificate, the agent's NBD copies of its identity and the lab's qemu.conf.
The real thing (qemu-storage-daemon, qemu-io over TLS) is tests/lab/test_nbd_tls_lab.py.
"""
from __future__ import annotations

import ipaddress
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from pydantic import ValidationError

from agent.contract import tls
from agent.contract.storage_v1 import EXTENSIONS, VolumeSpec
from agent.drivers.base import DriverError
from agent.drivers.fake_volumes import FakeVolumeBackend
from agent.identity import AgentIdentity, make_csr, new_key
from agent.storage_node.app import create_storage_app
from agent.storage_node.backend import HostPorts, NbdBackend
from agent.storage_node.daemon import NbdTls, StorageDaemon
from agent.storage_node.settings import StorageSettings
from agent.storage_node.wanted import WantedExports
from controller.errors import InvalidParameter
from controller.services import cloud_ca
from controller.volume_sync import desired_spec
from lab import libvirtd
from lab.errors import LabError

V1 = "vol-0000000000000c001"
MiB = 1 << 20


class _Q:
    """Records QMP commands."""

    def __init__(self):
        self.calls = []

    def execute(self, cmd, args=None):
        self.calls.append((cmd, args))


def test_tls_daemon_argv_and_nbd_server(tmp_path):
    creds = tmp_path / "tls"
    d = StorageDaemon(tmp_path / "h1", "198.51.100.7", 10810, tls=NbdTls(creds, "CN=h1"))
    argv = d.child.spec.argv
    assert argv[-4:] == ("--object", f"tls-creds-x509,id=tls0,endpoint=server,verify-peer=on,"
                                     f"dir={creds}",
                         "--object", "authz-simple,id=authz0,identity=CN=h1")
    q = _Q()
    d.start_nbd_server(q)
    assert q.calls == [("nbd-server-start", {
        "addr": {"type": "inet", "data": {"host": "198.51.100.7", "port": "10810"}},
        "tls-creds": "tls0", "tls-authz": "authz0"})]
    plain = StorageDaemon(tmp_path / "p", "198.51.100.7", 10809)
    q = _Q()
    plain.start_nbd_server(q)
    assert "tls-creds" not in q.calls[0][1]
    for bad in ("CN=h1,O=x", "CN=H1", "h1", "CN=h1\nx"):
        with pytest.raises(ValueError):
            StorageDaemon(tmp_path / "x", "198.51.100.7", 10810, tls=NbdTls(creds, bad))
    with pytest.raises(ValueError):
        StorageDaemon(tmp_path / "x", "198.51.100.7", 10810, tls=NbdTls(tmp_path / "a,b", "CN=h1"))


def test_wanted_exports_keep_hosts_and_read_old_files(tmp_path):
    w = WantedExports(tmp_path / "exports.json")
    w.add(V1, "h1")
    w.add("vol-0000000000000c002")
    assert w.load_hosts() == {V1: "h1", "vol-0000000000000c002": ""}
    w.add(V1, "h2")
    assert w.load_hosts()[V1] == "h2"
    (tmp_path / "exports.json").write_text(json.dumps({"exports": [V1]}))  # before hosts
    assert w.load_hosts() == {V1: ""}
    (tmp_path / "exports.json").write_text(json.dumps(
        {"exports": [V1, "vol-0000000000000c002"], "hosts": {V1: "H;1"}}))
    assert w.load_hosts() == {"vol-0000000000000c002": ""}  # a bad host is dropped


def test_host_ports_are_kept_and_never_shared(tmp_path):
    p = HostPorts(tmp_path / "hosts.json", 10809)
    assert [p.port("h1"), p.port("h2"), p.port("h1")] == [10809, 10810, 10809]
    assert HostPorts(tmp_path / "hosts.json", 10809).load() == {"h1": 10809, "h2": 10810}


def test_tls_backend_needs_a_host_and_serves_each_on_its_own_port(tmp_path):
    b = NbdBackend(tmp_path, "198.51.100.7", 10809, tls_dir=tmp_path / "tls")
    assert b.daemon is None
    with pytest.raises(DriverError) as e:
        b.export(V1)
    assert e.value.code == "HostRequired" and not e.value.retryable
    with pytest.raises(DriverError) as e:
        b.export(V1, host="../h1")
    assert e.value.code == "InvalidParameterValue"
    d1, d2 = b.daemon_for("h1"), b.daemon_for("h2")
    assert d1.tls == NbdTls(tmp_path / "tls", "CN=h1") and d1.listen.port == 10809
    assert d2.tls.client_dn == "CN=h2" and d2.listen.port == 10810
    assert d1.state_dir == tmp_path / "hosts" / "h1"
    assert b.source(V1, {}, "h2").hosts[0].port == 10810
    assert b.daemon_pids() == []  # nothing started by merely naming them


def test_contract_host_is_optional_and_checked():
    base = {"volume_id": V1, "size_bytes": 8 * MiB, "exported": True}
    assert "host" not in VolumeSpec(**base).model_dump()
    assert VolumeSpec(**base, host="h1").model_dump()["host"] == "h1"
    for bad in ("H1", "h1;", "", "-h"):
        with pytest.raises(ValidationError):
            VolumeSpec(**base, host=bad)
    assert "export-host" in EXTENSIONS


def test_app_passes_the_host_to_the_backend():
    seen = []

    class Recording(FakeVolumeBackend):
        def export(self, volume_id, host=None):
            seen.append(host)
            return super().export(volume_id, host)

    app = create_storage_app(Recording(host="100.64.0.250", port=10809), node_id="sn1",
                             token="t", ensure_interval=60)
    with TestClient(app, headers={"Authorization": "Bearer t"}) as c:
        body = {"volume_id": V1, "size_bytes": 8 * MiB, "exported": True}
        assert c.put(f"/v1/volumes/{V1}", json={**body, "host": "h2"}).status_code == 200
        assert c.put(f"/v1/volumes/{V1}", json=body).status_code == 200
        r = c.put(f"/v1/volumes/{V1}", json={**body, "host": "H2"})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "InvalidParameterValue")
    assert seen == ["h2", None]


def test_controller_sends_the_attached_instance_host():
    from controller.models import Volume, VolumeAttachmentRow
    from controller.ids import utcnow

    vol = Volume(volume_id=V1, account_id="a", size_gib=1, state="in-use",
                 availability_zone="az1")
    att = VolumeAttachmentRow(volume_id=V1, instance_id="i-1", device="/dev/sdf",
                              state="attached", attach_time=utcnow())
    assert desired_spec(vol, att, "h1").host == "h1"
    assert desired_spec(vol, None, "h1").host is None  # never with an unexport
    att.state, att.force_detach = "detaching", True
    assert desired_spec(vol, att, "h1").host is None


def test_storage_node_certificate(tmp_path):
    issued = cloud_ca.storage_node_files(tmp_path / "ctl", "sn1", ["100.64.0.250"],
                                         tmp_path / "out")
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"ca-cert.pem", "server-cert.pem",
                                               "server-key.pem"}
    assert (out / "server-key.pem").stat().st_mode & 0o077 == 0
    cert = x509.load_pem_x509_certificate((out / "server-cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("100.64.0.250")]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["kumo:storage:sn1"]
    who = tls.identity(cert)  # no host, no controller: opens nothing else
    assert (who.kind, who.host_id, who.node_id) == ("storage", None, "sn1")
    key = serialization.load_pem_private_key((out / "server-key.pem").read_bytes(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    assert issued.certificate.issuer == cloud_ca.load(tmp_path / "ctl").cert.subject
    for node, addrs in (("SN1", ["100.64.0.250"]), ("sn1", ["not-an-ip"]), ("sn1", [])):
        with pytest.raises(InvalidParameter):
            cloud_ca.storage_node_files(tmp_path / "ctl", node, addrs, tmp_path / "bad")
    s = StorageSettings(backend="nbd", nbd_host="100.64.0.250", nbd_tls_dir=out)
    assert s.nbd_tls_dir == out
    with pytest.raises(ValidationError):
        StorageSettings(backend="nbd", nbd_host="100.64.0.250", nbd_tls_dir=tmp_path / "ctl")


def test_agent_identity_keeps_qemu_copies(tmp_path):
    ca = cloud_ca.load(tmp_path / "ctl")
    ident = AgentIdentity(tmp_path / "agent", "h1")
    assert not ident.write_nbd_files()  # no identity yet: nothing
    key = new_key()
    issued = ca.issue_host(make_csr(key, "h1"), "h1")
    ident._store(key, {"certificate": issued.pem.decode(), "ca_certificate": ca.cert_pem.decode()})
    d = ident.nbd_dir
    assert (d / "ca-cert.pem").read_bytes() == ca.cert_pem
    assert (d / "client-cert.pem").read_bytes() == issued.pem
    k = serialization.load_pem_private_key((d / "client-key.pem").read_bytes(), None)
    assert k.public_key().public_numbers() == key.public_key().public_numbers()
    st = (d / "client-key.pem").stat()
    assert st.st_mode & 0o007 == 0  # never the world's
    if st.st_mode & 0o070:  # readable by the group QEMU runs with, and that group only
        import grp
        assert grp.getgrgid(st.st_gid).gr_name == "libvirt-qemu"
    assert (tmp_path / "agent" / "tls" / "host.pem").stat().st_mode & 0o077 == 0
    assert not ident.write_nbd_files()  # up to date
    (d / "client-key.pem").unlink()
    assert ident.write_nbd_files()


def test_lab_qemu_conf_nbd_tls(tmp_path, monkeypatch):
    paths = libvirtd.HostPaths(tmp_path / "hosts" / "h1")
    monkeypatch.delenv("KUMO_LAB_STORAGE_TLS", raising=False)  # the default: on
    conf = libvirtd.qemu_conf(paths)
    assert conf["nbd_tls"] is True
    assert conf["nbd_tls_x509_cert_dir"] == str(tmp_path / "hosts/h1/agent/tls/nbd")
    assert 'nbd_tls = 1' in libvirtd.render_conf(conf)
    monkeypatch.setenv("KUMO_LAB_STORAGE_TLS", "0")  # the explicit opt-out
    assert 'nbd_tls = 0' in libvirtd.render_conf(libvirtd.qemu_conf(paths))
    monkeypatch.setenv("KUMO_LAB_STORAGE_TLS", "yes")
    with pytest.raises(LabError):
        libvirtd.qemu_conf(paths)


def _pem_pair(ca, tmp_path, name, node=False):
    """key + certificate file for a host (CN name) or (node=True) a storage node."""
    key = new_key()
    if node:
        issued = ca.sign(key.public_key(), f"kumo-storage-{name}", tls.storage_uri(name),
                         ips=("127.0.0.1",))
    else:
        issued = ca.issue_host(make_csr(key, name), name)
    path = tmp_path / f"{name}.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()) + issued.pem)
    return path


def _handshake(server_ctx, client_ctx) -> None:
    import socket
    import threading

    a, b = socket.socketpair()
    errors = []

    def serve():
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                s.recv(1)
        except Exception as e:  # the client's refusal shows here as a closed connection
            errors.append(e)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b) as c:
            c.sendall(b"x")
    finally:
        b.close()
        t.join(5)


def test_the_controller_reaches_only_a_storage_node(tmp_path):
    ca = cloud_ca.load(tmp_path / "ctl")
    ctl = cloud_ca.controller_certificate(tmp_path / "ctl")
    node = _pem_pair(ca, tmp_path, "sn1", node=True)
    host = _pem_pair(ca, tmp_path, "h1")
    to_storage = tls.client_context(ca.cert_pem, str(ctl), peer_uri=tls.ANY_STORAGE)
    _handshake(tls.server_context(ca.cert_pem, str(node)), to_storage)
    with pytest.raises(tls.PeerMismatch):  # a host answering in the node's place
        _handshake(tls.server_context(ca.cert_pem, str(host)), to_storage)
    with pytest.raises(tls.PeerMismatch):  # the node is not the controller
        _handshake(tls.server_context(ca.cert_pem, str(node)),
                   tls.client_context(ca.cert_pem, str(host), peer_uri=tls.CONTROLLER_URI))


def test_storage_client_with_tls_sends_no_token(tmp_path):
    from controller.storage import StorageClient

    seen = []
    StorageClient("unix:/x.sock", "tok", 5, lambda u, t, to: seen.append(t) or object(),
                  tls=object())
    StorageClient("unix:/x.sock", "tok", 5, lambda u, t, to: seen.append(t) or object())
    assert seen == [None, "tok"]


def test_storage_app_mtls_wants_the_controller():
    from agent.storage_node.app import StorageApiError, controller_only

    class Req:
        def __init__(self, der):
            self.scope = {tls.SCOPE_KEY: der} if der else {}

    with pytest.raises(StorageApiError) as e:
        controller_only(Req(None))
    assert (e.value.status, e.value.code) == (401, "AuthFailure")
    with pytest.raises(ValueError):
        create_storage_app(FakeVolumeBackend(host="100.64.0.250", port=10809), node_id="sn1",
                           token=None, auth="bearer")
