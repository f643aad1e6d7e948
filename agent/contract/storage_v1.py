"""Version 1 of the storage node's wire contract: how the controller drives a storage service.

A storage node keeps Kumo's volumes (agent/drivers/volumes.py is the backend contract behind it)
and serves them to hosts over the network: as NBD exports, or as Ceph RBD images
(StorageInfo.protocol; every VolumeObserved.source of a node has that protocol). The controller owns which volumes exist, how big they
are and which are exported (served to hosts); the node owns what really is. Like the host agents'
contract (v1.py), every request is a full desired state, idempotent, and the answer is what is
observed after applying it.

HTTP surface of a storage node (JSON, bearer token = the deployment's agent token):
  GET    /v1/storage                    -> StorageInfo
  GET    /v1/volumes                    -> list[VolumeObserved], sorted by volume id
  PUT    /v1/volumes/{volume_id}        <- VolumeSpec -> VolumeObserved
         creates the volume when missing (empty), grows it when the spec is larger, exports or
         unexports it as `exported` says. Smaller than the volume is 400 InvalidVolumeSize and
         changes nothing; growing while a host is connected, where the backend cannot, is
         409 VolumeInUse (retryable: it succeeds once the host let go). Unexporting while a
         host is connected is 409 VolumeInUse too, unless the spec says `disconnect`: then the
         node cuts the connected hosts off (a force detach) and stops serving it.
  GET    /v1/volumes/{volume_id}        -> VolumeObserved (404 InvalidVolume.NotFound)
  DELETE /v1/volumes/{volume_id}        -> 204: unexports and deletes it; also when already gone.
         A host still connected answers 409 VolumeInUse and nothing is deleted.

Extension "snapshots" (a node lists it in StorageInfo.extensions; agent/storage_node/
snapshot_routes.py): crash-consistent, copy-on-write snapshots of volumes, which outlive them.
  PUT    /v1/volumes/{volume_id}        VolumeSpec.from_snapshot: a volume that does not exist yet
         is created with that snapshot's content (404 InvalidSnapshot.NotFound; a size smaller
         than the snapshot's is 400 InvalidVolumeSize). Ignored once the volume exists.
  GET    /v1/snapshots                  -> list[SnapshotObserved], sorted by snapshot id
  PUT    /v1/snapshots/{snapshot_id}    <- SnapshotSpec -> SnapshotObserved
         takes the snapshot of the volume, exported (a host writing) or not; the same spec again
         answers the existing snapshot. An id that names a snapshot of another volume is
         400 IdempotentParameterMismatch; a missing volume 404 InvalidVolume.NotFound.
  GET    /v1/snapshots/{snapshot_id}    -> SnapshotObserved (404 InvalidSnapshot.NotFound)
  DELETE /v1/snapshots/{snapshot_id}    -> 204; also when already gone. Deleting a volume keeps
         its snapshots.
  A malformed snapshot id is 400 InvalidSnapshotID.Malformed.

Extension "snapshot-stored-bytes" (with "snapshots"; issue 13, billing):
SnapshotObserved.stored_bytes, what the snapshot really stores, in the answer of
PUT /v1/snapshots/{snapshot_id} (listings leave it out: measuring costs a tool run per
snapshot). A node without it answers no such field; the controller then bills the volume's size.
Upgrade controllers before nodes: an older controller refuses the unknown field.

Extension "disconnect" (StorageInfo.extensions): VolumeSpec.disconnect, the force detach. With
exported=False it cuts every connected host off before the export stops (NBD: the node closes
their connections), so the unexport cannot be refused with VolumeInUse and no host can read or
write the volume afterwards: it may then be served to another host ("never read-write from
two"). The cut-off guest sees I/O errors on that disk.

Extension "export-host" (issue 14, docs/security.md "Storage access"): VolumeSpec.host, the host
the volume's attachment is for. A node serving NBD over TLS per host opens the export only to
that host's certificate (CN = the host id): exported for another host, the export moves (and
the source's port changes: each host has its own NBD server). Such a node refuses an export
without a host (400 HostRequired); a node serving every host alike ignores it. The field is
left out when unset; when set, an older node refuses it (extra fields are forbidden): upgrade
nodes before controllers.
Errors are {"error": {"code", "message", "retryable"}}, as the host agents answer them.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_serializer

from agent.contract.v1 import VOLUME_ID_RE, VolumeSource

CONTRACT_VERSION = "v1"
#: Named additive extensions this storage node implements.
EXTENSIONS: tuple[str, ...] = ("snapshots", "disconnect", "snapshot-stored-bytes",
                               "export-host")
#: A host id (the CN of its certificate from the cloud CA).
HOST_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

VolumeId = Annotated[str, StringConstraints(pattern=VOLUME_ID_RE.pattern)]
#: EC2 style: "snap-" + 17 lowercase hex (as agent/drivers/volumes.SNAPSHOT_ID_RE).
SNAPSHOT_ID_RE = re.compile(r"^snap-[0-9a-f]{17}$")
SnapshotId = Annotated[str, StringConstraints(pattern=SNAPSHOT_ID_RE.pattern)]
MiB = 1 << 20


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageInfo(_Wire):
    """The node and its backend."""

    #: The node's name in the deployment (e.g. "sn1").
    node_id: str
    contract_version: str = CONTRACT_VERSION
    extensions: list[str] = Field(default_factory=list)
    #: The backend's protocol towards hosts: "nbd" (qemu-storage-daemon) or "rbd" (Ceph); every
    #: VolumeObserved.source of the node has this protocol.
    protocol: Literal["nbd", "rbd"] = "nbd"
    #: The backend's capabilities (agent/drivers/volumes.py), e.g. "grow_exported".
    capabilities: list[str] = Field(default_factory=list)
    #: How many volumes it keeps, and their provisioned bytes in total.
    volume_count: int = 0
    provisioned_bytes: int = 0


class VolumeSpec(_Wire):
    """The full desired state of one volume on the node."""

    volume_id: VolumeId
    #: Whole MiB, > 0. Volumes only grow: a smaller size than the volume has is refused.
    size_bytes: int = Field(gt=0, multiple_of=MiB)
    #: Serve it to hosts (an instance has it attached, or is attaching it).
    exported: bool = False
    #: Extension "snapshots": create the volume with this snapshot's content (size_bytes at least
    #: the snapshot's). Used only when the volume is created; ignored once it exists.
    from_snapshot: SnapshotId | None = None
    #: Extension "disconnect": with exported=False, hosts still connected are cut off and the
    #: export stops anyway (a force detach), instead of 409 VolumeInUse. Ignored when exported.
    disconnect: bool = False
    #: Extension "export-host": the host the attachment is for (with exported), whom a node
    #: with per-host TLS serves it to, and no other.
    host: Annotated[str, StringConstraints(pattern=HOST_ID_RE.pattern)] | None = None

    @model_serializer(mode="wrap")
    def _omit_unset_extension(self, handler: Any) -> dict[str, Any]:
        """Extension fields are left out when unset (from_snapshot None, disconnect False), so
        a spec without them is exactly the base contract's: a node without those extensions
        (extra fields forbidden) accepts it."""
        data = handler(self)
        if data.get("from_snapshot") is None:
            data.pop("from_snapshot", None)
        if data.get("disconnect") is False:
            data.pop("disconnect", None)
        if data.get("host") is None:
            data.pop("host", None)
        return data


class VolumeObserved(_Wire):
    """One volume as the node has it now."""

    volume_id: VolumeId
    size_bytes: int
    exported: bool
    #: Where hosts attach it while exported (what InstanceSpec.volumes[].source carries): an
    #: NBD export (host:port of the node, export = the volume id) or an RBD image (host:port of
    #: a Ceph monitor, export = "pool/volume-id"). Validated as the hosts' contract does.
    source: VolumeSource | None = None


class SnapshotSpec(_Wire):
    """Extension "snapshots": a snapshot that should exist (PUT /v1/snapshots/{snapshot_id})."""

    snapshot_id: SnapshotId
    #: The volume it is taken of. A snapshot never changes volume: the same id with another
    #: volume is refused.
    volume_id: VolumeId


class SnapshotObserved(_Wire):
    """Extension "snapshots": one snapshot as the node has it."""

    snapshot_id: SnapshotId
    #: The volume it was taken of (which may since have been deleted).
    volume_id: VolumeId
    #: The volume's size when the snapshot was taken: a volume made from it is at least this big.
    size_bytes: int
    #: Extension "snapshot-stored-bytes": the bytes the snapshot stores (NBD: `qemu-img measure`
    #: of it; RBD: `rbd du`), measured when PUT answers; None (left out) in listings and from
    #: nodes without the extension.
    stored_bytes: int | None = Field(default=None, ge=0)

    @model_serializer(mode="wrap")
    def _omit_unmeasured(self, handler: Any) -> dict[str, Any]:
        """stored_bytes is left out when None, so an answer without it is exactly the
        extension-less contract's (what a controller from before it accepts)."""
        data = handler(self)
        if data.get("stored_bytes") is None:
            data.pop("stored_bytes", None)
        return data
