"""Volume attachments as the hosts and the instance lifecycle move them (issue 10).

What users ask for (attach, detach, force) is controller/services/volumes.py's; this module
folds what happens afterwards into the rows, inside the caller's transaction:

- `apply_observed_volumes`: an agent's InstanceObserved (a PUT answer or a heartbeat). Only a
  report of the instance's current generation, acknowledged, is trusted: every attach and detach
  bumps the instance's generation, so that report is the first to reflect it. Then an attaching
  volume the domain has is attached; a detaching one the domain no longer has is detached (the
  row goes, the volume is available, and its generation moves so the storage node unexports it).
- `finish_detach`: the end of a detach, also after a force detach whose unexport the storage
  node confirmed (controller/volume_sync.py).
- `release_on_termination`: a terminated instance lets go of its volumes: delete_on_termination
  ones are deleted; the others are unexported and stay in-use (without attachment) until the
  storage node confirmed the unexport, then become available (controller/volume_sync.py). An
  instance terminated by a deadline may still run on a host that stopped answering: its volume
  must not be handed to another instance while that host can still write to it.

Nothing here calls a host or the storage node; lifecycle.py calls release_on_termination, so
this module does not import lifecycle (no import cycle).
"""
from __future__ import annotations

from sqlmodel import Session, select

from agent.contract.v1 import InstanceObserved
from controller.events import record
from controller.ids import utcnow
from controller.models import Instance, Volume, VolumeAttachmentRow
from controller.services import metering


def attachments_of(s: Session, instance_id: str) -> list[tuple[VolumeAttachmentRow, Volume]]:
    """The instance's attachment rows with their volumes, in device order."""
    q = (select(VolumeAttachmentRow, Volume)
         .join(Volume, Volume.volume_id == VolumeAttachmentRow.volume_id)
         .where(VolumeAttachmentRow.instance_id == instance_id)
         .order_by(VolumeAttachmentRow.device))
    return [(a, v) for a, v in s.exec(q)]


def observed_volume_ids(obs: InstanceObserved) -> set[str]:
    return {v.volume_id for v in obs.volumes if v.volume_id}


def observed_changes(inst: Instance, obs: InstanceObserved,
                     rows: list[tuple[VolumeAttachmentRow, Volume]]
                     ) -> tuple[list[VolumeAttachmentRow], list[VolumeAttachmentRow]]:
    """Pure: (attachments now attached, attachments now detached) by the report `obs`, or two
    empty lists when the report is not of the instance's current, acknowledged generation."""
    if (inst.state == "terminated" or obs.generation != inst.generation
            or inst.acked_generation != inst.generation):
        return [], []
    present = observed_volume_ids(obs)
    attached = [a for a, _ in rows if a.state == "attaching" and a.volume_id in present]
    detached = [a for a, _ in rows if a.state == "detaching" and a.volume_id not in present]
    return attached, detached


def apply_observed_volumes(s: Session, inst: Instance, obs: InstanceObserved) -> None:
    """Fold obs.volumes into the instance's attachments (call after lifecycle.apply_observed,
    which records the acknowledged generation this relies on)."""
    if inst.state == "terminated" or obs.generation != inst.generation:
        return  # cheap exit before any query
    rows = attachments_of(s, inst.instance_id)
    if not rows:
        return
    attached, detached = observed_changes(inst, obs, rows)
    vols = {a.volume_id: v for a, v in rows}
    for a in attached:
        a.state = "attached"
        s.add(a)
        record(s, "volume-attachment", a.volume_id, vols[a.volume_id].account_id, "attaching",
               "attached", f"{inst.instance_id} has it as {a.device}")
    for a in detached:
        finish_detach(s, a, vols[a.volume_id], f"{inst.instance_id} no longer has it")


def finish_detach(s: Session, att: VolumeAttachmentRow, vol: Volume, reason: str) -> None:
    """The host let go of the volume (or the storage node stopped serving it): the attachment
    row goes, the volume is available, and unexported (a generation for the reconciler to push)
    while it still is."""
    s.delete(att)
    record(s, "volume-attachment", att.volume_id, vol.account_id, att.state, "detached", reason)
    _free(s, vol, reason)


def _free(s: Session, vol: Volume, reason: str) -> None:
    if vol.state == "in-use":
        record(s, "volume", vol.volume_id, vol.account_id, "in-use", "available", reason)
        vol.state = "available"
    if vol.source_export is not None:
        vol.generation = max(vol.generation, vol.acked_generation) + 1
    vol.updated_at = utcnow()
    s.add(vol)


def release_on_termination(s: Session, inst: Instance) -> None:
    """The instance is terminated: remove its attachments; delete_on_termination volumes go to
    deleting (the storage node refuses the delete while a host is connected), the others get a
    new generation (unexport) and become available once the node confirmed it."""
    for att, vol in attachments_of(s, inst.instance_id):
        s.delete(att)
        record(s, "volume-attachment", att.volume_id, vol.account_id, att.state, "detached",
               f"{inst.instance_id} terminated")
        if att.delete_on_termination and vol.state in ("creating", "in-use", "available",
                                                         "error"):
            record(s, "volume", vol.volume_id, vol.account_id, vol.state, "deleting",
                   f"delete on termination of {inst.instance_id}")
            vol.state = "deleting"
            vol.updated_at = utcnow()
            metering.volume_ended(s, vol, vol.updated_at)
            s.add(vol)
        else:
            vol.generation = max(vol.generation, vol.acked_generation) + 1
            vol.updated_at = utcnow()
            s.add(vol)
