"""The pure pieces of volume reconciliation (issue 10): what an instance spec carries, when it is
ready to push, which reports move attachments, what the storage node is asked for, and the
storage client's error translation at its boundary."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import httpx
import pytest

from agent.contract.storage_v1 import VolumeSpec
from agent.contract.v1 import AttachedVolume, InstanceObserved
from controller import specs
from controller.models import Instance, Volume, VolumeAttachmentRow
from controller.services.volume_attachments import observed_changes
from controller.storage import StorageClient, StorageError
from controller.volume_sync import desired_spec, needs_push, wants_export

GIB = 1 << 30
NOW = datetime(2026, 12, 5, tzinfo=timezone.utc)
V1, V2, V3 = "vol-0000000000000000a", "vol-0000000000000000b", "vol-0000000000000000c"
IID = "i-00000000000000001"


def vol(vid: str, *, exported: bool = True, size_gib: int = 1, state: str = "in-use",
        generation: int = 2, acked: int = 2) -> Volume:
    return Volume(volume_id=vid, account_id="acct-1", size_gib=size_gib, state=state,
                  availability_zone="kumo-1a", created_at=NOW, updated_at=NOW,
                  generation=generation, acked_generation=acked,
                  source_host="192.0.2.10" if exported else None,
                  source_port=10809 if exported else None,
                  source_export=vid if exported else None)


def att(vid: str, device: str = "/dev/sdf", state: str = "attached",
        force: bool = False) -> VolumeAttachmentRow:
    return VolumeAttachmentRow(volume_id=vid, instance_id=IID, device=device, state=state,
                               force_detach=force, attach_time=NOW)


def inst(generation: int = 5, acked: int = 5, state: str = "running") -> Instance:
    return Instance.model_construct(instance_id=IID, generation=generation,
                                    acked_generation=acked, state=state)


def obs(generation: int, *vids: str) -> InstanceObserved:
    return InstanceObserved(instance_id=IID, generation=generation, power="running",
                            volumes=[AttachedVolume(device=f"vd{chr(ord('b') + n)}", volume_id=v)
                                     for n, v in enumerate(vids)])


# -- instance specs -------------------------------------------------------------------------
@pytest.mark.parametrize("device,target", [("/dev/sdf", "vdf"), ("/dev/xvdg", "vdg"),
                                           ("/dev/vdz", "vdz"), ("/dev/sdb", "vdb")])
def test_virtio_target(device, target):
    assert specs.virtio_target(device) == target


def test_spec_volumes_carry_attaching_and_attached_but_not_detaching():
    rows = [(att(V1, "/dev/sdg", "attached"), vol(V1)),
            (att(V2, "/dev/xvdf", "attaching"), vol(V2)),
            (att(V3, "/dev/sdh", "detaching"), vol(V3))]
    got = specs.spec_volumes(rows)
    assert [(v.volume_id, v.device) for v in got] == [(V2, "vdf"), (V1, "vdg")]  # by device
    src = got[0].source
    assert (src.protocol, src.host, src.port, src.export) == ("nbd", "192.0.2.10", 10809, V2)
    assert got[0].disk_serial == "vol" + V2[4:]
    assert specs.volumes_pending(rows) == []


def test_an_attachment_without_export_holds_the_spec_back():
    rows = [(att(V1, "/dev/sdf", "attaching"), vol(V1, exported=False)),
            (att(V2, "/dev/sdg", "attached"), vol(V2))]
    assert specs.volumes_pending(rows) == [V1]
    # A detaching one without an export is no reason to wait: it leaves the spec anyway.
    rows = [(att(V1, "/dev/sdf", "detaching"), vol(V1, exported=False))]
    assert specs.volumes_pending(rows) == [] and specs.spec_volumes(rows) == []


def test_build_puts_the_volumes_in_the_spec():
    from controller.models import Host, Image
    i = Instance.model_construct(instance_id=IID, generation=3, power="running", vcpus=1,
                                 memory_mib=512, root_disk_gib=1, image_id="ami-0000000000000000a",
                                 hostname="h", user_data_b64="", ssh_public_key=None,
                                 reboot_nonce=0)
    img = Image.model_construct(image_id="ami-0000000000000000a", sha256="0" * 64, virtual_size=GIB,
                                ready_marker=None, architecture="x86_64")
    host = Host.model_construct(host_id="host-1")
    vols = specs.spec_volumes([(att(V1), vol(V1))])
    spec = specs.build(i, img, host, "http://c:1", None, vols)
    assert [v.volume_id for v in spec.volumes] == [V1]
    assert specs.build(i, img, host, "http://c:1").volumes == []


# -- observed volumes -----------------------------------------------------------------------
def test_attaching_becomes_attached_when_the_current_generation_has_it():
    rows = [(att(V1, state="attaching"), vol(V1)), (att(V2, "/dev/sdg", "attached"), vol(V2))]
    attached, detached = observed_changes(inst(), obs(5, V1, V2), rows)
    assert [a.volume_id for a in attached] == [V1] and detached == []


def test_reports_of_another_generation_are_not_trusted():
    rows = [(att(V1, state="attaching"), vol(V1)), (att(V2, "/dev/sdg", "detaching"), vol(V2))]
    # An older generation: the agent has not seen the attach or the detach yet.
    assert observed_changes(inst(), obs(4, V1), rows) == ([], [])
    # The current generation but not acknowledged (apply_observed did not record it).
    assert observed_changes(inst(acked=4), obs(5, V1), rows) == ([], [])
    # A terminated instance: nothing (its attachments were released).
    assert observed_changes(inst(state="terminated"), obs(5, V1), rows) == ([], [])


def test_detaching_is_detached_once_the_domain_no_longer_has_it():
    rows = [(att(V1, state="detaching"), vol(V1)), (att(V2, "/dev/sdg", "detaching"), vol(V2))]
    attached, detached = observed_changes(inst(), obs(5, V2), rows)
    assert attached == [] and [a.volume_id for a in detached] == [V1]
    # Volumes the agent cannot name (no volume id) count as not present.
    o = InstanceObserved(instance_id=IID, generation=5, power="shutoff",
                         volumes=[AttachedVolume(device="vdf")])
    assert [a.volume_id for a in observed_changes(inst(), o, rows)[1]] == [V1, V2]


# -- what the storage node is asked for -----------------------------------------------------
def test_exported_while_attached_until_the_row_goes_unless_forced():
    assert not wants_export(None)
    assert wants_export(att(V1, state="attaching"))
    assert wants_export(att(V1, state="attached"))
    assert wants_export(att(V1, state="detaching"))  # the host may still be connected
    assert not wants_export(att(V1, state="detaching", force=True))


def test_desired_spec_and_needs_push():
    v = vol(V1, exported=False, size_gib=3, state="creating", generation=1, acked=0)
    assert desired_spec(v, None) == VolumeSpec(volume_id=V1, size_bytes=3 * GIB, exported=False)
    assert needs_push(v, None)
    v = vol(V1, exported=False, state="available")
    assert not needs_push(v, None)
    assert needs_push(v, att(V1, state="attaching"))  # should be exported, is not
    v = vol(V1, exported=True, state="in-use")
    assert not needs_push(v, att(V1))
    assert needs_push(v, att(V1, state="detaching", force=True))  # should no longer be
    assert needs_push(v, None)
    assert not needs_push(vol(V1, state="deleting", generation=3), None)  # deleted, not pushed
    assert not needs_push(vol(V1, state="error", generation=3), None)


# -- the storage client ---------------------------------------------------------------------
def _client(handler) -> StorageClient:
    return StorageClient("http://storage.test", "tok", 5.0,
                         lambda url, tok, t: httpx.Client(
                             base_url=url, headers={"Authorization": f"Bearer {tok}"},
                             transport=httpx.MockTransport(handler)))


def _err(status: int, code: str, retryable: bool) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": "m",
                                                  "retryable": retryable}})


def test_client_translates_error_bodies():
    c = _client(lambda r: _err(409, "VolumeInUse", True))
    with pytest.raises(StorageError) as e:
        c.put_volume(VolumeSpec(volume_id=V1, size_bytes=GIB, exported=False))
    assert (e.value.code, e.value.retryable, e.value.status) == ("VolumeInUse", True, 409)
    c = _client(lambda r: _err(400, "InvalidVolumeSize", False))
    with pytest.raises(StorageError) as e:
        c.put_volume(VolumeSpec(volume_id=V1, size_bytes=GIB, exported=False))
    assert (e.value.code, e.value.retryable, e.value.status) == ("InvalidVolumeSize", False, 400)
    c = _client(lambda r: httpx.Response(502, text="bad gateway"))
    with pytest.raises(StorageError) as e:
        c.list_volumes()
    assert (e.value.code, e.value.retryable) == ("HTTP502", True)


def test_client_transport_failures_and_bad_answers():
    def down(r):
        raise httpx.ConnectError("refused", request=r)
    with pytest.raises(StorageError) as e:
        _client(down).delete_volume(V1)
    assert e.value.code == "StorageUnreachable" and e.value.retryable
    with pytest.raises(StorageError) as e:
        _client(lambda r: httpx.Response(200, json={"nope": 1})).get_volume(V1)
    assert e.value.code == "StorageBadResponse"


def test_client_requests_and_gone_is_success():
    seen = []

    def handler(r: httpx.Request) -> httpx.Response:
        seen.append((r.method, r.url.path, r.headers.get("authorization")))
        if r.method == "PUT":
            body = json.loads(r.content)
            return httpx.Response(200, json={**body, "source": {
                "protocol": "nbd", "host": "192.0.2.10", "port": 10809, "export": V1}})
        if r.method == "GET" and r.url.path == "/v1/volumes":
            return httpx.Response(200, json=[])
        return _err(404, "InvalidVolume.NotFound", False)

    c = _client(handler)
    o = c.put_volume(VolumeSpec(volume_id=V1, size_bytes=GIB, exported=True))
    assert o.exported and o.source.export == V1 and o.size_bytes == GIB
    assert c.list_volumes() == []
    assert c.get_volume(V1) is None
    c.delete_volume(V1)  # already gone: success
    assert seen[0] == ("PUT", f"/v1/volumes/{V1}", "Bearer tok")
    assert [s[:2] for s in seen[1:]] == [("GET", "/v1/volumes"), ("GET", f"/v1/volumes/{V1}"),
                                         ("DELETE", f"/v1/volumes/{V1}")]
