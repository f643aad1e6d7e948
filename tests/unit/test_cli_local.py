"""`kumo lab ...` and `kumo image ...`: thin wrappers over lab.Lab and images.builder.

The backends are replaced by stand-in modules in sys.modules (they are imported lazily), so no
namespace, libvirtd or build is touched.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import types

import pytest
from typer.testing import CliRunner

from controller.cli.main import app

runner = CliRunner()


@dataclasses.dataclass
class Status:
    prefix: str
    ok: bool

    def to_text(self) -> str:
        return f"lab {self.prefix}: {'ok' if self.ok else 'broken'}\n"


class BackendError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


@pytest.fixture
def fake_lab(monkeypatch):
    calls = []

    class Lab:
        def __init__(self, state_dir, prefix):
            calls.append(("init", str(state_dir), prefix))
            self.prefix = prefix

        def up(self, hosts):
            calls.append(("up", hosts))
            return Status(self.prefix, True)

        def status(self):
            return Status(self.prefix, True)

        def down(self):
            calls.append(("down",))

        def env(self, admin):
            if admin == "boom":
                raise BackendError("X", "y")
            return f"export KUMO_URL=http://127.0.0.1:8787\nexport KUMO_API_KEY={'adm' if admin else 'demo'}\n"

    monkeypatch.setitem(sys.modules, "lab", types.SimpleNamespace(Lab=Lab))
    return calls


def test_lab_up_uses_env_for_state_dir_and_prefix(fake_lab):
    r = runner.invoke(app, ["lab", "up", "--hosts", "3"],
                      env={"KUMO_LAB_STATE": "/tmp/labstate", "KUMO_LAB_PREFIX": "t9"})
    assert r.exit_code == 0, r.output
    assert fake_lab == [("init", "/tmp/labstate", "t9"), ("up", 3)]
    assert r.stdout == "lab t9: ok\n"


def test_lab_defaults_and_json_status(fake_lab):
    r = runner.invoke(app, ["lab", "status", "-o", "json"],
                      env={"KUMO_LAB_STATE": None, "KUMO_LAB_PREFIX": None})
    assert r.exit_code == 0, r.output
    assert fake_lab[0] == ("init", "/var/lib/kumo/lab", "kumo")
    assert json.loads(r.stdout) == {"prefix": "kumo", "ok": True}


def test_lab_env_admin_flag(fake_lab):
    r = runner.invoke(app, ["lab", "env"])
    assert r.stdout.splitlines()[-1] == "export KUMO_API_KEY=demo"
    r = runner.invoke(app, ["lab", "env", "--admin"])
    assert r.stdout.splitlines()[-1] == "export KUMO_API_KEY=adm"


def test_lab_backend_error_is_reported(monkeypatch):
    class Lab:
        def __init__(self, **kw):
            pass

        def down(self):
            raise BackendError("LabBusy", "another lab operation holds the lock")

    monkeypatch.setitem(sys.modules, "lab", types.SimpleNamespace(Lab=Lab))
    r = runner.invoke(app, ["lab", "down"])
    assert r.exit_code == 1
    assert r.stderr.strip() == "error: LabBusy: another lab operation holds the lock"


def test_image_build_and_list(monkeypatch):
    built = []

    def build(name):
        if name == "nope":
            raise BackendError("InvalidImageRecipe", "unknown recipe 'nope'")
        built.append(name)
        return Status(name, True)

    pkg = types.ModuleType("images")
    pkg.builder = types.SimpleNamespace(build=build, list_recipes=lambda: ["debian-12", "kumo-tiny"])
    monkeypatch.setitem(sys.modules, "images", pkg)
    monkeypatch.setitem(sys.modules, "images.builder", pkg.builder)
    r = runner.invoke(app, ["image", "list"])
    assert r.exit_code == 0 and r.stdout.split() == ["debian-12", "kumo-tiny"]
    r = runner.invoke(app, ["image", "build", "kumo-tiny", "-o", "json"])
    assert r.exit_code == 0 and json.loads(r.stdout) == {"prefix": "kumo-tiny", "ok": True}
    assert built == ["kumo-tiny"]
    r = runner.invoke(app, ["image", "build", "nope"])
    assert r.exit_code == 1 and r.stderr.strip() == "error: InvalidImageRecipe: unknown recipe 'nope'"
