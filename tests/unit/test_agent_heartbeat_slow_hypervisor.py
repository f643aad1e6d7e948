"""A heartbeat never waits on a slow hypervisor call (agent/heartbeat.py: Latest,
VersionsCache): while libvirt takes seconds to answer (QEMU's capabilities probed with a cold or
invalid cache, calls queued behind a domain start), heartbeats keep their pace with the last
observation, and the fresh one follows as soon as the call returns."""
from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from agent.app import create_app
from agent.contract.v1 import HeartbeatRequest
from agent.drivers.fake import FakeHypervisor, FakeNetwork, FakeStorage
from agent.heartbeat import Latest
from agent.settings import AgentSettings
from tests.unit.test_agent_heartbeat import _Controller, _spec, wait_for

IID = "i-00000000000000001"


class SlowHypervisor(FakeHypervisor):
    """A fake hypervisor whose versions() and status() wait while `stalled` is clear, as
    libvirt's getVersion and domain calls wait on a QEMU capability probe."""

    def __init__(self):
        super().__init__()
        self.open = threading.Event()  # set: calls answer at once
        self.waiting = 0

    def _gate(self) -> None:
        self.waiting += 1
        try:
            assert self.open.wait(30), "the test never released the hypervisor"
        finally:
            self.waiting -= 1

    def versions(self) -> dict[str, str]:
        self._gate()
        return super().versions()

    def status(self, name: str):
        self._gate()
        return super().status(name)


def _beats(ctl, since: int = 0) -> list[HeartbeatRequest]:
    return [HeartbeatRequest.model_validate(b) for _, b in ctl.received[since:]]


def test_heartbeats_keep_their_pace_while_libvirt_is_slow(tmp_path):
    hv = SlowHypervisor()  # closed from the start: the first probe of a cold cache
    with _Controller() as ctl:
        s = AgentSettings(host_id="hb-host", state_dir=tmp_path, token="tok", auth="token",
                          driver="fake", controller_url=ctl.url, heartbeat_interval=0.3,
                          resync_interval=0.05)
        app = create_app(s, hv, FakeStorage(tmp_path), FakeNetwork())
        with TestClient(app, headers={"Authorization": "Bearer tok"}) as c:
            # The host joins at once: its versions are not waited for.
            first = wait_for(lambda: _beats(ctl), timeout=3)[0]
            assert "libvirt" not in first.host.versions and hv.waiting >= 1
            hv.open.set()
            wait_for(lambda: any(b.host.versions.get("libvirt") == "fake" for b in _beats(ctl)))
            assert c.put(f"/v1/instances/{IID}", json=_spec()).status_code == 200
            wait_for(lambda: any(b.instances and b.instances[0].power == "running"
                                 for b in _beats(ctl)))
            # libvirt stalls for 3 s: heartbeats go on (the interval is 0.3 s; the first one of
            # the stall waits COLLECT_WAIT = 1 s for a fresh observation, none after it does)
            # and carry the last observation: the instance still running.
            hv.open.clear()
            wait_for(lambda: hv.waiting >= 1)
            n, t0 = len(ctl.received), time.monotonic()
            time.sleep(3)
            during = _beats(ctl, n)
            assert hv.waiting >= 1, "the stall must last the whole window"
            assert len(during) >= 4, f"{len(during)} heartbeats in 3 s of a stalled libvirt"
            assert all(b.instances and b.instances[0].instance_id == IID and
                       b.instances[0].power == "running" for b in during)
            sent_at = [b.sent_at for b in during]
            assert max(b - a for a, b in zip(sent_at, sent_at[1:])) < 1.5, sent_at
            # Released: fresh observations again (sent after the release).
            hv.open.set()
            t1 = time.time()
            wait_for(lambda: any(b.sent_at > t1 for b in _beats(ctl)))
            assert app.state.heartbeat.failures == 0
            assert time.monotonic() - t0 < 10


def test_latest_gives_a_fresh_result_an_error_or_the_newest_earlier_one():
    gate, calls = threading.Event(), []

    def fn():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        assert gate.wait(5)
        return len(calls)

    latest = Latest(fn, "test")
    with pytest.raises(TimeoutError):  # nothing finished yet: nothing to give
        latest.get(wait=0.05)
    gate.set()
    assert latest.get(wait=2) == 1  # the run in flight finishes: its result
    with pytest.raises(RuntimeError, match="boom"):  # a fresh error is the caller's
        latest.get(wait=2)
    gate.clear()
    t0 = time.monotonic()
    assert latest.get(wait=0.2) == 1  # slow: the newest earlier result, after `wait`
    assert latest.get(wait=0.2) == 1 and time.monotonic() - t0 < 0.35  # not waited for again
    assert len(calls) == 3 and latest.busy_for > 0
    assert latest.get(wait=0, max_age=60) == 1  # young enough: no new run
    gate.set()
    wait_for(lambda: latest.busy_for == 0)
    assert latest.get(wait=0, max_age=60) == 3
