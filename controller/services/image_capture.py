"""CreateImage: a new private AMI of the caller's account from one of its instances.

create_image() validates and records the image (state "pending") and its ImageCapture row in one
transaction; advance() - called from the reconciler's tick, and by tests directly - moves every
unfinished capture forward, one idempotent phase at a time, so a controller restart resumes where
it stopped:

  start     the instance runs and no_reboot is false: stop it (services/instances.stop, which
            the reconciler carries to the agent) and remember to start it again -> stopping;
            already stopped, or no_reboot -> capture
  stopping  wait until the instance is stopped -> capture
  capture   snapshot each volume attached to the instance (services/snapshots.create, once per
            capture; right after the stop, or while it runs with no_reboot: crash-consistent)
            and record them as the image's block_device_mappings, then POST
            /v1/instances/{id}/image to its host's agent (allow_running = no_reboot)
  copying   poll the agent; when available, download the file into the controller's image
            store (a background thread; later passes collect it), check it as any imported image (qemu-img info, no backing file, size) and
            verify its sha256 (the image's size, virtual_size, sha256) -> snapshots
  snapshots wait until every snapshot of the mappings is completed (snapshot_sync takes them on
            the storage node) -> the image is available -> cleanup; a snapshot in error or
            deleted fails the image. The instance is started again only after this phase, so a
            snapshot the node has not taken yet never sees writes made after the stop.
  cleanup   DELETE the agent's copy, start the instance again if the capture stopped it -> done

Any failure (the instance terminated meanwhile, the agent's copy failed, a bad download) makes
the image "failed" with a reason and still goes through cleanup. A deregistered pending image
is abandoned the same way. Captures past CAPTURE_DEADLINE_S fail. Snapshots the capture took
stay the owner's (EC2 keeps them too).

block_device_mappings: at create_image, the attached volumes ({device, size_gib}) as a preview;
from the capture phase on, one {device, size_gib, snapshot_id, delete_on_termination: true} per
volume snapshotted. A launch from the image creates each volume from its snapshot
(services/block_devices.py).

With no_reboot the agent reads the disk while the guest runs: the image is crash-consistent at
best (agent/capture.py explains). The download runs in the background
(services/capture_downloads.py), so a large image never holds the reconciler's tick.
"""
from __future__ import annotations

import hashlib
import logging
import os
from datetime import timedelta
from pathlib import Path

from sqlmodel import select

from controller.agents import AgentError, AgentPool
from controller.db import Database
from controller.errors import IncorrectState, KumoError
from controller.events import record
from controller.ids import new_id, utcnow
from controller.models import Host, Image, Instance, Snapshot, Volume, VolumeAttachmentRow
from controller.models.image import CreateImageRequest, ImageCapture
from controller.models.snapshot import SnapshotCreate
from controller.services import (capture_downloads, images, instances, snapshots,
                                 volume_attachments)
from controller.services.accounts import Caller
from controller.services.image_check import check
from controller.settings import Settings

log = logging.getLogger(__name__)

CAPTURE_DEADLINE_S = 4 * 3600
#: Attachment states whose volume the image gets (a detaching one is leaving the instance).
SNAPSHOTTED_ATTACHMENTS = ("attaching", "attached")
#: Instance states an image can be created from (pending and the terminal ones cannot).
CAPTURABLE = ("running", "stopping", "stopped")
GONE = ("shutting-down", "terminated")


def images_dir(settings: Settings) -> Path:
    return settings.state_dir / "images"


def create_image(db: Database, settings: Settings, caller: Caller, instance_id: str,
                 req: CreateImageRequest) -> Image:
    """Validate and record the new image (state pending); advance() does the capture.
    Another account's instance: 404 InvalidInstanceID.NotFound; an instance that is pending,
    shutting down or terminated, or already being captured: 409 IncorrectInstanceState.
    Nothing is changed when refused."""
    with db.session() as s:
        inst = instances.get(s, caller, instance_id)
        if inst.state not in CAPTURABLE:
            raise IncorrectState(f"instance {instance_id} is {inst.state}: an image needs a "
                                 "running or stopped instance")
        busy = s.exec(select(ImageCapture.image_id).where(
            ImageCapture.instance_id == instance_id, ImageCapture.phase != "done")).first()
        if busy is not None:
            raise IncorrectState(f"instance {instance_id} is being captured to {busy} already")
        source = s.get(Image, inst.image_id)
        mappings = [{"device": a.device, "size_gib": v.size_gib}
                    for a, v in s.exec(select(VolumeAttachmentRow, Volume)
                                       .where(VolumeAttachmentRow.instance_id == instance_id,
                                              VolumeAttachmentRow.volume_id == Volume.volume_id)
                                       .order_by(VolumeAttachmentRow.device))]
        image_id = new_id("ami")
        now = utcnow()
        img = Image(image_id=image_id, owner_account_id=caller.account_id, name=req.name,
                    description=req.description, public=False,
                    architecture=source.architecture if source else "x86_64",
                    ready_marker=source.ready_marker if source else None,
                    min_ram_mib=source.min_ram_mib if source else 0, format="qcow2",
                    path=str(images_dir(settings) / f"{image_id}.qcow2"),
                    virtual_size=0, size=0, sha256="", state="pending", created_at=now,
                    source_instance_id=instance_id, block_device_mappings=mappings)
        s.add(img)
        s.flush()
        s.add(ImageCapture(image_id=image_id, instance_id=instance_id, no_reboot=req.no_reboot,
                           created_at=now, updated_at=now))
        record(s, "image", image_id, caller.account_id, None, "pending",
               f"create from {instance_id}" + (" (no reboot)" if req.no_reboot else ""))
        return img


# -- the worker ---------------------------------------------------------------------------------

class _Wait(Exception):
    """Nothing to do in this pass (the phase waits on the instance or the agent)."""


class _Fail(Exception):
    pass


def advance(db: Database, settings: Settings, pool: AgentPool) -> int:
    """Move every unfinished capture forward as far as it can go now; one capture's failure
    never stops the others. Returns how many are still unfinished."""
    with db.session(notify=False) as s:
        ids = list(s.exec(select(ImageCapture.image_id).where(ImageCapture.phase != "done")
                          .order_by(ImageCapture.created_at)))
    left = 0
    for image_id in ids:
        try:
            if not _advance_one(db, settings, pool, image_id):
                left += 1
        except Exception:
            log.exception("image capture %s", image_id)
            left += 1
    return left


def _set_phase(db: Database, image_id: str, phase: str, **extra) -> None:
    with db.session(notify=False) as s:
        cap = s.get(ImageCapture, image_id)
        cap.phase, cap.updated_at = phase, utcnow()
        for k, v in extra.items():
            setattr(cap, k, v)
        s.add(cap)


def _fail(db: Database, image_id: str, reason: str) -> None:
    log.warning("image capture %s failed: %s", image_id, reason)
    with db.session() as s:
        img = s.get(Image, image_id)
        if img.state == "pending":
            img.state, img.state_reason = "failed", reason[:255]
            s.add(img)
            record(s, "image", image_id, img.owner_account_id, "pending", "failed", reason)
        cap = s.get(ImageCapture, image_id)
        cap.phase, cap.updated_at = "cleanup", utcnow()
        s.add(cap)


def _advance_one(db: Database, settings: Settings, pool: AgentPool, image_id: str) -> bool:
    """Run phases until one waits; True when the capture is done."""
    for _ in range(8):
        with db.session(notify=False) as s:
            cap = s.get(ImageCapture, image_id)
            img = s.get(Image, image_id)
            inst = s.get(Instance, cap.instance_id)
            host = s.get(Host, inst.host_id) if inst is not None and inst.host_id else None
            s.expunge_all()
        if cap.phase == "done":
            return True
        try:
            if cap.phase != "cleanup":
                if img.state != "pending":  # deregistered meanwhile: abandon
                    _set_phase(db, image_id, "cleanup")
                    continue
                if utcnow() - cap.created_at > timedelta(seconds=CAPTURE_DEADLINE_S):
                    raise _Fail(f"capture took longer than {CAPTURE_DEADLINE_S} s")
                if inst is None or inst.state in GONE:
                    raise _Fail(f"instance {cap.instance_id} was terminated")
            PHASES[cap.phase](db, settings, pool, cap, img, inst, host)
        except _Wait:
            return False
        except _Fail as e:
            _fail(db, image_id, str(e))
    return False


def _owner(inst: Instance) -> Caller:
    return Caller(account_id=inst.account_id, name="image-capture", is_admin=False)


def _start(db, settings, pool, cap, img, inst, host) -> None:
    if not cap.no_reboot and inst.state in ("running", "pending"):
        try:
            instances.stop(db, settings, _owner(inst), inst.instance_id)
        except KumoError as e:
            raise _Fail(f"cannot stop {inst.instance_id}: {e.message}") from None
        _set_phase(db, cap.image_id, "stopping", restart=True)
    elif inst.state == "stopping":
        _set_phase(db, cap.image_id, "stopping")
    else:
        _set_phase(db, cap.image_id, "capture")


def _stopping(db, settings, pool, cap, img, inst, host) -> None:
    if inst.state != "stopped":
        raise _Wait()
    _set_phase(db, cap.image_id, "capture")


def _agent(pool: AgentPool, host: Host | None, inst: Instance):
    if host is None:
        raise _Fail(f"instance {inst.instance_id} has no host")
    return pool.for_host(host)


def _agent_error(e: AgentError, what: str) -> Exception:
    return _Wait() if e.retryable else _Fail(f"{what}: {e.code}: {e.message}"[:255])


def _capture(db, settings, pool, cap, img, inst, host) -> None:
    if not cap.no_reboot and inst.state != "stopped":
        _set_phase(db, cap.image_id, "start")  # started again meanwhile: stop it again
        return
    _take_snapshots(db, settings, cap, img, inst)
    try:
        _agent(pool, host, inst).start_capture(inst.instance_id, cap.image_id,
                                               allow_running=cap.no_reboot)
    except AgentError as e:
        raise _agent_error(e, "agent refused the capture") from None
    _set_phase(db, cap.image_id, "copying")


def _copying(db, settings, pool, cap, img, inst, host) -> None:
    client = _agent(pool, host, inst)
    try:
        obs = client.get_capture(inst.instance_id, cap.image_id)
    except AgentError as e:
        raise _agent_error(e, "capture status") from None
    if obs is None:  # the agent lost it (e.g. its state directory was wiped): again
        _set_phase(db, cap.image_id, "capture")
        return
    if obs.state == "pending":
        raise _Wait()
    if obs.state == "failed":
        err = obs.error
        raise _Fail(f"agent copy failed: {err.code}: {err.message}" if err else
                    "agent copy failed")
    # In the background (services/capture_downloads.py): the tick goes on meanwhile.
    done = capture_downloads.DOWNLOADS.poll(
        (str(images_dir(settings)), cap.image_id),
        lambda: _download(settings, client, inst.instance_id, cap.image_id, obs.sha256))
    if done is None:
        raise _Wait()
    facts = done.result()  # a failed download raises here, in this pass (_Fail, _Wait)
    with db.session() as s:
        row = s.get(Image, cap.image_id)
        c = s.get(ImageCapture, cap.image_id)
        if row.state != "pending":  # deregistered while downloading
            Path(facts[0]).unlink(missing_ok=True)
            c.phase = "cleanup"
        else:
            row.path, row.virtual_size, row.size, row.sha256 = facts
            s.add(row)
            c.phase = "snapshots"
        c.updated_at = utcnow()
        s.add(c)


def _snapshot_description(cap: ImageCapture) -> str:
    return f"Created by CreateImage({cap.instance_id}) for {cap.image_id}"


def _take_snapshots(db, settings, cap, img, inst) -> None:
    """Snapshot every volume attached to the instance, as its owner, and record the image's
    block_device_mappings; once per capture (a retried capture phase finds them recorded, and a
    pass that failed half way finds the snapshots it took by their description)."""
    done = img.block_device_mappings or []
    if done and all(m.get("snapshot_id") for m in done):
        return
    desc = _snapshot_description(cap)
    with db.session(notify=False) as s:
        rows = [(a.device, v.volume_id, v.state)
                for a, v in volume_attachments.attachments_of(s, inst.instance_id)
                if a.state in SNAPSHOTTED_ATTACHMENTS]
        taken = {sn.volume_id: sn for sn in s.exec(
            select(Snapshot).where(Snapshot.description == desc,
                                   Snapshot.state.not_in(snapshots.GONE)))}
        s.expunge_all()
    if any(state == "creating" for _, vid, state in rows if vid not in taken):
        raise _Wait()  # a volume the storage node has not made yet: nothing to snapshot
    mappings = []
    for device, vid, _ in rows:
        snap = taken.get(vid)
        if snap is None:
            try:
                snap = snapshots.create(db, settings, _owner(inst),
                                        SnapshotCreate(volume_id=vid, description=desc))
            except KumoError as e:
                raise _Fail(f"cannot snapshot {vid} ({device}): {e.code}: {e.message}") from None
        mappings.append({"device": device, "size_gib": snap.volume_size_gib,
                         "snapshot_id": snap.snapshot_id, "delete_on_termination": True})
    with db.session() as s:
        row = s.get(Image, cap.image_id)
        row.block_device_mappings = mappings
        s.add(row)


def _snapshots(db, settings, pool, cap, img, inst, host) -> None:
    ids = [m["snapshot_id"] for m in img.block_device_mappings or [] if m.get("snapshot_id")]
    states: dict[str, str] = {}
    if ids:
        with db.session(notify=False) as s:
            states = dict(s.exec(select(Snapshot.snapshot_id, Snapshot.state)
                                 .where(Snapshot.snapshot_id.in_(ids))).all())
    for sid in ids:
        if states.get(sid) not in ("pending", "completed"):
            Path(img.path).unlink(missing_ok=True)
            raise _Fail(f"snapshot {sid} is {states.get(sid, 'gone')}")
    if any(states[sid] == "pending" for sid in ids):
        raise _Wait()
    with db.session() as s:
        row = s.get(Image, cap.image_id)
        if row.state == "pending":
            row.state = "available"
            s.add(row)
            record(s, "image", row.image_id, row.owner_account_id, "pending", "available",
                   f"captured from {cap.instance_id}"
                   + (f" with {len(ids)} volume snapshot(s)" if ids else ""))
        c = s.get(ImageCapture, cap.image_id)
        c.phase, c.updated_at = "cleanup", utcnow()
        s.add(c)


def _download(settings: Settings, client, instance_id: str, image_id: str,
              sha256: str | None) -> tuple[str, int, int, str]:
    """The capture into the image store, checked like an imported image; (path, virtual size,
    size, sha256)."""
    store = images_dir(settings)
    upload = images.upload_path(store)
    try:
        fd = os.open(upload, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            h = _HashingFile(f)
            try:
                header = client.download_capture(instance_id, image_id, h)
            except AgentError as e:
                raise _agent_error(e, "downloading the capture") from None
        got = h.sha.hexdigest()
        if got != sha256 or (header and header != got):
            raise _Fail(f"downloaded capture has sha256 {got}, the agent said {sha256}")
        try:
            facts = check(upload, "qcow2", settings.max_image_virtual_size)
        except KumoError as e:
            raise _Fail(f"captured image refused: {e.code}: {e.message}") from None
        final = store / f"{image_id}.qcow2"
        os.replace(upload, final)
        return str(final), facts.virtual_size, facts.size, facts.sha256
    finally:
        upload.unlink(missing_ok=True)


class _HashingFile:
    def __init__(self, f) -> None:
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.f.write(data)


def _cleanup(db, settings, pool, cap, img, inst, host) -> None:
    if cap.restart and inst is not None and inst.state in ("stopping", "stopped"):
        if inst.state == "stopping":
            raise _Wait()
        try:
            instances.start(db, settings, _owner(inst), inst.instance_id)
        except KumoError as e:
            log.warning("capture %s: cannot start %s again: %s", cap.image_id,
                        inst.instance_id, e)
    if cap.restart:
        _set_phase(db, cap.image_id, "cleanup", restart=False)
    if inst is not None and host is not None:
        try:
            pool.for_host(host).delete_capture(inst.instance_id, cap.image_id)
        except AgentError as e:
            if e.retryable and inst.state not in GONE:
                raise _Wait() from None
            log.warning("capture %s: agent copy not deleted: %s", cap.image_id, e)
    _set_phase(db, cap.image_id, "done")


PHASES = {"start": _start, "stopping": _stopping, "capture": _capture, "copying": _copying,
          "snapshots": _snapshots, "cleanup": _cleanup}
