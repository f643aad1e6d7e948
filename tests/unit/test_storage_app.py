"""The storage node's HTTP API (agent/storage_node/app.py) over FakeVolumeBackend, in process
through FastAPI's TestClient: every route of agent/contract/storage_v1.py, idempotency, error
codes and statuses, the bearer token, a path/body mismatch, and the ensure loop repairing the
exports of a crashed serving process. Plus the node's settings."""
from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from agent.contract.storage_v1 import StorageInfo, VolumeObserved, VolumeSpec
from agent.drivers.base import DriverError
from agent.drivers.fake_volumes import FakeVolumeBackend
from agent.storage_node.app import create_storage_app
from agent.storage_node.settings import StorageSettings

MiB = 1 << 20
TOKEN = "s3cret-token"
V1 = "vol-0000000000000a001"
V2 = "vol-0000000000000a002"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class CountingBackend(FakeVolumeBackend):
    """The fake, counting ensure() passes and failing them on demand."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.ensured = 0
        self.fail_ensure: Exception | None = None

    def ensure(self) -> None:
        self.ensured += 1
        if self.fail_ensure is not None:
            raise self.fail_ensure
        super().ensure()


@pytest.fixture
def backend() -> CountingBackend:
    return CountingBackend(host="100.64.0.250", port=10809)


@pytest.fixture
def client(backend):
    app = create_storage_app(backend, node_id="sn1", token=TOKEN, ensure_interval=0.05)
    with TestClient(app, headers=AUTH) as c:  # runs the lifespan: the ensure loop
        yield c


def put(c, vid, size=8 * MiB, exported=False, **extra):
    return c.put(f"/v1/volumes/{vid}", json={"volume_id": vid, "size_bytes": size,
                                             "exported": exported, **extra})


def err(r) -> tuple[int, str, bool]:
    e = r.json()["error"]
    assert set(e) == {"code", "message", "retryable"} and e["message"]
    return r.status_code, e["code"], e["retryable"]


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_storage_info(client, backend):
    info = StorageInfo.model_validate(client.get("/v1/storage").json())
    assert info.node_id == "sn1" and info.contract_version == "v1" and info.protocol == "nbd"
    assert info.capabilities == sorted(backend.capabilities)
    assert (info.volume_count, info.provisioned_bytes) == (0, 0)
    put(client, V1, 8 * MiB)
    put(client, V2, 16 * MiB)
    info = StorageInfo.model_validate(client.get("/v1/storage").json())
    assert (info.volume_count, info.provisioned_bytes) == (2, 24 * MiB)


def test_put_creates_then_is_idempotent(client, backend):
    r = put(client, V1, 8 * MiB)
    assert r.status_code == 200
    assert VolumeObserved.model_validate(r.json()) == VolumeObserved(
        volume_id=V1, size_bytes=8 * MiB, exported=False, source=None)
    assert backend.sizes == {V1: 8 * MiB} and backend.wanted == set()
    again = put(client, V1, 8 * MiB)
    assert again.status_code == 200 and again.json() == r.json()
    assert client.get(f"/v1/volumes/{V1}").json() == r.json()


def test_put_exports_with_a_source_and_unexports(client, backend):
    r = put(client, V1, exported=True)
    assert r.status_code == 200
    assert r.json() == {"volume_id": V1, "size_bytes": 8 * MiB, "exported": True,
                        "source": {"protocol": "nbd", "host": "100.64.0.250", "port": 10809,
                                   "export": V1}}
    assert backend.wanted == {V1} and V1 in backend.served
    assert put(client, V1, exported=True).json() == r.json()  # a re-send changes nothing
    r = put(client, V1, exported=False)
    assert r.json()["exported"] is False and r.json()["source"] is None
    assert backend.wanted == set() and backend.served == set()


def test_put_grows_and_refuses_to_shrink(client, backend):
    put(client, V1, 8 * MiB, exported=True)
    r = put(client, V1, 32 * MiB, exported=True)
    assert r.status_code == 200 and r.json()["size_bytes"] == 32 * MiB and r.json()["exported"]
    # Smaller: refused, and nothing changes, not even the export asked for in the same spec.
    r = put(client, V1, 16 * MiB, exported=False)
    assert err(r) == (400, "InvalidVolumeSize", False)
    assert backend.sizes[V1] == 32 * MiB and V1 in backend.wanted


def test_growing_with_a_connected_client_re_makes_the_export_under_its_name(client, backend):
    first = put(client, V1, 8 * MiB, exported=True).json()["source"]
    backend.connect(V1)
    r = put(client, V1, 16 * MiB, exported=True)
    assert r.status_code == 200, r.text
    assert r.json()["size_bytes"] == 16 * MiB and r.json()["source"] == first
    assert (backend.clients.get(V1, 0), backend.cut[V1]) == (0, 1)  # cut off: must reconnect
    backend.reconnect(V1)
    assert (backend.clients[V1], backend.cut[V1]) == (1, 0)


def test_unexport_with_a_connected_client_is_409(client, backend):
    put(client, V1, exported=True)
    backend.connect(V1)
    assert err(put(client, V1, exported=False)) == (409, "VolumeInUse", True)
    assert V1 in backend.wanted


def test_disconnect_cuts_connected_hosts_off_and_fences_the_next_export(client, backend):
    first = put(client, V1, exported=True).json()["source"]
    backend.connect(V1)
    assert err(put(client, V1, exported=False)) == (409, "VolumeInUse", True)
    r = put(client, V1, exported=False, disconnect=True)
    assert r.status_code == 200, r.text
    assert r.json() == {"volume_id": V1, "size_bytes": 8 * MiB, "exported": False,
                        "source": None}
    assert backend.wanted == set() and backend.served == set() and not backend.clients.get(V1)
    assert put(client, V1, exported=False, disconnect=True).status_code == 200  # a re-send
    # Exported again (attached elsewhere): under a new name the cut-off host never asks for.
    again = put(client, V1, exported=True, disconnect=True).json()["source"]  # ignored here
    assert again["export"] == V1 + ".1" and {**again, "export": V1} == first
    assert client.get(f"/v1/volumes/{V1}").json()["source"] == again
    backend.disconnect(V1)  # the cut-off host unplugs its dead disk: changes nothing
    assert client.get(f"/v1/volumes/{V1}").json()["exported"] is True


def test_disconnect_is_left_out_of_the_json_unless_set():
    """A spec without the extension's fields is exactly the base contract's (old nodes forbid
    unknown fields)."""
    base = VolumeSpec(volume_id=V1, size_bytes=MiB, exported=True)
    assert base.model_dump(mode="json") == {"volume_id": V1, "size_bytes": MiB, "exported": True}
    forced = VolumeSpec(volume_id=V1, size_bytes=MiB, disconnect=True)
    assert forced.model_dump(mode="json") == {"volume_id": V1, "size_bytes": MiB,
                                              "exported": False, "disconnect": True}
    assert VolumeSpec.model_validate(forced.model_dump(mode="json")) == forced


def test_storage_info_lists_the_disconnect_extension(client):
    assert "disconnect" in client.get("/v1/storage").json()["extensions"]


def test_list_is_sorted_and_shows_sources(client):
    put(client, V2, 16 * MiB, exported=True)
    put(client, V1, 8 * MiB)
    r = client.get("/v1/volumes")
    assert r.status_code == 200
    got = [VolumeObserved.model_validate(v) for v in r.json()]
    assert [v.volume_id for v in got] == [V1, V2]
    assert [v.exported for v in got] == [False, True]
    assert got[1].source.export == V2 and got[0].source is None


def test_get_missing_is_404(client):
    assert err(client.get(f"/v1/volumes/{V1}")) == (404, "InvalidVolume.NotFound", False)


def test_delete_unexports_deletes_and_gone_is_204(client, backend):
    put(client, V1, exported=True)
    r = client.delete(f"/v1/volumes/{V1}")
    assert r.status_code == 204 and r.content == b""
    assert backend.sizes == {} and backend.wanted == set() and backend.served == set()
    assert client.delete(f"/v1/volumes/{V1}").status_code == 204  # already gone
    assert client.get(f"/v1/volumes/{V1}").status_code == 404


def test_delete_with_a_connected_client_is_409_and_keeps_it(client, backend):
    put(client, V1, exported=True)
    backend.connect(V1)
    assert err(client.delete(f"/v1/volumes/{V1}")) == (409, "VolumeInUse", True)
    assert backend.sizes == {V1: 8 * MiB} and V1 in backend.served


@pytest.mark.parametrize("path_id", ["vol-XYZ", "vol-0000000000000A001", "i-0000000000000a001",
                                     "vol-0000000000000a0011"])
def test_malformed_ids_in_the_path_are_400(client, path_id):
    for r in (client.get(f"/v1/volumes/{path_id}"), client.delete(f"/v1/volumes/{path_id}"),
              client.put(f"/v1/volumes/{path_id}",
                         json={"volume_id": V1, "size_bytes": MiB, "exported": False})):
        assert err(r) == (400, "InvalidVolumeID.Malformed", False)


def test_path_and_body_must_name_the_same_volume(client, backend):
    r = client.put(f"/v1/volumes/{V1}", json={"volume_id": V2, "size_bytes": MiB})
    assert err(r) == (400, "InvalidParameterValue", False)
    assert backend.sizes == {}


@pytest.mark.parametrize("body", [
    {"volume_id": V1, "size_bytes": MiB + 1},  # not whole MiB
    {"volume_id": V1, "size_bytes": 0},
    {"volume_id": V1, "size_bytes": MiB, "exported": False, "extra": 1},  # unknown field
    {"volume_id": V1},
    {"volume_id": "vol-bad", "size_bytes": MiB},
])
def test_invalid_specs_are_400(client, backend, body):
    assert err(client.put(f"/v1/volumes/{V1}", json=body)) == (400, "InvalidParameterValue", False)
    assert backend.sizes == {}


def test_backend_limits_map_to_400(backend):
    small = CountingBackend(max_size=64 * MiB)
    with TestClient(create_storage_app(small, node_id="sn1", token=TOKEN), headers=AUTH) as c:
        assert err(put(c, V1, 128 * MiB)) == (400, "InvalidVolumeSize", False)


def test_backend_failures_are_503_retryable(client, backend, monkeypatch):
    def down(*_a):
        raise DriverError("qemu-storage-daemon is not answering", code="StorageDaemonUnavailable",
                          retryable=True)
    monkeypatch.setattr(backend, "export", down)
    assert err(put(client, V1, exported=True)) == (503, "StorageDaemonUnavailable", True)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": TOKEN}])
def test_requests_without_the_token_are_refused(backend, headers):
    app = create_storage_app(backend, node_id="sn1", token=TOKEN, ensure_interval=60)
    with TestClient(app) as c:
        for r in (c.get("/v1/storage", headers=headers), c.get("/v1/volumes", headers=headers),
                  c.put(f"/v1/volumes/{V1}", headers=headers,
                        json={"volume_id": V1, "size_bytes": MiB}),
                  c.delete(f"/v1/volumes/{V1}", headers=headers)):
            assert err(r) == (401, "AuthFailure", False)
            assert r.headers["www-authenticate"] == "Bearer"
    assert backend.sizes == {}


@pytest.mark.parametrize("token", [None, ""])
def test_a_node_without_a_token_refuses_everything(backend, token):
    app = create_storage_app(backend, node_id="sn1", token=token, ensure_interval=60)
    with TestClient(app) as c:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
            assert c.get("/v1/storage", headers=headers).status_code == 401


def test_unknown_routes_answer_in_the_error_format(client):
    assert err(client.get("/v1/nothing")) == (404, "NotFound", False)
    assert err(client.post(f"/v1/volumes/{V1}")) == (405, "MethodNotAllowed", False)


def test_the_ensure_loop_puts_crashed_exports_back(client, backend):
    put(client, V1, exported=True)
    put(client, V2, exported=False)
    backend.crash()  # the serving process died: nothing is served
    # The observed state says so until the loop repaired it; no request is needed for that.
    assert wait_for(lambda: client.get(f"/v1/volumes/{V1}").json()["exported"])
    assert backend.served == {V1}
    assert client.get(f"/v1/volumes/{V2}").json()["exported"] is False


def test_the_ensure_loop_survives_failures_and_stops_with_the_app(backend):
    backend.fail_ensure = DriverError("cannot start the daemon", code="StorageDaemonProcessBackoff")
    app = create_storage_app(backend, node_id="sn1", token=TOKEN, ensure_interval=0.02)
    with TestClient(app, headers=AUTH):
        assert wait_for(lambda: backend.ensured >= 3)  # failed passes do not end it
        backend.fail_ensure = RuntimeError("a bug")
        n = backend.ensured
        assert wait_for(lambda: backend.ensured >= n + 3)
        backend.fail_ensure = None
        assert wait_for(lambda: app.state.ensure_loop.passes >= backend.ensured > n + 3)
    stopped = backend.ensured
    time.sleep(0.1)
    assert backend.ensured == stopped  # the lifespan stopped the thread
    assert app.state.ensure_loop._thread is None


def test_the_first_ensure_runs_at_start(backend):
    app = create_storage_app(backend, node_id="sn1", token=TOKEN, ensure_interval=3600)
    with TestClient(app, headers=AUTH):
        assert wait_for(lambda: backend.ensured == 1)


def test_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KUMO_STORAGE_NBD_HOST", "100.64.0.250")
    monkeypatch.setenv("KUMO_STORAGE_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("KUMO_STORAGE_LISTEN", f"unix:{tmp_path}/s.sock")
    monkeypatch.setenv("KUMO_STORAGE_TOKEN", "t")
    monkeypatch.setenv("KUMO_STORAGE_URL", "unix:/elsewhere")  # the controller's: ignored here
    s = StorageSettings()
    assert str(s.nbd_host) == "100.64.0.250" and s.nbd_port == 10809 and s.node_id == "sn1"
    assert s.listen_socket() == f"{tmp_path}/s.sock" and s.state_dir == tmp_path
    assert s.token == "t" and "token=" not in repr(s)  # never logged
    monkeypatch.setenv("KUMO_STORAGE_LISTEN", "127.0.0.1:9000")
    assert StorageSettings().listen_host_port() == ("127.0.0.1", 9000)


@pytest.mark.parametrize("env", [{"KUMO_STORAGE_NBD_HOST": "0.0.0.0"},
                                 {"KUMO_STORAGE_NBD_HOST": "example.com"},
                                 {"KUMO_STORAGE_NBD_HOST": "100.64.0.250",
                                  "KUMO_STORAGE_NBD_PORT": "0"},
                                 {"KUMO_STORAGE_NBD_HOST": "100.64.0.250",
                                  "KUMO_STORAGE_STATE_DIR": "relative"},
                                 {}])
def test_bad_settings_are_refused(monkeypatch, env):
    monkeypatch.delenv("KUMO_STORAGE_NBD_HOST", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError):
        StorageSettings()
