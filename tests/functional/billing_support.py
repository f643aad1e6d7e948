"""A fake clock for billing tests: every controller module's `utcnow` (imported from
controller.ids) answers the clock's time, so state changes, metering and bills all happen at
instants the test chooses; and a restart of the controller on the same database."""
from __future__ import annotations

import sys
from datetime import datetime, timedelta

from controller import ids
from controller.app import close_app, create_app
from tests.functional.fake_agent import AGENT_TOKEN


class FakeClock:
    def __init__(self, monkeypatch, start: datetime):
        self.t = start
        real = ids.utcnow
        for name, mod in list(sys.modules.items()):
            if name.startswith("controller") and getattr(mod, "utcnow", None) is real:
                monkeypatch.setattr(mod, "utcnow", self.now)

    def now(self) -> datetime:
        return self.t

    def set(self, t: datetime) -> None:
        assert t >= self.t, "time only moves forward"
        self.t = t

    def advance(self, **kw) -> datetime:
        self.t += timedelta(**kw)
        return self.t


def restart(cloud) -> None:
    """Close the controller app and build a new one on the same database and settings (its
    fake agents and storage node stay), as a controller process restart would."""
    close_app(cloud.app)
    kw = {"agent_http_factory": cloud._http}
    if hasattr(cloud, "_storage_http"):
        kw["storage_http_factory"] = cloud._storage_http
    cloud.app = create_app(cloud.settings, **kw)
    cloud.admin = cloud.client(cloud.admin_key)
    cloud.agent_client = cloud.client(AGENT_TOKEN)
