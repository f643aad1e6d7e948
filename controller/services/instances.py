"""Instances: launch (validation, client-token idempotency, placement under a lock), describe,
list (filters in SQL, keyset pages), status, and the user actions stop/start/reboot/terminate/
modify and security-group changes. Transitions go through lifecycle.py; the reconciler carries
the resulting desired specs to the agents (each commit wakes it, controller/db.py).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import false
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from controller.db import Database
from controller.events import record
from controller.errors import (IncorrectState, InsufficientCapacity, InvalidParameter, KumoError,
                               NotFound)
from controller.ids import new_id, utcnow
from controller.models import (ClientToken, Host, Instance, InstancePublic, InstanceStatusPublic,
                               RunInstancesRequest, VolumeAttachmentRow)
from controller.models.common import TAG_KEY_RE, TAG_VALUE_RE
from controller.scheduler import NoValidHost, Request, schedule
from controller.services import (block_devices, images, instance_metadata, instance_moves,
                                 instance_network, instance_types, key_pairs, lifecycle, metering,
                                 pagination, vpcs)
from controller.services.capacity import GIB, host_states
from controller.services.pagination import Page, PageRequest
from controller.services.sg_rules import Limits
from controller.settings import Settings

NOT_FOUND = "InvalidInstanceID.NotFound"
MAX_USER_DATA = 16 * 1024
MAX_TAGS = 50
#: Lists page in this order; index (account_id, created_at, instance_id) serves it.
ORDER = pagination.Order(Instance.created_at, Instance.instance_id)

# Placement decisions are serialised in-process; across processes SQLite's BEGIN IMMEDIATE, and
# on PostgreSQL the engine's advisory lock plus SELECT ... FOR UPDATE on the hosts (db.py,
# capacity.host_states).
_placement_lock = threading.Lock()


def to_public(inst: Instance, public_ip: str | None = None,
              group_ids: list[str] | None = None,
              attachments: list[VolumeAttachmentRow] | None = None) -> InstancePublic:
    reason = None
    if inst.state_reason_code:
        reason = {"code": inst.state_reason_code, "message": inst.state_reason_message or ""}
    return InstancePublic.model_validate(inst, from_attributes=True, update={
        "state_reason": reason, "public_ip": public_ip, "security_group_ids": group_ids or [],
        "block_device_mappings": block_devices.describe_rows(attachments or []),
        "metadata_options": instance_metadata.effective(inst)})


def describe(db: Database, rows: list[Instance]) -> list[InstancePublic]:
    """Public shapes of `rows`, with their public IPs, groups and volumes loaded in three
    queries."""
    with db.session() as s:
        return _describe(s, rows)


def _describe(s: Session, rows: list[Instance]) -> list[InstancePublic]:
    ids = [i.instance_id for i in rows]
    pubs = instance_network.public_ips(s, ids)
    groups = instance_network.group_ids(s, ids)
    atts: dict[str, list[VolumeAttachmentRow]] = {}
    if ids:
        for a in s.exec(select(VolumeAttachmentRow)
                        .where(VolumeAttachmentRow.instance_id.in_(ids))):
            atts.setdefault(a.instance_id, []).append(a)
    return [to_public(i, pubs.get(i.instance_id), groups.get(i.instance_id),
                      atts.get(i.instance_id)) for i in rows]


def _check_tags(tags: dict[str, str]) -> None:
    if len(tags) > MAX_TAGS:
        raise InvalidParameter(f"at most {MAX_TAGS} tags", code="InvalidTag")
    for k, v in tags.items():
        if not TAG_KEY_RE.match(k) or k.lower().startswith("kumo:") or not TAG_VALUE_RE.match(v):
            raise InvalidParameter(
                f"invalid tag {k!r}: keys 1-128 and values 0-256 of letters, digits, spaces "
                "and _ . : / = + - @ (the kumo: prefix is reserved)", code="InvalidTag")


def _user_data(b64: str | None) -> str:
    if not b64:
        return ""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameter("user_data is not valid base64",
                               code="InvalidUserData.Malformed") from None
    if len(raw) > MAX_USER_DATA:
        raise InvalidParameter(f"user_data is {len(raw)} bytes; the limit is {MAX_USER_DATA}",
                               code="InvalidParameterValue")
    return base64.b64encode(raw).decode()


def _request_hash(req: RunInstancesRequest) -> str:
    # Without mappings the hash is what it was before they existed (stored tokens still match).
    exclude = ({"client_token"} | (set() if req.block_device_mappings
                                   else {"block_device_mappings"})
               | (set() if req.metadata_options is not None else {"metadata_options"})
               | (set() if req.nocloud_seed is not None else {"nocloud_seed"}))
    doc = req.model_dump(exclude=exclude)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _by_reservation(s: Session, account_id: str, reservation_id: str) -> list[Instance]:
    return list(s.exec(select(Instance).where(Instance.account_id == account_id,
                                              Instance.reservation_id == reservation_id)
                       .order_by(Instance.created_at, Instance.instance_id)))


def _replay(s: Session, account_id: str, token: str, digest: str):
    ct = s.exec(select(ClientToken).where(ClientToken.account_id == account_id,
                                          ClientToken.token == token)).first()
    if ct is None:
        return None
    if ct.request_hash != digest:
        raise InvalidParameter("client_token was used with different parameters",
                               code="IdempotentParameterMismatch")
    return ct.reservation_id, _by_reservation(s, account_id, ct.reservation_id)


def run(db: Database, settings: Settings, caller, req: RunInstancesRequest):
    """-> (reservation_id, [Instance]). Nothing is created when any check fails."""
    if req.min_count > req.max_count:
        raise InvalidParameter("min_count must not exceed max_count",
                               code="InvalidParameterCombination")
    if req.private_ip is not None and req.max_count > 1:
        raise InvalidParameter("private_ip names one address: launch one instance with it",
                               code="InvalidParameterCombination")
    if req.subnet_id is None:
        vpcs.ensure_default(db, caller.account_id)
    _check_tags(req.tags)
    user_data = _user_data(req.user_data)
    digest = _request_hash(req)
    with _placement_lock:
        try:
            with db.session() as s:
                if req.client_token:
                    replay = _replay(s, caller.account_id, req.client_token, digest)
                    if replay:
                        return replay
                return _launch(s, settings, caller, req, user_data, digest)
        except IntegrityError:
            # Another process won the race for this client token: answer with its reservation.
            if not req.client_token:
                raise
            with db.session() as s:
                replay = _replay(s, caller.account_id, req.client_token, digest)
            if replay is None:
                raise KumoError("launch conflict, retry", retryable=True)
            return replay


def _launch(s: Session, settings: Settings, caller, req: RunInstancesRequest, user_data: str,
            digest: str):
    image = images.get(s, caller, req.image)
    itype = instance_types.resolve_for_launch(s, req.instance_type)
    ssh_key = None
    if req.key_name is not None:
        ssh_key = key_pairs.get(s, caller.account_id, req.key_name).public_key
    devices = block_devices.validate(s, settings, caller, req.block_device_mappings, image=image,
                                     root_disk_gib=req.root_disk_gib)
    image_gib = max(1, math.ceil(image.virtual_size / GIB))
    root_gib = next((g for g in (req.root_disk_gib, devices.root_gib) if g is not None),
                    image_gib)
    if root_gib * GIB < image.virtual_size:
        raise InvalidParameter(f"root disk {root_gib} GiB is smaller than the image "
                               f"({image.virtual_size} bytes)", code="InvalidBlockDeviceMapping")
    if image.min_ram_mib and itype.memory_mib < image.min_ram_mib:
        raise InvalidParameter(f"image needs {image.min_ram_mib} MiB; {itype.name} has "
                               f"{itype.memory_mib}", code="InvalidParameterCombination")
    metadata_options = instance_metadata.resolve_options(req.metadata_options)
    where = instance_network.resolve(s, caller, req.subnet_id, req.security_group_ids,
                                     req.associate_public_ip,
                                     Limits.from_settings(settings))
    want = Request(vcpus=itype.vcpus, memory_mib=itype.memory_mib, disk_bytes=root_gib * GIB,
                   architecture=image.architecture)
    placement = _place(host_states(s), want, req, settings)
    block_devices.check_quota(s, settings, caller.account_id, devices, len(placement))
    now = utcnow()
    reservation_id = new_id("r")
    hosts = {h.host_id: h for h in s.exec(select(Host))}
    macs = instance_network.taken_macs(s, where.vpc.vpc_id)
    created = []
    for host_id in placement:
        host = hosts[host_id]
        inst = Instance(
            instance_id=new_id("i"), reservation_id=reservation_id, account_id=caller.account_id,
            image_id=image.image_id, instance_type=itype.name, vcpus=itype.vcpus,
            memory_mib=itype.memory_mib, root_disk_gib=root_gib, key_name=req.key_name,
            ssh_public_key=ssh_key, user_data_b64=user_data, tags=dict(req.tags),
            state="pending", instance_status="initializing",
            system_status="ok" if host.state == "up" else "host-down", host_id=host_id,
            client_token=req.client_token, metadata_options=dict(metadata_options),
            nocloud_seed=image.nocloud_seed if req.nocloud_seed is None else req.nocloud_seed,
            created_at=now, updated_at=now)
        instance_network.attach(s, inst, where, settings.public_pool, macs, req.private_ip)
        # Record the launch as None -> pending (with the pending deadline).
        inst.state = None  # type: ignore[assignment]
        lifecycle.transition(s, inst, "pending", settings, reason="launched", now=now)
        inst.instance_status = "initializing"
        block_devices.apply(s, devices, inst)
        created.append(inst)
    if req.client_token:
        s.add(ClientToken(account_id=caller.account_id, token=req.client_token,
                          request_hash=digest, reservation_id=reservation_id, created_at=now))
    s.flush()
    # Same order as lists use (created_at, then id).
    return reservation_id, sorted(created, key=lambda i: i.instance_id)


def _place(states, want: Request, req: RunInstancesRequest, settings: Settings) -> list[str]:
    for count in dict.fromkeys((req.max_count, req.min_count)):
        try:
            return schedule(states, want, count, cpu_overcommit=settings.cpu_overcommit,
                            weigher=settings.scheduler_weigher)
        except NoValidHost:
            continue
    raise InsufficientCapacity(
        f"not enough capacity for {req.min_count} x {req.instance_type}")


def get(s: Session, caller, instance_id: str) -> Instance:
    inst = s.get(Instance, instance_id)
    if inst is None or (inst.account_id != caller.account_id and not caller.is_admin):
        raise NotFound(f"instance {instance_id} not found", code=NOT_FOUND)
    return inst


@dataclass(frozen=True)
class InstanceFilters:
    """What a list of instances is filtered on; each filter runs in SQL, all of them must hold.
    Empty means no filter (states and ids: any of them; tags: every key with its value)."""

    states: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_query(cls, params: Iterable[tuple[str, str]]) -> "InstanceFilters":
        """From REST query parameters: `state` and `instance_id` (repeatable, each a comma
        separated list) and `tag:<key>=<value>`; other parameters are not filters."""
        params = list(params)

        def values(name: str) -> tuple[str, ...]:
            return tuple(v for k, raw in params if k == name for v in raw.split(",") if v)
        return cls(states=values("state"), ids=values("instance_id"),
                   tags={k[4:]: v for k, v in params if k.startswith("tag:")})


def _filtered(caller, filters: InstanceFilters):
    q = select(Instance)
    if not caller.is_admin:
        q = q.where(Instance.account_id == caller.account_id)
    if filters.states:
        q = q.where(Instance.state.in_(filters.states))
    if filters.ids:
        q = q.where(Instance.instance_id.in_(filters.ids))
    if any(not TAG_KEY_RE.match(k) for k in filters.tags):
        # No instance can carry such a key, and it must never reach a JSON path.
        return q.where(false())
    for k, v in filters.tags.items():  # through the JSON column (json_extract / ->>)
        q = q.where(Instance.tags[k].as_string() == v)
    return q


def list_instances(s: Session, caller, *, states: list[str], ids: list[str],
                   tags: dict[str, str], limit: int,
                   after: tuple[datetime, str] | None = None) -> list[Instance]:
    """Up to `limit` instances in (created_at, instance_id) order, starting strictly after the
    key `after`."""
    q = _filtered(caller, InstanceFilters(tuple(states), tuple(ids), dict(tags)))
    return list(s.exec(ORDER.select_page(q, after, limit)))


def list_page(db: Database, caller, page: PageRequest,
              filters: InstanceFilters = InstanceFilters()) -> Page[InstancePublic]:
    """One keyset page of the instances the caller sees (services/pagination.py): an account
    can hold tens of thousands, and a late page costs what the first one does."""
    with db.session() as s:
        return pagination.list_page(s, _filtered(caller, filters), ORDER, page,
                                    lambda rows: _describe(s, rows))


def status(db: Database, caller, instance_id: str) -> InstanceStatusPublic:
    """The instance's state and status checks, with what the agent last reported."""
    with db.session() as s:
        inst = get(s, caller, instance_id)
    reason = ({"code": inst.state_reason_code, "message": inst.state_reason_message}
              if inst.state_reason_code else None)
    return InstanceStatusPublic(
        instance_id=inst.instance_id, state=inst.state, instance_status=inst.instance_status,
        system_status=inst.system_status,
        details={"observed_power": inst.observed_power, "booted": inst.observed_booted,
                 "boot_count": inst.observed_boot_count, "agent_error": inst.observed_error,
                 "state_reason": reason, "generation": inst.generation,
                 "acked_generation": inst.acked_generation})


def stop(db: Database, settings: Settings, caller, instance_id: str, force: bool = False):
    with db.session() as s:
        inst = get(s, caller, instance_id)
        if inst.state in ("shutting-down", "terminated"):
            raise IncorrectState(f"instance {instance_id} is {inst.state}")
        if inst.state in ("pending", "running"):
            lifecycle.transition(s, inst, "stopping", settings,
                                 reason="user stop" + (" (forced)" if force else ""),
                                 code="Client.UserInitiatedShutdown",
                                 message="User initiated shutdown")
            lifecycle.bump(inst)
        elif inst.state == "stopping" and force:
            lifecycle.transition(s, inst, "stopping", settings, reason="forced stop re-sent")
            lifecycle.bump(inst)
        return inst


def start(db: Database, settings: Settings, caller, instance_id: str):
    """Start a stopped instance: on its host when usable and it fits, else on another host the
    scheduler picks (services/instance_moves.py), in this transaction. No host fits: 503
    InsufficientInstanceCapacity and nothing changes."""
    # Under the placement lock: a move consumes capacity on its new host as a launch does.
    with _placement_lock, db.session() as s:
        inst = get(s, caller, instance_id)
        if inst.state in ("stopping", "shutting-down", "terminated"):
            raise IncorrectState(f"instance {instance_id} is {inst.state}")
        if inst.state == "stopped":
            target = instance_moves.place_for_start(s, inst, settings)
            if target is not None:
                instance_moves.move(s, inst, target)
            lifecycle.transition(s, inst, "pending", settings, reason="user start")
            lifecycle.bump(inst)
        return inst


def reboot(db: Database, settings: Settings, caller, instance_id: str):
    with db.session() as s:
        inst = get(s, caller, instance_id)
        if inst.state != "running":
            raise IncorrectState(f"instance {instance_id} is {inst.state}, not running")
        inst.reboot_nonce += 1
        inst.reboot_boot_count = inst.observed_boot_count
        inst.reboot_pending = True
        lifecycle.bump(inst)
        lifecycle.set_instance_status(s, inst, "initializing", "reboot requested")
        inst.status_deadline = utcnow() + timedelta(seconds=settings.status_deadline_s)
        inst.updated_at = utcnow()
        s.add(inst)
        record(s, "instance", inst.instance_id, inst.account_id, "running", "running", "reboot")
        return inst


def terminate(db: Database, settings: Settings, caller, instance_id: str):
    """Idempotent: terminating a shutting-down or terminated instance answers its state."""
    with db.session() as s:
        inst = get(s, caller, instance_id)
        if inst.state not in ("shutting-down", "terminated"):
            lifecycle.transition(s, inst, "shutting-down", settings, reason="user terminate",
                                 code="Client.UserInitiatedShutdown",
                                 message="User initiated shutdown")
        return inst


def set_security_groups(db: Database, settings: Settings, caller, instance_id: str,
                        group_ids: list[str]) -> Instance:
    """Change a live instance's security groups; in force on its host within a second."""
    with db.session() as s:
        inst = get(s, caller, instance_id)
        if inst.state in ("shutting-down", "terminated"):
            raise IncorrectState(f"instance {instance_id} is {inst.state}")
        if inst.vpc_id is None:
            raise IncorrectState(f"instance {instance_id} is in no VPC")
        before = instance_network.group_ids(s, [inst.instance_id]).get(inst.instance_id, [])
        new = instance_network.set_groups(s, inst, group_ids,
                                          Limits.from_settings(settings))
        if sorted(new) != sorted(before):
            # The instance's metadata lists its groups: its spec carries the new document.
            lifecycle.bump(inst)
            s.add(inst)
        record(s, "instance", inst.instance_id, inst.account_id, inst.state, inst.state,
               "security groups: " + ", ".join(new))
        return inst


def modify(db: Database, settings: Settings, caller, instance_id: str,
           type_name: str | None = None, root_disk_gib: int | None = None):
    """Change the type of a stopped instance and/or grow the root disk of a live one (running,
    pending, stopping or stopped). Every check passes before anything changes; asking for what
    the instance already has is a no-op."""
    if type_name is None and root_disk_gib is None:
        raise InvalidParameter("give instance_type or root_disk_gib (or both)")
    with _placement_lock, db.session() as s:
        inst = get(s, caller, instance_id)
        if inst.state in ("shutting-down", "terminated"):
            raise IncorrectState(f"instance {instance_id} is {inst.state}")
        if type_name is not None and inst.state != "stopped":
            raise IncorrectState(f"instance {instance_id} must be stopped to change its type")
        itype = instance_types.resolve_for_launch(s, type_name) if type_name is not None else None
        if itype is not None and itype.name == inst.instance_type:
            itype = None
        if root_disk_gib is not None and root_disk_gib < inst.root_disk_gib:
            raise InvalidParameter(f"instance {instance_id} has a {inst.root_disk_gib} GiB root "
                                   f"disk: the root disk only grows")
        new_root = root_disk_gib if root_disk_gib is not None else inst.root_disk_gib
        if itype is None and new_root == inst.root_disk_gib:
            return inst
        vcpus = itype.vcpus if itype is not None else inst.vcpus
        memory_mib = itype.memory_mib if itype is not None else inst.memory_mib
        state = next((h for h in host_states(s) if h.host_id == inst.host_id), None)
        if state is not None:
            # The instance stays on its host: check that host fits the new size instead.
            without = replace(state, vcpus_used=state.vcpus_used - inst.vcpus,
                              memory_mib_used=state.memory_mib_used - inst.memory_mib,
                              disk_bytes_used=state.disk_bytes_used - inst.root_disk_gib * GIB,
                              up=True, enabled=True)
            try:
                schedule([without], Request(vcpus, memory_mib, new_root * GIB), 1,
                         cpu_overcommit=settings.cpu_overcommit)
            except NoValidHost:
                what = itype.name if itype is not None else f"a {new_root} GiB root disk"
                raise InsufficientCapacity(f"host has no room for {what}") from None
        if itype is not None:
            record(s, "instance", inst.instance_id, inst.account_id, inst.state, inst.state,
                   f"instance type {inst.instance_type} -> {itype.name}")
            inst.instance_type, inst.vcpus, inst.memory_mib = itype.name, vcpus, memory_mib
        if new_root != inst.root_disk_gib:
            record(s, "instance", inst.instance_id, inst.account_id, inst.state, inst.state,
                   f"root disk {inst.root_disk_gib} -> {new_root} GiB")
            inst.root_disk_gib = new_root
            metering.root_disk(s, inst)  # the bigger disk is billed from now
        inst.updated_at = utcnow()
        lifecycle.bump(inst)
        s.add(inst)
        return inst
