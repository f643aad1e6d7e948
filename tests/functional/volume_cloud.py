"""A controller (ticks driven by hand) with fake agents that carry their specs' volumes, and the
real storage node app (agent/storage_node/app.py) over FakeVolumeBackend, reached through the
controller's real StorageClient by an in-process http factory: the set-up the volume, block
device mapping, RBD source and instance move functional tests share.

The fake agent "connects" each disk it carries to the backend as an NBD client would, so the
backend's rules about connected clients (no unexport, no delete, no grow) hold here too."""
from __future__ import annotations

import httpx
from fastapi.testclient import TestClient

from agent.contract.v1 import AttachedVolume, ErrorInfo, InstanceObserved
from agent.drivers.fake_volumes import FakeVolumeBackend
from agent.storage_node.app import create_storage_app
from controller.app import create_app
from controller.models import Volume, VolumeAttachmentRow
from controller.settings import Settings
from tests.functional.fake_agent import AGENT_TOKEN, Cloud, FakeAgent

STORAGE_URL = "http://storage.test:8790"


class VolumeAgent(FakeAgent):
    """A fake agent that carries its specs' volumes: each disk is an NBD client of the backend.
    `held` volumes are ones the guest will not release: unplugging them fails with the agent's
    retryable DeviceDetachTimeout, and the disk stays."""

    def __init__(self, host_id: str, backend: FakeVolumeBackend, **kw):
        super().__init__(host_id, **kw)
        self.backend = backend
        self.disks: dict[str, dict[str, str]] = {}  # instance id -> device -> volume id
        self.sizes: dict[str, int] = {}  # volume id -> the size its disk shows (size_bytes)
        self.held: set[str] = set()

    def handle(self, request: httpx.Request) -> httpx.Response:
        resp = super().handle(request)
        if request.method == "DELETE":
            for iid in [i for i in self.disks if i not in self.specs]:
                for vid in self.disks.pop(iid).values():
                    self.backend.disconnect(vid)
        return resp

    def _put(self, spec):
        resp = super()._put(spec)
        if resp.status_code == 200:
            self.sync_disks(spec.instance_id)
            resp = httpx.Response(200, json=self.obs(spec.instance_id).model_dump(mode="json"))
        return resp

    def sync_disks(self, iid: str) -> None:
        """What VolumesAttached does on a real host: unplug what left the spec, plug the rest."""
        want = {v.device: v.volume_id for v in self.specs[iid].volumes}
        have = self.disks.setdefault(iid, {})
        error = None
        for dev, vid in list(have.items()):
            if want.get(dev) == vid:
                continue
            if vid in self.held:
                error = ErrorInfo(code="DeviceDetachTimeout", retryable=True,
                                  message=f"the guest did not release {dev}")
                continue
            del have[dev]
            self.backend.disconnect(vid)
        for dev, vid in want.items():
            if dev not in have:
                self.backend.connect(vid)  # NBD: only an export can be connected to
                have[dev] = vid
        for v in self.specs[iid].volumes:  # VolumesGrown: reconnect to learn the new size
            if have.get(v.device) == v.volume_id and v.size_bytes:
                if v.size_bytes > self.sizes.setdefault(v.volume_id, v.size_bytes):
                    self.backend.reconnect(v.volume_id)
                    self.sizes[v.volume_id] = v.size_bytes
        self.observed[iid]["error"] = error

    def release(self, vid: str) -> None:
        """The guest lets go of the volume; the agent's next pass finishes the unplug."""
        self.held.discard(vid)
        for iid in list(self.disks):
            if iid in self.specs:
                self.sync_disks(iid)

    def obs(self, iid: str) -> InstanceObserved:
        o = super().obs(iid)
        vols = [AttachedVolume(device=d, volume_id=v)
                for d, v in sorted(self.disks.get(iid, {}).items())]
        return o.model_copy(update={"volumes": vols})


class VolumeCloud(Cloud):
    """Cloud (tests/functional/fake_agent.py) plus a storage node over FakeVolumeBackend."""

    def __init__(self, tmp_path, **overrides):
        self.backend = FakeVolumeBackend(host="192.0.2.10", port=10809)
        node = create_storage_app(self.backend, node_id="sn1", token=AGENT_TOKEN)
        self.node = TestClient(node, raise_server_exceptions=False)  # no lifespan: no ensure loop
        self.storage_down = False
        self.storage_requests: list[tuple[str, str]] = []
        self.tmp = tmp_path
        self.agents = {}
        base = dict(state_dir=tmp_path / "controller", agent_token=AGENT_TOKEN, agent_auth="token",
                    reconcile_interval_s=0, agent_facing_url="http://controller.test:8787",
                    heartbeat_timeout_s=30, storage_url=STORAGE_URL)
        base.update(overrides)
        self.settings = Settings(**base)
        self.app = create_app(self.settings, agent_http_factory=self._http,
                              storage_http_factory=self._storage_http)
        self.admin_key = (self.settings.state_dir / "admin.key").read_text().strip()
        self.admin = self.client(self.admin_key)
        self.agent_client = self.client(AGENT_TOKEN)
        self._image_id = None

    def _storage_http(self, url: str, token: str | None, timeout: float) -> httpx.Client:
        assert url == STORAGE_URL

        def handle(request: httpx.Request) -> httpx.Response:
            if self.storage_down:
                raise httpx.ConnectError("storage node unreachable", request=request)
            self.storage_requests.append((request.method, request.url.path))
            r = self.node.request(request.method, request.url.path, content=request.content,
                                  headers=dict(request.headers))
            return httpx.Response(r.status_code, content=r.content, headers=r.headers)

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=url, headers=headers, timeout=timeout,
                            transport=httpx.MockTransport(handle))

    def add_volume_host(self, host_id: str) -> VolumeAgent:
        agent = VolumeAgent(host_id, self.backend)
        self.agents[agent.url] = agent
        self.heartbeat(agent)
        return agent

    def volume_row(self, vid: str) -> Volume | None:
        with self.app.state.kumo.db.session(notify=False) as s:
            return s.get(Volume, vid)

    def attachment(self, vid: str) -> VolumeAttachmentRow | None:
        with self.app.state.kumo.db.session(notify=False) as s:
            return s.get(VolumeAttachmentRow, vid)


def volume_cloud(tmp_path, **settings):
    """A VolumeCloud with its image registered; a generator for a test module's fixture."""
    c = VolumeCloud(tmp_path, **settings)
    c.image()
    yield c
    c.close()
