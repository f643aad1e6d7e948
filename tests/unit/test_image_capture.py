"""Image capture on the agent (agent/capture.py with the real qemu-img), its wire types, and the
controller's launch-permission and visibility rules (services/image_permissions.py, images.py)."""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent import qemu_img
from agent.capture import CaptureError, Captures, fake_convert, qemu_convert
from agent.contract.v1 import EXTENSIONS, CaptureObserved, CaptureRequest

IID = "i-0123456789abcdef0"
AMI = "ami-0123456789abcdef0"


def _wait(captures: Captures, iid: str = IID, ami: str = AMI) -> CaptureObserved:
    deadline = time.monotonic() + 30
    while True:
        obs = captures.get(iid, ami)
        if obs.state != "pending":
            return obs
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.fixture
def disk(tmp_path) -> Path:
    """A root disk as the agent makes it: an overlay on a base image, with a guest write in the
    overlay (0xab) over base data (0xcd)."""
    base = tmp_path / "base.qcow2"
    qemu_img.create(base, 8 << 20)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xcd 0 1M", str(base)],
                   check=True, capture_output=True)
    root = tmp_path / "instances" / IID / "root.qcow2"
    root.parent.mkdir(parents=True)
    qemu_img.create_overlay(base, root, 16 << 20)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 64k", str(root)],
                   check=True, capture_output=True)
    return root


def _captures(tmp_path, convert=None) -> Captures:
    return Captures(tmp_path / "agent", lambda iid: tmp_path / "instances" / iid / "root.qcow2",
                    convert=convert or qemu_convert)


def test_capture_flattens_overlay_and_base_into_a_standalone_image(tmp_path, disk):
    caps = _captures(tmp_path)
    assert caps.start(IID, AMI, running=False, allow_running=False).state == "pending"
    obs = _wait(caps)
    assert obs.state == "available" and obs.virtual_size == 16 << 20
    path, sha = caps.file(IID, AMI)
    assert sha == obs.sha256 and path.stat().st_size == obs.size
    info = qemu_img.check_standalone(path)  # no backing file
    assert "backing-filename" not in info
    raw = tmp_path / "flat.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(path), str(raw)],
                   check=True)
    data = raw.read_bytes()
    assert data[:65536] == b"\xab" * 65536  # the guest's write (overlay)
    assert data[65536:1 << 20] == b"\xcd" * ((1 << 20) - 65536)  # the base under it
    # Idempotent: a re-POST answers the finished capture; a restarted agent still has it.
    assert caps.start(IID, AMI, running=True, allow_running=False) == obs
    assert _captures(tmp_path).get(IID, AMI) == obs
    caps.delete(IID, AMI)
    caps.delete(IID, AMI)
    assert not path.exists()
    with pytest.raises(CaptureError) as e:
        caps.get(IID, AMI)
    assert (e.value.status, e.value.code) == (404, "CaptureNotFound")


def test_capture_refusals(tmp_path, disk):
    caps = _captures(tmp_path)
    with pytest.raises(CaptureError) as e:
        caps.start(IID, AMI, running=True, allow_running=False)
    assert (e.value.status, e.value.code) == (409, "InstanceRunning")
    with pytest.raises(CaptureError) as e:
        caps.start("i-00000000000000000", AMI, running=False, allow_running=False)
    assert (e.value.status, e.value.code) == (404, "InstanceNotFound")
    for iid, ami in (("i-x", AMI), ("../../etc", AMI), (IID, "ami-../x"), (IID, "img")):
        with pytest.raises(CaptureError) as e:
            caps.get(iid, ami)
        assert e.value.status == 400
    assert not list((tmp_path / "agent" / "captures").iterdir())


def test_running_capture_with_force_share_and_not_ready_file(tmp_path, disk):
    gate = threading.Event()
    seen = []

    def slow(src, dst, force_share):
        seen.append(force_share)
        gate.wait(10)
        qemu_convert(src, dst, force_share)
    caps = _captures(tmp_path, slow)
    caps.start(IID, AMI, running=True, allow_running=True)
    with pytest.raises(CaptureError) as e:
        caps.file(IID, AMI)
    assert (e.value.status, e.value.code, e.value.retryable) == (409, "CaptureNotReady", True)
    gate.set()
    assert _wait(caps).state == "available" and seen == [True]


def test_failed_copy_is_reported_and_can_be_retried(tmp_path, disk):
    def broken(src, dst, force_share):
        dst.write_bytes(b"half")
        raise qemu_img.QemuImgError("no space left", code="CaptureCopyFailed", retryable=True)
    caps = _captures(tmp_path, broken)
    caps.start(IID, AMI, running=False, allow_running=False)
    obs = _wait(caps)
    assert obs.state == "failed" and obs.error.code == "CaptureCopyFailed"
    assert not list((tmp_path / "agent" / "captures").rglob("*.partial"))
    caps.convert = qemu_convert
    assert caps.start(IID, AMI, running=False, allow_running=False).state == "pending"
    assert _wait(caps).state == "available"


def test_copy_cut_short_by_a_restart_is_failed_and_cleaned(tmp_path, disk):
    d = tmp_path / "agent" / "captures" / IID
    d.mkdir(parents=True)
    (d / f".{AMI}.partial").write_bytes(b"x")
    (d / f"{AMI}.qcow2").write_bytes(b"x")  # a file without its facts
    caps = _captures(tmp_path)
    assert not (d / f".{AMI}.partial").exists()
    obs = caps.get(IID, AMI)
    assert obs.state == "failed" and obs.error.code == "CaptureInterrupted"


def test_fake_convert_writes_a_real_qcow2(tmp_path):
    src = tmp_path / "root.qcow2"
    src.write_text("overlay of something\n")
    fake_convert(src, tmp_path / "out.qcow2", False)
    assert qemu_img.check_standalone(tmp_path / "out.qcow2")["virtual-size"] == 64 << 20


def test_wire_types():
    assert "image-capture" in EXTENSIONS
    assert CaptureRequest(image_id=AMI).allow_running is False
    with pytest.raises(ValidationError):
        CaptureRequest(image_id="ami-nothex")
    with pytest.raises(ValidationError):
        CaptureRequest(image_id=AMI, extra=1)
    with pytest.raises(ValidationError):
        CaptureObserved(instance_id=IID, image_id=AMI, state="done")


# -- controller: launch permissions and visibility ------------------------------------------

@pytest.fixture
def ctl(tmp_path):
    from controller import db_migrate
    from controller.db import Database
    from controller.services import accounts
    db = Database(f"sqlite:///{tmp_path}/c.db")
    db_migrate.upgrade(db)
    callers = {}
    for name, admin in (("admin", True), ("alice", False), ("bob", False), ("carol", False)):
        acct, _ = accounts.create(db, name, is_admin=admin)
        callers[name] = accounts.Caller(acct.account_id, name, admin)
    yield db, callers
    db.dispose()


def _image(db, owner, state="available", name="img") -> str:
    from controller.ids import new_id, utcnow
    from controller.models import Image
    img = Image(image_id=new_id("ami"), owner_account_id=owner.account_id, name=name,
                path="/nonexistent", virtual_size=1, size=1, sha256="0" * 64, state=state,
                created_at=utcnow())
    with db.session() as s:
        s.add(img)
    return img.image_id


def _sees(db, caller, image_id) -> bool:
    from controller.errors import NotFound
    from controller.services import images
    try:
        with db.session() as s:
            images.get(s, caller, image_id)
        return True
    except NotFound:
        return False


def test_launch_permission_rules(ctl):
    from controller.errors import InvalidParameter, NotFound, Unauthorized
    from controller.models.image import LaunchPermissionModify as M
    from controller.services import image_permissions as perms
    db, c = ctl
    ami = _image(db, c["alice"])
    assert not _sees(db, c["bob"], ami)
    with pytest.raises(NotFound):
        perms.describe(db, c["bob"], ami)
    with pytest.raises(NotFound):
        perms.modify(db, c["bob"], ami, M(add=[c["bob"].account_id]))
    with pytest.raises(InvalidParameter) as e:  # one bad account: nothing changes
        perms.modify(db, c["alice"], ami, M(add=[c["bob"].account_id, "acct-none"]))
    assert e.value.code == "InvalidAccountID.NotFound"
    assert perms.describe(db, c["alice"], ami).account_ids == []
    got = perms.modify(db, c["alice"], ami, M(add=[c["bob"].account_id, c["bob"].account_id,
                                                   c["alice"].account_id]))
    assert got.account_ids == [c["bob"].account_id]  # owner and duplicates ignored
    assert _sees(db, c["bob"], ami) and not _sees(db, c["carol"], ami)
    with pytest.raises(Unauthorized) as e:
        perms.modify(db, c["alice"], ami, M(public=True, remove=[c["bob"].account_id]))
    assert e.value.code == "UnauthorizedOperation" and e.value.status == 403
    assert _sees(db, c["bob"], ami)  # the refused request removed nothing
    assert perms.modify(db, c["admin"], ami, M(public=True)).public is True
    assert _sees(db, c["carol"], ami)
    assert perms.modify(db, c["alice"], ami, M(public=False)).public is False  # owner: private
    got = perms.modify(db, c["alice"], ami, M(remove=[c["bob"].account_id, "acct-none"]))
    assert got.account_ids == [] and not _sees(db, c["bob"], ami)


def test_visibility_of_pending_and_shared_images(ctl):
    from controller.services import images
    from controller.services.pagination import PageRequest
    db, c = ctl
    pending = _image(db, c["alice"], state="pending", name="p")
    assert not _sees(db, c["alice"], pending)  # not launchable
    with db.session() as s:
        assert images.get(s, c["alice"], pending, images.DESCRIBED).state == "pending"
    listed = lambda who: [i.image_id for i in images.list_page(  # noqa: E731
        db, c[who], PageRequest(max_results=100)).items]
    assert pending in listed("alice") and pending not in listed("bob")


# -- CLI ------------------------------------------------------------------------------------

def test_cli_commands_send_the_documented_requests():
    import json

    from typer.testing import CliRunner

    from controller.cli import images as image_commands
    from controller.cli.main import app
    assert image_commands.images_create_from  # importing it registers the commands
    from tests.unit.test_cli_support import FakeKumo

    fake = FakeKumo()
    env = {"KUMO_API_KEY": "secret", "KUMO_URL": "http://controller:8787"}

    def run(*args):
        CliRunner().invoke(app, list(args), obj=fake.state(), env=env)
        req = fake.requests[-1]
        return req.method, req.url.path, json.loads(req.content or b"null")

    assert run("images", "create-from", IID, "--name", "web", "--no-reboot") == (
        "POST", f"/v1/instances/{IID}/image", {"name": "web", "no_reboot": True})
    assert run("images", "share", AMI, "--account", "acct-1", "--account", "acct-2") == (
        "PUT", f"/v1/images/{AMI}/launch-permission", {"add": ["acct-1", "acct-2"]})
    assert run("images", "unshare", AMI, "--account", "acct-1") == (
        "PUT", f"/v1/images/{AMI}/launch-permission", {"remove": ["acct-1"]})
    assert run("images", "make-public", AMI)[2] == {"public": True}
    assert run("images", "make-private", AMI)[2] == {"public": False}
    assert run("images", "permissions", AMI)[:2] == ("GET", f"/v1/images/{AMI}/launch-permission")
