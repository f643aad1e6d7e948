"""Where a stopped instance starts (issue 10): on its own host when it can, else on another one.

A stopped instance keeps its slot on its host (services/capacity.py counts it there), so a start
normally goes back to that host. It stays when the host is usable - up, heartbeat younger than
the heartbeat timeout, enabled by the admins - and still fits it (its own slot released first,
as modify does; a host's capacity may shrink with a heartbeat). Otherwise the start places it
with the scheduler's filters and weighers, the same rules as a launch (capacity, the image's
architecture), in the caller's transaction, and moves it there:

- its volumes follow: the new host's spec carries every attached volume (controller/specs.py),
  whose exports on the storage node are per volume, not per host;
- its root disk does not: the overlay is local to the old host (EC2's instance store), so the
  new host creates it again from the instance's image at its root size, and cloud-init and the
  user data run again there. An event says so.

The old host is told to drop the instance by the heartbeat's orphan rule: it reports an
instance the controller no longer assigns to it, and the reconciler DELETEs it there (domain and
root disk), never touching the new host.

Never two running copies: a move happens only when the old host acknowledged the current
(stopped) spec, so the last thing it was told is "keep it shut off"; an agent only powers on
what its spec says. A stopped instance whose host never confirmed that (a start that failed by
its deadline while the host was silent) refuses to move: that host may still run it.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from sqlmodel import Session, select

from controller.errors import IncorrectState, InsufficientCapacity
from controller.events import record
from controller.ids import utcnow
from controller.models import Host, Image, Instance
from controller.models.image import ImageCapture
from controller.scheduler import HostState, NoValidHost, Request, schedule
from controller.services import lifecycle
from controller.services.capacity import GIB, host_states
from controller.settings import Settings


def _request(inst: Instance, architecture: str) -> Request:
    return Request(vcpus=inst.vcpus, memory_mib=inst.memory_mib,
                   disk_bytes=inst.root_disk_gib * GIB, architecture=architecture)


def _fresh(host: Host | None, settings: Settings, now: datetime) -> bool:
    # The liveness check (each reconciler tick) marks silent hosts down; reading the heartbeat
    # age here as well closes the window between a host going silent and that tick.
    return (host is not None and host.state == "up" and host.last_heartbeat is not None
            and now - host.last_heartbeat <= timedelta(seconds=settings.heartbeat_timeout_s))


def _schedule_one(states: list[HostState], want: Request, settings: Settings) -> str:
    return schedule(states, want, 1, cpu_overcommit=settings.cpu_overcommit,
                    weigher=settings.scheduler_weigher)[0]


def stays(s: Session, inst: Instance, settings: Settings, states: list[HostState],
          now: datetime) -> bool:
    """The instance can start on its own host: usable, and it fits with its own slot free."""
    host = s.get(Host, inst.host_id) if inst.host_id else None
    state = next((h for h in states if h.host_id == inst.host_id), None)
    if not _fresh(host, settings, now) or state is None or not state.enabled:
        return False
    without = replace(state, vcpus_used=state.vcpus_used - inst.vcpus,
                      memory_mib_used=state.memory_mib_used - inst.memory_mib,
                      disk_bytes_used=state.disk_bytes_used - inst.root_disk_gib * GIB)
    image = s.get(Image, inst.image_id)
    try:
        _schedule_one([without], _request(inst, image.architecture if image else
                                          state.architecture), settings)
    except NoValidHost:
        return False
    return True


def _check_movable(s: Session, inst: Instance, image: Image | None) -> None:
    if inst.host_id is not None and inst.acked_generation != inst.generation:
        raise IncorrectState(
            f"instance {inst.instance_id} cannot start elsewhere: its host {inst.host_id} cannot "
            "take it now and has not confirmed that the instance is shut off there (it may still "
            "run it); start it again once the host is back, or terminate it")
    if image is None:
        raise IncorrectState(f"instance {inst.instance_id} cannot start elsewhere: its image "
                             f"{inst.image_id} is gone, and a new host re-creates the root disk "
                             "from it")
    busy = s.exec(select(ImageCapture.image_id).where(
        ImageCapture.instance_id == inst.instance_id, ImageCapture.phase != "done")).first()
    if busy is not None:
        raise IncorrectState(f"instance {inst.instance_id} is being captured to {busy} from the "
                             f"root disk on its host {inst.host_id}: it cannot move yet")


def place_for_start(s: Session, inst: Instance, settings: Settings) -> str | None:
    """Where the stopped `inst` starts: None to stay on its host, else the host it moves to
    (not moved yet: `move` does that). InsufficientInstanceCapacity when no host fits,
    IncorrectInstanceState when it must stay but cannot (see _check_movable). Reads the hosts
    under the placement lock of capacity.host_states; changes nothing."""
    now = utcnow()
    states = host_states(s)
    if stays(s, inst, settings, states, now):
        return None
    image = s.get(Image, inst.image_id)
    _check_movable(s, inst, image)
    hosts = {h.host_id: h for h in s.exec(select(Host))}
    # Stale heartbeats count as down here too; the old host is out (it did not fit or is not
    # usable), and its usage still holds this instance's slot, which moves with it.
    candidates = [h if _fresh(hosts.get(h.host_id), settings, now) else replace(h, up=False)
                  for h in states if h.host_id != inst.host_id]
    try:
        return _schedule_one(candidates, _request(inst, image.architecture), settings)
    except NoValidHost as e:
        where = f"its host {inst.host_id} is unavailable or full, and " if inst.host_id else ""
        raise InsufficientCapacity(
            f"cannot start {inst.instance_id} ({inst.instance_type}): {where}no other host fits "
            f"it ({e.reason})") from None


def move(s: Session, inst: Instance, host_id: str) -> None:
    """Reassign the stopped `inst` to `host_id` and record why its root disk is new there.
    The caller transitions it to pending and bumps its generation (the new host's spec)."""
    old = inst.host_id
    host = s.get(Host, host_id)
    inst.host_id = host_id
    # What the old host acknowledged and observed says nothing about the new one: the new host
    # starts from no spec (a fresh root disk, boot count from zero).
    inst.acked_generation = 0
    inst.last_pushed_at = None
    inst.observed_power = None
    inst.observed_booted = False
    inst.observed_boot_count = 0
    inst.reboot_boot_count = 0
    inst.observed_error = None
    lifecycle.set_system_status(s, inst, "ok" if host is not None and host.state == "up"
                                else "host-down")
    s.add(inst)
    record(s, "instance", inst.instance_id, inst.account_id, inst.state, inst.state,
           f"moved from host {old} to host {host_id}: its root disk is re-created there from "
           f"image {inst.image_id} ({inst.root_disk_gib} GiB) and cloud-init runs again; its "
           "volumes follow it")
