"""The pure rules of snapshots: ids (EC2's snap- + 17 hex, the storage contract's pattern), the
request body (description without control characters, at most 255), the public shape, list
filters parsed from REST parameters and EC2 filter names, and the storage client functions of
extension "snapshots" (controller/storage_snapshots.py) over a mock transport: the node's answers
and errors at the boundary, DELETE of a snapshot already gone."""
from __future__ import annotations

from datetime import datetime, timezone

import httpx
import pytest
from pydantic import ValidationError

from agent.contract.storage_v1 import SNAPSHOT_ID_RE, SnapshotSpec
from controller.errors import InvalidParameter
from controller.ids import new_id
from controller.models.snapshot import Snapshot, SnapshotCreate
from controller.services import snapshots
from controller.services.snapshots import SnapshotFilters
from controller.storage import StorageClient, StorageError
from controller.storage_snapshots import (delete_snapshot, get_snapshot, list_snapshots,
                                          put_snapshot)

SID = "snap-0123456789abcdef0"
VID = "vol-0123456789abcdef0"


def test_snapshot_ids_match_the_storage_contract():
    for _ in range(50):
        assert SNAPSHOT_ID_RE.fullmatch(new_id("snap"))


@pytest.mark.parametrize("description", ["", "nightly backup", "é ünïcode ✓", "x" * 255,
                                         "a-b_c (d) [e] {f} /g"])
def test_description_accepted(description):
    assert SnapshotCreate(volume_id=VID, description=description).description == description


@pytest.mark.parametrize("description", ["x" * 256, "a\nb", "a\tb", "nul\x00", "del\x7f",
                                         "cr\r", "esc\x1b[31m"])
def test_description_refused(description):
    with pytest.raises(ValidationError):
        SnapshotCreate(volume_id=VID, description=description)


def test_volume_id_required():
    with pytest.raises(ValidationError):
        SnapshotCreate()
    with pytest.raises(ValidationError):
        SnapshotCreate(volume_id="")


def _row(**kw) -> Snapshot:
    now = datetime(2026, 12, 6, tzinfo=timezone.utc)
    base = dict(snapshot_id=SID, account_id="acct-1", volume_id=VID, volume_size_gib=8,
                state="pending", progress="0%", description="d", tags={"a": "b"},
                start_time=now, created_at=now, updated_at=now)
    return Snapshot(**{**base, **kw})


def test_to_public():
    pub = snapshots.to_public(_row())
    assert (pub.snapshot_id, pub.volume_id, pub.volume_size_gib, pub.state, pub.progress,
            pub.owner_id, pub.tags, pub.encrypted, pub.state_message) == (
        SID, VID, 8, "pending", "0%", "acct-1", {"a": "b"}, False, None)
    # The node's refusal shows only in state error.
    assert snapshots.to_public(_row(observed_error="x: retrying")).state_message is None
    assert snapshots.to_public(_row(state="error", observed_error="InvalidVolume.NotFound: gone")
                               ).state_message == "InvalidVolume.NotFound: gone"


def test_filters_from_query():
    f = SnapshotFilters.from_query([("snapshot_id", f"{SID},snap-1"), ("volume-id", VID),
                                    ("status", "pending"), ("status", "completed"),
                                    ("tag:Name", "x"), ("max_results", "5"), ("other", "y")])
    assert f.snapshot_ids == (SID, "snap-1") and f.volume_ids == (VID,)
    assert f.states == ("pending", "completed") and f.tags == {"Name": "x"}
    assert SnapshotFilters.from_query([]) == SnapshotFilters()


def test_filters_from_ec2_names():
    f = SnapshotFilters.from_filters({"snapshot-id": [SID], "volume-id": [VID, ""],
                                      "status": ["error"], "tag:k": ["1", "2"], "tag:e": []})
    assert (f.snapshot_ids, f.volume_ids, f.states, f.tags) == ((SID,), (VID,), ("error",),
                                                                 {"k": "2"})
    with pytest.raises(InvalidParameter) as e:
        SnapshotFilters.from_filters({"owner-id": ["x"]})
    assert e.value.code == "InvalidParameterValue" and e.value.status == 400


# -- the storage client's snapshot calls ----------------------------------------------------
def _client(handler) -> StorageClient:
    return StorageClient("http://storage.test", "tok", 5.0,
                         lambda url, tok, t: httpx.Client(base_url=url,
                                                          transport=httpx.MockTransport(handler)))


def _error(status: int, code: str, retryable: bool = False) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": "m",
                                                  "retryable": retryable}})


def test_put_snapshot_sends_the_spec_and_decodes_the_answer():
    seen = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append((req.method, req.url.path, req.content))
        return httpx.Response(200, json={"snapshot_id": SID, "volume_id": VID,
                                         "size_bytes": 1 << 30})

    obs = put_snapshot(_client(handler), SnapshotSpec(snapshot_id=SID, volume_id=VID))
    assert (obs.snapshot_id, obs.volume_id, obs.size_bytes) == (SID, VID, 1 << 30)
    assert seen[0][:2] == ("PUT", f"/v1/snapshots/{SID}")
    assert httpx.Response(200, content=seen[0][2]).json() == {"snapshot_id": SID,
                                                              "volume_id": VID}


def test_errors_at_the_boundary():
    c = _client(lambda req: _error(404, "InvalidVolume.NotFound"))
    with pytest.raises(StorageError) as e:
        put_snapshot(c, SnapshotSpec(snapshot_id=SID, volume_id=VID))
    assert (e.value.code, e.value.retryable, e.value.status) == ("InvalidVolume.NotFound",
                                                                 False, 404)
    assert get_snapshot(c, SID) is None
    bad = _client(lambda req: httpx.Response(200, json={"nope": 1}))
    with pytest.raises(StorageError) as e:
        put_snapshot(bad, SnapshotSpec(snapshot_id=SID, volume_id=VID))
    assert e.value.code == "StorageBadResponse" and e.value.retryable

    def unreachable(req):
        raise httpx.ConnectError("down", request=req)

    with pytest.raises(StorageError) as e:
        list_snapshots(_client(unreachable))
    assert e.value.code == "StorageUnreachable" and e.value.retryable


def test_delete_already_gone_is_success():
    delete_snapshot(_client(lambda req: httpx.Response(204)), SID)
    delete_snapshot(_client(lambda req: _error(404, "InvalidSnapshot.NotFound")), SID)
    with pytest.raises(StorageError) as e:
        delete_snapshot(_client(lambda req: _error(400, "InvalidSnapshotID.Malformed")), SID)
    assert e.value.code == "InvalidSnapshotID.Malformed"
    with pytest.raises(StorageError) as e:
        delete_snapshot(_client(lambda req: _error(503, "Busy", True)), SID)
    assert e.value.retryable


def test_list_snapshots():
    c = _client(lambda req: httpx.Response(200, json=[
        {"snapshot_id": SID, "volume_id": VID, "size_bytes": 1 << 20}]))
    assert [s.snapshot_id for s in list_snapshots(c)] == [SID]
