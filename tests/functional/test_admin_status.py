"""`GET /v1/admin/status` and `kumo admin status` on the real app (fake agents,
tests/functional/fake_agent.py): admin only; with the app's lifespan running, this controller
registers itself and leads (one controller on a SQLite file), the reconcile lag counts an
instance whose spec no agent acknowledged yet, and the CLI shows it as JSON and as tables."""
from __future__ import annotations

import json
import time

from typer.testing import CliRunner

from controller.cli.context import CliState
from controller.cli.main import app as cli_app
from tests.functional.fake_agent import Cloud


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_admin_status_api_and_cli(tmp_path):
    cloud = Cloud(tmp_path)
    try:
        cloud.add_host("host-1")
        cloud.image()
        alice = cloud.account("alice")
        assert alice.get("/v1/admin/status").status_code == 403
        assert cloud.client(None).get("/v1/admin/status").status_code == 401
        iid = cloud.launch(alice)  # reconciler driven by hand: not pushed yet
        with cloud.client(cloud.admin_key) as admin:  # runs the lifespan: leadership
            st = _wait(lambda: (lambda s: s if s["leader"]["controller_id"] else None)(
                admin.get("/v1/admin/status").json()))
            me = cloud.app.state.kumo_controller_id
            assert st["answered_by"] == me and st["leader"]["controller_id"] == me
            assert st["leader"]["epoch"] == 1 and st["leader"]["since"]
            [c] = st["controllers"]
            assert c["controller_id"] == me and c["leader"] and c["alive"]
            assert st["reconcile"]["unacknowledged_instances"] == 1
            assert st["reconcile"]["oldest_unacknowledged_age_s"] >= 0
            cloud.converge()
            st = admin.get("/v1/admin/status").json()
            assert st["reconcile"]["unacknowledged_instances"] == 0
            assert st["reconcile"]["oldest_unacknowledged_age_s"] is None
            assert cloud.instance(alice, iid)["state"] == "running"

            def kumo(*args):
                state = CliState(client_factory=lambda url, key: cloud.client(key))
                r = CliRunner().invoke(cli_app, [*args, "admin", "status"], obj=state,
                                       env={"KUMO_API_KEY": cloud.admin_key})
                assert r.exit_code == 0, r.output
                return r.stdout

            out = json.loads(kumo("-o", "json"))
            assert out["leader"]["controller_id"] == me and len(out["controllers"]) == 1
            table = kumo()
            assert me in table and "epoch" in table and "unacknowledged_instances" in table
        # a clean stop released the lease and left the registry
        st = cloud.admin.get("/v1/admin/status").json()
        assert st["leader"]["controller_id"] is None and st["leader"]["epoch"] == 1
        assert st["controllers"] == []
    finally:
        cloud.close()
