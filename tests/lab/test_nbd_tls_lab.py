"""NBD over TLS, per host (issue 14, docs/security.md "Storage access"), for real: a storage-only
lab of this module's own with KUMO_LAB_STORAGE_TLS=1, so the lab's storage node (100.64.0.250)
has a server certificate from the lab's cloud CA and runs one qemu-storage-daemon per host, whose
NBD server admits only that host's certificate. h1 and h2 get their certificates the way an
agent stores them (agent/identity.py: the NBD copies in QEMU's names, which the lab's qemu.conf
points libvirt at).

A volume exported for h1 (VolumeSpec.host) is written and read with qemu-io from inside h1's
namespace with h1's certificate (the positive control), and then, from inside h2's namespace,
refused for the whole probe window to: h2's certificate, a certificate that says CN=h1 but comes
from another CA, TLS without a client certificate, and plain NBD. Exported for h2 instead, the
export moves to h2's server (another port): h2 reads h1's bytes there; h1's certificate is
refused there, and h1's own server no longer serves it. Unexported and deleted, nothing is left
(storage_lab checks the lab's processes and namespaces).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agent.contract.storage_v1 import VolumeObserved
from agent.drivers.volumes import MiB
from agent.identity import make_csr, new_key
from controller.services import cloud_ca
from lab import services
from lab import naming as nm
from lab.testing import ns_run
from tests.lab.storage_support import (host_nbd_identity, lab_storage_client,
                                       storage_lab_fixture, volume_file)

pytestmark = [pytest.mark.lab, pytest.mark.slow]

VOL = "vol-000000000007150a1"
SNAP = "snap-000000000007150a1"
SIZE = 16 * MiB
SN = str(nm.STORAGE_ADDR.ip)
#: Refusals are probed this many times each (each attempt is a full connect + handshake).
PROBES = 3


tlslab = storage_lab_fixture(hosts=2, tls=True)


def _client_dir(lab, tmp: Path, forged_cn: str | None) -> Path:
    """A client dir that trusts the lab's CA, with a certificate that names `forged_cn` exactly
    as the real one would but from another CA; or (None) with no client certificate at all."""
    tmp.mkdir(parents=True)
    real = cloud_ca.load(services.controller_dir(lab.state_dir)).cert_pem
    (tmp / "ca-cert.pem").write_bytes(real)
    if forged_cn is None:
        return tmp
    other = cloud_ca.CloudCA.generate()
    # Both CAs: QEMU checks its own certificate against the file before it sends it.
    (tmp / "ca-cert.pem").write_bytes(real + other.cert_pem)
    key = new_key()
    issued = other.issue_host(make_csr(key, forged_cn), forged_cn)
    (tmp / "client-cert.pem").write_bytes(issued.pem)
    (tmp / "client-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return tmp


def _qemu_io(ns: str, port: int, export: str, command: str, creds: Path | None,
             tls: bool = True):
    opts = f"driver=nbd,server.type=inet,server.host={SN},server.port={port},export={export}"
    argv = ["qemu-io"]
    if tls:
        obj = "tls-creds-x509,id=tls0,endpoint=client"
        obj += f",dir={creds}" if creds is not None else ""
        argv += ["--object", obj]
        opts += ",tls-creds=tls0"
    return ns_run(ns, *argv, "--image-opts", opts, "-c", command, check=False, timeout=20)


def _reads(ns: str, port: int, export: str, creds: Path | None, tls: bool = True) -> bool:
    r = _qemu_io(ns, port, export, "read -P 0x6b 0 64k", creds, tls)
    return r.returncode == 0 and "read 65536/65536" in r.stdout and "Pattern verification" \
        not in r.stdout


def _refused(ns: str, port: int, export: str, creds: Path | None, tls: bool = True) -> None:
    for _ in range(PROBES):
        r = _qemu_io(ns, port, export, "read 0 512", creds, tls)
        assert r.returncode != 0 and "read 512/512" not in r.stdout, (r.stdout, r.stderr)
        # Refused by the server, not by the client's own checks before it connected.
        assert "can't open" in r.stderr, r.stderr


def _put(c, host: str | None, exported: bool = True) -> VolumeObserved:
    body = {"volume_id": VOL, "size_bytes": 2 * SIZE, "exported": exported}
    if host is not None:
        body["host"] = host
    r = c.put(f"/v1/volumes/{VOL}", json=body)
    assert r.status_code == 200, r.text
    return VolumeObserved.model_validate(r.json())


def test_an_export_opens_only_for_its_host(tlslab):
    lab = tlslab
    h1, h2 = nm.host_netns(lab.prefix, "h1"), nm.host_netns(lab.prefix, "h2")
    creds1, creds2 = host_nbd_identity(lab, "h1"), host_nbd_identity(lab, "h2")
    tmp = Path(tempfile.mkdtemp(prefix="kumo-nbdtls-"))
    try:
        forged = _client_dir(lab, tmp / "forged", "h1")
        nocert = _client_dir(lab, tmp / "nocert", None)
        with lab_storage_client(lab) as c:
            r = c.put(f"/v1/volumes/{VOL}", json={"volume_id": VOL, "size_bytes": SIZE,
                                                  "exported": True})
            assert r.status_code == 400 and r.json()["error"]["code"] == "HostRequired", r.text
            try:
                r = c.put(f"/v1/volumes/{VOL}", json={"volume_id": VOL, "size_bytes": SIZE,
                                                      "exported": True, "host": "h1"})
                assert r.status_code == 200, r.text
                obs = VolumeObserved.model_validate(r.json())
                assert obs.exported and obs.source.host == SN
                p1, name = obs.source.port, obs.source.export
                # Positive control: h1 writes and reads with its own certificate.
                w = _qemu_io(h1, p1, name, "write -P 0x6b 0 64k", creds1)
                assert w.returncode == 0 and "wrote 65536/65536" in w.stdout, (w.stdout, w.stderr)
                assert _reads(h1, p1, name, creds1)
                # Nobody else: another host's certificate, a forged h1, no certificate, no TLS.
                _refused(h2, p1, name, creds2)
                _refused(h2, p1, name, forged)
                _refused(h2, p1, name, nocert)
                _refused(h2, p1, name, None, tls=False)
                _refused(h1, p1, name, None, tls=False)
                assert _reads(h1, p1, name, creds1)  # still h1's after all that
                # Grown and snapshotted while exported: done in h1's daemon, which holds it.
                r = c.put(f"/v1/volumes/{VOL}", json={"volume_id": VOL, "size_bytes": 2 * SIZE,
                                                      "exported": True, "host": "h1"})
                assert r.status_code == 200 and r.json()["source"]["port"] == p1, r.text
                info = _qemu_io(h1, p1, name, "length", creds1)
                assert info.returncode == 0 and "32 MiB" in info.stdout, info.stdout
                r = c.put(f"/v1/snapshots/{SNAP}", json={"snapshot_id": SNAP, "volume_id": VOL})
                assert r.status_code == 200, r.text
                assert c.delete(f"/v1/snapshots/{SNAP}").status_code == 204

                # The attachment moves to h2: its own server (port), h1's bytes, h1 shut out.
                obs = _put(c, "h2")
                p2 = obs.source.port
                assert p2 != p1 and obs.source.export == name
                assert _reads(h2, p2, name, creds2)
                _refused(h1, p2, name, creds1)
                _refused(h1, p1, name, creds1)  # h1's server serves it no more
                assert _reads(h2, p2, name, creds2)

                obs = _put(c, None, exported=False)
                assert not obs.exported
                _refused(h2, p2, name, creds2)
            finally:
                r = c.delete(f"/v1/volumes/{VOL}")
                assert r.status_code == 204, r.text
        assert not volume_file(lab, VOL).exists()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


VOL2 = "vol-000000000007150a2"
IID1, IID2 = "i-000000000007150a1", "i-000000000007150a2"


def _spec(iid: str, port: int, export: str, image_url: str, sha: str):
    from agent.contract.v1 import InstanceSpec

    return InstanceSpec.model_validate({
        "instance_id": iid, "generation": 1, "power": "running", "vcpus": 1,
        "memory_mib": 64, "root_disk_bytes": 8 << 20, "hostname": "tls",
        "image": {"image_id": "ami-" + "0" * 12 + "7150a", "url": image_url, "sha256": sha,
                  "virtual_size": 1 << 20},
        "volumes": [{"volume_id": VOL2, "device": "vdb",
                     "source": {"host": SN, "port": port, "export": export}}]})


def test_libvirt_dials_with_its_host_certificate(tlslab, tmp_path):
    """The agent's own steps on each host's libvirtd (qemu.conf nbd_tls = 1, the certificate
    dir its identity fills): h1's guest starts with h1's volume attached over TLS, h2's guest
    given the same source cannot open it and does not start."""
    import time

    from agent.libvirt.driver import LibvirtHypervisor
    from agent.reconcile.planner import execute
    from agent.reconcile.steps import Drivers, InstanceContext, extra_disks, steps_for
    from agent.state import Runtime
    from agent.storage import LocalStorage
    from tests.lab.test_libvirt_driver_real import _boot_sector_image

    lab = tlslab
    for hid in ("h1", "h2"):
        host_nbd_identity(lab, hid)
    img, sha = _boot_sector_image(tmp_path)
    made = []
    with lab_storage_client(lab) as c:
        r = c.put(f"/v1/volumes/{VOL2}", json={"volume_id": VOL2, "size_bytes": SIZE,
                                               "exported": True, "host": "h1"})
        assert r.status_code == 200, r.text
        src = VolumeObserved.model_validate(r.json()).source
        try:
            for hid, iid in (("h1", IID1), ("h2", IID2)):
                hv = LibvirtHypervisor(lab.libvirt_uri(hid), "qemu", poll_interval=0.1)
                storage = LocalStorage(tmp_path / hid)
                made.append((hv, storage, iid))
                spec = _spec(iid, src.port, src.export, img.as_uri(), sha)
                ctx = InstanceContext(spec=spec, rt=Runtime(), drivers=Drivers(hv, storage),
                                      shutdown_timeout=1, clock=time.time, detach_timeout=1.0)
                if hid == "h1":
                    assert "started" in execute(ctx, steps_for)
                    st = hv.status(iid)
                    assert st.power == "running" and len(extra_disks(st.disks)) == 1
                    # Its QEMU holds the export: a plain unexport is refused while it does.
                    r = c.put(f"/v1/volumes/{VOL2}", json={
                        "volume_id": VOL2, "size_bytes": SIZE, "exported": False})
                    assert r.status_code == 409, r.text
                else:
                    with pytest.raises(Exception) as e:
                        execute(ctx, steps_for)
                    assert "TLS" in str(e.value) or "option reply" in str(e.value), e.value
                    assert hv.status(iid).power != "running"
        finally:
            for hv, storage, iid in made:
                try:
                    hv.undefine(iid)
                    hv.close()
                finally:
                    storage.remove_instance(iid)
            r = c.put(f"/v1/volumes/{VOL2}", json={"volume_id": VOL2, "size_bytes": SIZE,
                                                   "exported": False})
            assert r.status_code == 200, r.text
            assert c.delete(f"/v1/volumes/{VOL2}").status_code == 204


def test_the_api_serves_only_the_controller(tlslab):
    """The node's API (KUMO_STORAGE_API_TLS_DIR) over mutual TLS: the controller's certificate
    is served; a host's certificate from the same CA is 403 NotController; no certificate or
    plain HTTP never reaches the app; the token alone is nothing."""
    import httpx

    from agent.contract import tls, transport

    lab = tlslab
    url = services.storage_url(lab.state_dir)
    with lab_storage_client(lab) as c:  # the controller's certificate
        r = c.get("/v1/storage")
        assert r.status_code == 200 and "export-host" in r.json()["extensions"], r.text
    ca = cloud_ca.load(services.controller_dir(lab.state_dir))
    nbd = host_nbd_identity(lab, "h1")
    pem = nbd.parent / "host.pem"
    host_ctx = tls.client_context(ca.cert_pem, str(pem), peer_uri=tls.ANY_STORAGE)
    with transport.client(url, timeout=10, tls=host_ctx) as c:
        r = c.get("/v1/storage")
        assert (r.status_code, r.json()["error"]["code"]) == (403, "NotController"), r.text
    import ssl

    anon = ssl.create_default_context(cadata=ca.cert_pem.decode())
    anon.check_hostname = False
    with transport.client(url, timeout=10, tls=anon) as c:  # TLS without a certificate
        with pytest.raises(httpx.HTTPError):
            c.get("/v1/storage")
    token = services.ensure_token(lab.state_dir)
    with transport.client(url, token, timeout=10) as c:  # plain HTTP to a TLS listener
        with pytest.raises(httpx.HTTPError):
            c.get("/v1/storage")
