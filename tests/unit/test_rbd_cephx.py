"""Per-host cephx for RBD volumes, the pure parts: the contract's VolumeSource.auth_user/auth_key
(extension volumes-rbd-cephx), the disk the agent renders from it (<auth> + secret UUID, the
key never in the XML, defined on libvirt's test driver), the libvirt secret
(agent/libvirt/ceph_secret.py, with a recording connection: the test driver has no secrets),
and the storage node's caps and user calls (agent/storage_node/rbd_cephx.py, with a recording
runner). The real cluster and a real guest: tests/lab/test_rbd_backend_lab.py."""
from __future__ import annotations

import base64
import subprocess
import xml.etree.ElementTree as ET

import libvirt
import pytest
from pydantic import ValidationError

from agent.contract.v1 import EXTENSIONS, VolumeAttachment, VolumeSource, valid_ceph_key
from agent.drivers.base import (CephAuth, DomainDisk, DomainPlan, DriverError, InvalidDevice,
                                NetworkHost, NetworkSource)
from agent.libvirt import ceph_secret
from agent.libvirt.designer import design_domain
from agent.libvirt.disks import from_domain_xml, to_xml_disk
from agent.reconcile.steps import volume_disk
from agent.storage_node.rbd_backend import RbdBackend
from agent.storage_node.rbd_cephx import CephxUsers, Image, node_caps, osd_caps, user_of

VID = "vol-0123456789abcdef0"
KEY = "AQBe7RVrZuKbFRAAlv2s63b68+SjgGmnCB5t6g=="
KEY2 = "AQAd7RVrrkUdDRAAc6Cul2h4zYB72U+za3HSBw=="
RBD = {"protocol": "rbd", "host": "100.64.0.250", "port": 6789, "export": f"kumo/{VID}"}


# -- the contract -----------------------------------------------------------------------------
def test_auth_fields_round_trip_and_are_left_out_when_unset():
    src = VolumeSource(**RBD, auth_user="kumo-host-h1", auth_key=KEY)
    assert VolumeSource.model_validate_json(src.model_dump_json()) == src
    assert src.model_dump() == {**RBD, "auth_user": "kumo-host-h1", "auth_key": KEY}
    assert VolumeSource(**RBD).model_dump() == RBD  # what an older agent accepts
    assert KEY not in repr(src) and "volumes-rbd-cephx" in EXTENSIONS
    assert valid_ceph_key(KEY) and not valid_ceph_key("A" * 38 + "==")


@pytest.mark.parametrize("bad", [
    {"auth_user": "kumo-host-h1"},                                   # no key
    {"auth_key": KEY},                                               # no user
    {"auth_user": "a'b", "auth_key": KEY},
    {"auth_user": "x:id=admin", "auth_key": KEY},                    # QEMU option injection
    {"auth_user": "h1", "auth_key": "AQ" + "x" * 36 + "=="},         # not a cephx key
    {"auth_user": "h1", "auth_key": KEY[:-2] + "A="},
    {"protocol": "nbd", "export": VID, "auth_user": "h1", "auth_key": KEY},
])
def test_bad_auth_is_refused(bad):
    with pytest.raises(ValidationError):
        VolumeSource.model_validate({**RBD, **bad})


# -- the agent's disk -------------------------------------------------------------------------
def _att(**auth) -> VolumeAttachment:
    return VolumeAttachment(volume_id=VID, device="vdb", source=VolumeSource(**RBD, **auth))


def test_volume_disk_names_the_user_and_the_xml_never_the_key():
    disk = volume_disk(_att(auth_user="kumo-host-h1", auth_key=KEY))
    assert disk.source.auth == CephAuth("kumo-host-h1", KEY) and disk.source.auth.key == KEY
    el = to_xml_disk(disk).to_element()
    auth = el.find("source/auth")
    assert auth.get("username") == "kumo-host-h1"
    assert auth.find("secret").attrib == {"type": "ceph",
                                          "uuid": ceph_secret.secret_uuid("kumo-host-h1")}
    assert KEY not in ET.tostring(el, encoding="unicode")
    assert volume_disk(_att()).source.auth is None
    assert to_xml_disk(volume_disk(_att())).to_element().find("source/auth") is None


def test_disk_defined_on_libvirt_reads_back_equal(tmp_path):
    """The test driver parses the XML as libvirt does; the disk read back (no key) equals the
    designed one, so VolumesAttached sees nothing to change."""
    disk = volume_disk(_att(auth_user="kumo-host-h1", auth_key=KEY))
    plan = DomainPlan(name="i-0000000000000ce9f", vcpus=1, memory_mib=64, disks=(disk,),
                      console_log=tmp_path / "console.log")
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXML(design_domain(plan, "qemu").to_xml())
        back = from_domain_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        assert back == (disk,) and back[0].source.auth.key == ""
        dom.undefine()
    finally:
        conn.close()
    # The <auth> of older libvirt, directly in <disk>, reads the same.
    el = to_xml_disk(disk).to_element()
    src = el.find("source")
    auth = src.find("auth")
    src.remove(auth)
    el.append(auth)
    dom_xml = f"<domain><devices>{ET.tostring(el, encoding='unicode')}</devices></domain>"
    assert from_domain_xml(dom_xml) == (disk,)


@pytest.mark.parametrize("user,key", [("a b", KEY), ("a'/><x", KEY), ("h1", "not a key")])
def test_ceph_auth_refuses_what_could_break_out(user, key):
    with pytest.raises(InvalidDevice):
        CephAuth(user, key)


def test_only_rbd_disks_have_a_ceph_user():
    with pytest.raises(InvalidDevice):
        NetworkSource("nbd", VID, (NetworkHost("10.0.0.1", 10809),), CephAuth("h1", KEY))


# -- the libvirt secret -----------------------------------------------------------------------
class _Secret:
    def __init__(self, xml: str):
        self.xml, self.values = xml, []

    def setValue(self, raw: bytes) -> None:  # noqa: N802 (libvirt's name)
        self.values.append(raw)


class _Conn:
    """Records secret calls as libvirt-python's virConnect would answer them."""

    def __init__(self):
        self.secrets: dict[str, _Secret] = {}

    def secretLookupByUUIDString(self, uuid: str) -> _Secret:  # noqa: N802
        if uuid not in self.secrets:
            e = libvirt.libvirtError("no secret")
            e.err = (libvirt.VIR_ERR_NO_SECRET, 0, "no secret", 0, "", None, None, 0, 0)
            raise e
        return self.secrets[uuid]

    def secretDefineXML(self, xml: str) -> _Secret:  # noqa: N802
        uuid = ET.fromstring(xml).findtext("uuid")
        self.secrets[uuid] = _Secret(xml)
        return self.secrets[uuid]


def test_secret_is_private_persistent_ceph_and_holds_the_raw_key():
    el = ET.fromstring(ceph_secret.secret_xml("kumo-host-h1"))
    assert el.attrib == {"ephemeral": "no", "private": "yes"}
    assert el.find("usage").get("type") == "ceph"
    assert el.findtext("uuid") == ceph_secret.secret_uuid("kumo-host-h1")
    assert ceph_secret.secret_uuid("kumo-host-h1") != ceph_secret.secret_uuid("kumo-host-h2")
    conn = _Conn()
    disks = [volume_disk(_att(auth_user="kumo-host-h1", auth_key=KEY)),
             DomainDisk("vdc", NetworkSource("rbd", "kumo/x", (NetworkHost("m", 6789),),
                                             CephAuth("kumo-host-h1", KEY))),
             volume_disk(_att())]
    ceph_secret.ensure_for(conn, disks)
    ceph_secret.ensure_for(conn, disks)  # again: the same secret, its value set again
    [sec] = conn.secrets.values()
    assert sec.values == [base64.b64decode(KEY)] * 2 and len(sec.values[0]) == 28


def test_two_keys_for_one_user_or_none_are_refused():
    a = volume_disk(_att(auth_user="kumo-host-h1", auth_key=KEY))
    b = DomainDisk("vdc", NetworkSource("rbd", "kumo/x", (NetworkHost("m", 6789),),
                                        CephAuth("kumo-host-h1", KEY2)))
    with pytest.raises(DriverError, match="two keys"):
        ceph_secret.auths_of([a, b])
    keyless = DomainDisk("vdc", NetworkSource("rbd", "kumo/x", (NetworkHost("m", 6789),),
                                              CephAuth("kumo-host-h1")))
    with pytest.raises(DriverError, match="without a key"):
        ceph_secret.auths_of([keyless])


# -- the storage node -------------------------------------------------------------------------
def test_osd_caps_name_exactly_the_images_and_parents_read_only():
    caps = osd_caps("kumo", [Image(VID, "10ab", True), Image(None, "10cd", False)],
                    ["10ab", "10cd", "10ef"])
    assert caps.split(", ") == [
        f"allow rx pool=kumo object_prefix rbd_id.{VID}",
        "allow rwx pool=kumo object_prefix rbd_header.10ab",
        "allow rwx pool=kumo object_prefix rbd_data.10ab.",
        "allow rwx pool=kumo object_prefix rbd_object_map.10ab",
        "allow rx pool=kumo object_prefix rbd_header.10cd",
        "allow rx pool=kumo object_prefix rbd_data.10cd.",
        "allow rx pool=kumo object_prefix rbd_object_map.10cd",
        "allow rx pool=kumo object_prefix rbd_info",
        "allow rx pool=kumo object_prefix rbd_mirroring",
        "allow rx pool=kumo object_prefix rbd_directory",
        "allow rx pool=kumo object_prefix rbd_trash",
    ]
    assert osd_caps("kumo", []) == ""
    with pytest.raises(DriverError, match="prefix"):  # 10ab's header prefix reaches 10abc's
        osd_caps("kumo", [Image(VID, "10ab", True)], ["10ab", "10abc"])


@pytest.mark.parametrize("host", ["H1", "h1;rm", "", "a" * 64, "-h"])
def test_user_of_refuses_bad_host_ids(host):
    with pytest.raises(DriverError):
        user_of("kumo-host-", host)


def test_node_caps_limit_auth_commands_to_the_hosts_users():
    caps = node_caps("kumo", "kumo-host-")
    assert caps["osd"] == "profile rbd pool=kumo"
    assert caps["mon"].startswith("profile rbd, ")
    assert caps["mon"].count("with entity prefix client.kumo-host-") == 3


def _done(rc=0, out="", err=""):
    return subprocess.CompletedProcess([], rc, out, err)


def test_cephx_users_make_the_user_once_and_rewrite_caps_only_on_change():
    calls = []
    have: dict[str, str] = {}

    def run(*argv):
        calls.append(argv)
        if argv[:3] == ("ceph", "auth", "get-key"):
            return _done(0, have[argv[3]] + "\n") if argv[3] in have else _done(
                2, err="Error ENOENT: failed to find client.x in keyring")
        if argv[:3] == ("ceph", "auth", "get-or-create"):
            have[argv[3]] = KEY
        return _done()

    u = CephxUsers(run, "kumo-host-")
    assert u.key("h1") == ("kumo-host-h1", KEY)
    assert ("ceph", "auth", "get-or-create", "client.kumo-host-h1", "mon", "profile rbd") in calls
    assert u.set_caps("h1", "allow rx pool=kumo object_prefix rbd_id.x")
    assert calls[-1] == ("ceph", "auth", "caps", "client.kumo-host-h1", "mon", "profile rbd",
                         "osd", "allow rx pool=kumo object_prefix rbd_id.x")
    n = len(calls)
    assert not u.set_caps("h1", "allow rx pool=kumo object_prefix rbd_id.x")  # unchanged
    assert u.set_caps("h1", "")  # no images: no OSD cap at all
    assert calls[n:] == [("ceph", "auth", "caps", "client.kumo-host-h1", "mon", "profile rbd")]


def test_a_cephx_node_needs_the_host_of_an_export(tmp_path):
    b = RbdBackend(tmp_path, "kumo", [NetworkHost("10.0.0.1", 6789)],
                   host_user_prefix="kumo-host-")
    for host, code in ((None, "HostRequired"), ("H1;x", "InvalidParameterValue")):
        with pytest.raises(DriverError) as e:
            b.export(VID, host=host)
        assert e.value.code == code
