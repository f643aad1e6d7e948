"""The volume source's protocol end to end (issue 10, Ceph RBD): a storage node whose backend
serves RBD images answers rbd sources, the controller records the protocol (Volume.
source_protocol) and puts it into the hosts' specs, and the agent attaches an rbd network disk.
The storage node is the real app over an in-memory backend that answers like RbdBackend; the
controller and the agent are the ones of tests/functional (fakes behind them)."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from agent.drivers.base import NetworkHost, NetworkSource
from agent.drivers.disks import OWN_TARGETS
from agent.drivers.fake_volumes import FakeVolumeBackend
from agent.storage_node.app import create_storage_app
from tests.functional.agent_harness import make_spec, put, running_agent, until
from tests.functional.fake_agent import AGENT_TOKEN
from tests.functional.test_volume_reconcile import _available, _running
from tests.functional.volume_cloud import VolumeCloud

MON = ("192.0.2.20", 6789)


class FakeRbdBackend(FakeVolumeBackend):
    """FakeVolumeBackend with RbdBackend's answers: "pool/volume-id" images via a monitor; and
    without the snapshots capability, to check what a node over such a backend offers."""

    capabilities = frozenset({"rbd", "grow_exported", "persistent_exports"})

    def _source(self, volume_id: str) -> NetworkSource:
        return NetworkSource("rbd", f"kumo/{volume_id}", (NetworkHost(*MON),))


def rbd_cloud(tmp_path, backend: FakeVolumeBackend) -> VolumeCloud:
    """A VolumeCloud whose storage node is the real app over `backend`."""
    c = VolumeCloud(tmp_path)
    c.backend = backend
    c.node = TestClient(create_storage_app(c.backend, node_id="sn1", token=AGENT_TOKEN),
                        raise_server_exceptions=False)
    c.image()
    return c


@pytest.fixture
def cloud(tmp_path):
    c = rbd_cloud(tmp_path, FakeRbdBackend())
    yield c
    c.close()


def attached_volume(cloud: VolumeCloud, user, agent) -> tuple[str, str]:
    """A running instance on `agent` and a new volume attached to it (one tick): their ids."""
    iid = _running(cloud, user, agent)
    vid = _available(cloud, user)
    assert cloud.volume_row(vid).source_protocol is None  # not exported: no source at all
    r = user.post(f"/v1/volumes/{vid}/attach", json={"instance_id": iid, "device": "/dev/sdf"})
    assert r.status_code == 200, r.text
    assert cloud.tick()["errors"] == 0
    return iid, vid


def test_rbd_source_is_recorded_and_reaches_the_host_spec(cloud):
    agent = cloud.add_volume_host("host-1")
    user = cloud.account("alice")
    iid, vid = attached_volume(cloud, user, agent)
    row = cloud.volume_row(vid)
    assert (row.source_protocol, row.source_host, row.source_port, row.source_export) == (
        "rbd", *MON, f"kumo/{vid}")
    src = agent.specs[iid].volumes[0].source
    assert (src.protocol, src.host, src.port, src.export) == ("rbd", *MON, f"kumo/{vid}")
    assert cloud.attachment(vid).state == "attached"
    # Detached: the source (protocol included) is forgotten with the export.
    assert user.post(f"/v1/volumes/{vid}/detach", json={}).status_code == 200
    cloud.tick()
    cloud.tick()
    row = cloud.volume_row(vid)
    assert row.source_export is None and row.source_protocol is None, row


def cephx_key(n: int) -> str:
    """A well-formed cephx key (AES type, 16-byte secret), different per n."""
    import base64
    import struct
    return base64.b64encode(struct.pack("<HIIH", 1, 0, 0, 16) + bytes([n]) * 16).decode()


class FakeCephxBackend(FakeRbdBackend):
    """Answers as RbdBackend with auth cephx: each export carries the Ceph user and key of the
    host it is for (rbd_cephx.py keeps one user per host)."""

    def __init__(self):
        super().__init__()
        self.export_host: dict[str, str] = {}

    def export(self, volume_id, host=None):
        self.export_host[volume_id] = host
        return super().export(volume_id, host)

    def _source(self, volume_id):
        from agent.drivers.base import CephAuth
        host = self.export_host.get(volume_id)
        auth = CephAuth(f"kumo-host-{host}", cephx_key(int(host[-1]))) if host else None
        return NetworkSource("rbd", f"kumo/{volume_id}", (NetworkHost(*MON),), auth=auth)


def test_cephx_user_and_key_reach_only_their_hosts_spec_and_never_the_api(tmp_path):
    """The node's per-host Ceph user and key are recorded with the export, sent in the spec of
    the host the volume is attached to (which lists volumes-rbd-cephx), left out for a host
    that does not understand them, never shown by the API, and forgotten on detach."""
    c = rbd_cloud(tmp_path, FakeCephxBackend())
    try:
        h1 = c.add_volume_host("host-1")
        user = c.account("alice")
        iid, vid = attached_volume(c, user, h1)
        assert c.backend.export_host[vid] == "host-1"
        row = c.volume_row(vid)
        assert (row.source_auth_user, row.source_auth_key) == ("kumo-host-host-1", cephx_key(1))
        src = h1.specs[iid].volumes[0].source
        assert (src.auth_user, src.auth_key) == ("kumo-host-host-1", cephx_key(1))
        assert cephx_key(1) not in repr(src)
        for path in (f"/v1/volumes/{vid}", "/v1/volumes", f"/v1/instances/{iid}"):
            body = user.get(path)
            assert body.status_code == 200 and cephx_key(1) not in body.text, path
        # A host one contract version behind gets the same source without the unknown fields.
        from controller import specs
        old = specs.volume_source(row, cephx=False)
        assert old.auth_user is None and "auth" not in old.model_dump_json()
        assert specs.volume_source(row, cephx=True) == src
        # Detached: user and key are forgotten with the export.
        assert user.post(f"/v1/volumes/{vid}/detach", json={}).status_code == 200
        c.tick()
        c.tick()
        row = c.volume_row(vid)
        assert row.source_auth_user is None and row.source_auth_key is None, row
    finally:
        c.close()


def test_storage_info_says_rbd_and_a_backend_without_snapshots_offers_none(cloud):
    info = cloud.node.get("/v1/storage", headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
    assert info.status_code == 200, info.text
    assert info.json()["protocol"] == "rbd" and "snapshots" not in info.json()["extensions"]
    r = cloud.node.get("/v1/snapshots", headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
    assert r.status_code == 404, r.text


def rbd_vol(volume_id: str, device: str, **src) -> dict:
    source = {"protocol": "rbd", "host": MON[0], "port": MON[1], "export": f"kumo/{volume_id}"}
    source.update(src)
    return {"volume_id": volume_id, "device": device, "source": source}


VOL1 = "vol-" + "1" * 17


def test_agent_attaches_an_rbd_disk(tmp_path):
    with running_agent(tmp_path) as agent:
        spec = make_spec(volumes=[rbd_vol(VOL1, "vdb")])
        iid = spec["instance_id"]
        put(agent, spec)
        until(agent, iid, power="running", volumes=[{"device": "vdb", "volume_id": VOL1}])
        disks = {d.target: d for d in agent.hv.domains[iid].plan.disks
                 if d.target not in OWN_TARGETS}
        assert disks["vdb"].source == NetworkSource("rbd", f"kumo/{VOL1}",
                                                    (NetworkHost(*MON),))


@pytest.mark.parametrize("bad", [
    {"export": VOL1},                   # no pool
    {"export": "kumo/a/b"},             # a namespace or more
    {"export": "kumo/vol@snap"},        # a snapshot suffix
    {"export": "kumo/x'/><disk"},       # XML
    {"export": "/vol"},                 # empty pool
    {"host": "mon:6789"},               # a port in the host
    {"host": "10.0.0.256"},             # no address
    {"host": "a b"},
    {"port": 0},
])
def test_bad_rbd_sources_are_400_and_change_nothing(tmp_path, bad):
    with running_agent(tmp_path) as agent:
        spec = make_spec(volumes=[rbd_vol(VOL1, "vdb", **bad)])
        r = agent.put(f"/v1/instances/{spec['instance_id']}", json=spec)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "InvalidParameterValue"
        assert agent.hv.calls == []
