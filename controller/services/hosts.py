"""Hosts: heartbeats register and refresh them (and carry observed instance state), missed
heartbeats mark them down (their instances' system status becomes host-down), admins list them
and disable and enable them for scheduling.

Heartbeats and the liveness check commit without waking the reconciler (db.session's
notify=False): they record what agents observe, and the reconciler's periodic tick (which runs
the liveness check itself) carries their consequences to the agents.
"""
from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session, select

from agent.contract.v1 import CONTRACT_VERSION, HeartbeatRequest
from controller.db import Database
from controller.errors import InvalidParameter, NotFound
from controller.events import record
from controller.ids import utcnow
from controller.models import Host, HostPublic, Instance
from controller.services import (host_health, lifecycle, nat_metering, pagination,
                                 volume_attachments)
from controller.services.capacity import Usage, usage_by_host
from controller.services.host_health import HostHealth
from controller.services.pagination import Page, PageRequest
from controller.settings import Settings

ORDER = pagination.Order(Host.host_id)

# A heartbeat built this long after a push saw that push (the agent answered it before sending).
_PUSH_VISIBILITY_S = 2.0
# The largest values the integer columns a heartbeat fills can hold (Integer, BigInteger).
_INT_MAX, _BIGINT_MAX = 2**31 - 1, 2**63 - 1


def to_public(h: Host, u: Usage | None, health: HostHealth | None = None) -> HostPublic:
    u = u or Usage()
    health = health or HostHealth()
    return HostPublic.model_validate(h, from_attributes=True, update={
        "vcpus_used": u.vcpus, "memory_mib_used": u.memory_mib, "disk_bytes_used": u.disk_bytes,
        "health": health.health, "health_reasons": health.reasons,
        "heartbeat_age_s": health.heartbeat_age_s})


def _publics(s: Session, rows: list[Host], settings: Settings | None) -> list[HostPublic]:
    used = usage_by_host(s)
    interval = settings.heartbeat_interval_s if settings is not None else \
        Settings.model_fields["heartbeat_interval_s"].default
    health = host_health.assess_all(s, rows, utcnow(), interval)
    return [to_public(h, used.get(h.host_id), health[h.host_id]) for h in rows]


def list_page(db: Database, page: PageRequest,
              settings: Settings | None = None) -> Page[HostPublic]:
    """Every host with what its instances commit and its health, in host id order."""
    with db.session() as s:
        return pagination.list_page(s, select(Host), ORDER, page,
                                    lambda rows: _publics(s, list(rows), settings))


def get(s: Session, host_id: str) -> Host:
    h = s.get(Host, host_id)
    if h is None:
        raise NotFound(f"host {host_id} not found", code="InvalidHostID.NotFound")
    return h


def describe(db: Database, host_id: str, settings: Settings | None = None) -> HostPublic:
    with db.session() as s:
        return _publics(s, [get(s, host_id)], settings)[0]


def set_enabled(db: Database, host_id: str, enabled: bool) -> HostPublic:
    with db.session() as s:
        h = get(s, host_id)
        if h.enabled != enabled:
            h.enabled = enabled
            record(s, "host", host_id, None, "enabled" if not enabled else "disabled",
                   "enabled" if enabled else "disabled", "admin")
        s.add(h)
        return _publics(s, [h], None)[0]


def _set_system_status(s: Session, host_id: str, status: str) -> None:
    for inst in s.exec(select(Instance).where(Instance.host_id == host_id,
                                              Instance.state != "terminated")):
        lifecycle.set_system_status(s, inst, status)


def _bump_generations(s: Session, host_id: str) -> None:
    for inst in s.exec(select(Instance).where(Instance.host_id == host_id,
                                              Instance.state != "terminated")):
        lifecycle.bump(inst)
        s.add(inst)


def heartbeat(db: Database, hb: HeartbeatRequest, settings: Settings) -> set[str]:
    """Record a heartbeat; returns ids the agent runs that the controller does not want (orphans)."""
    now = utcnow()
    info = hb.host
    if info.contract != CONTRACT_VERSION:
        raise InvalidParameter(f"agent speaks contract {info.contract!r}; this controller "
                               f"speaks {CONTRACT_VERSION!r}", code="UnsupportedContract")
    # The contract leaves these unbounded, the columns are not: PostgreSQL refuses longer
    # values with a DataError (a 500), SQLite would silently store them.
    for field in ("architecture", "agent_url"):
        limit = Host.__table__.c[field].type.length
        if len(getattr(info, field)) > limit:
            raise InvalidParameter(f"host {field} is longer than {limit} characters")
    # Likewise the integers: SQLite raises OverflowError, PostgreSQL a DataError (both a 500).
    numbers = [(f"host {f}", getattr(info, f), m) for f, m in
               (("vcpus", _INT_MAX), ("memory_mib", _INT_MAX), ("disk_bytes", _BIGINT_MAX))]
    numbers += [(f"{o.instance_id} {f}", getattr(o, f), _INT_MAX) for o in hb.instances
                for f in ("generation", "boot_count")]
    nat_counts = hb.network.nat_processed if hb.network is not None else None
    numbers += [(f"{c.nat_gateway_id} bytes", c.bytes, _BIGINT_MAX) for c in nat_counts or ()]
    for what, value, limit in numbers:
        if not 0 <= value <= limit:
            raise InvalidParameter(f"{what} {value} is outside 0..{limit}")
    with db.session(notify=False) as s:
        host = s.get(Host, info.host_id)
        fields = dict(agent_url=info.agent_url, hypervisor=info.hypervisor,
                      architecture=info.architecture, vcpus=info.vcpus,
                      memory_mib=info.memory_mib, disk_bytes=info.disk_bytes,
                      versions=dict(info.versions), contract=info.contract,
                      extensions=sorted(set(info.extensions)), last_heartbeat=now)
        if info.underlay_ip is not None:
            # A heartbeat without it (an agent still resolving its uplink after a restart) keeps
            # the known address: forgetting it would drop the host from every VPC's forwarding
            # and move its NAT gateway away, cutting its guests off while they still run.
            fields["underlay_ip"] = str(info.underlay_ip)
        if host is None:
            host = Host(host_id=info.host_id, state="up", enabled=True, created_at=now, **fields)
            s.add(host)
            record(s, "host", info.host_id, None, None, "up", "registered by heartbeat")
        else:
            if sorted(host.extensions or []) != fields["extensions"]:
                # The agent was upgraded (or rolled back): rebuild its instances' specs with
                # what it understands now (e.g. the metadata an older agent had to go without).
                _bump_generations(s, host.host_id)
            for k, v in fields.items():
                setattr(host, k, v)
            if host.state != "up":
                record(s, "host", info.host_id, None, host.state, "up", "heartbeat resumed")
                host.state = "up"
                _set_system_status(s, host.host_id, "ok")
            s.add(host)
        net = hb.network
        if net is not None and host.network_acked and net.generation < host.network_acked:
            # The agent lost the network document it had accepted (its state was wiped): push
            # it again. (A newer one it accepted is folded in by the reconciler's answer.)
            host.network_acked = 0
            s.add(host)
        elif net is not None and net.generation > host.network_generation:
            # The agent holds a document newer than any this database made (a database restored
            # without `kumo admin restore`, e.g. point-in-time recovery): push, so the refusal
            # moves the generation past the agent's and the host gets this database's network.
            host.network_acked = 0
            s.add(host)
        if nat_counts:
            nat_metering.observe(s, info.host_id, nat_counts, now)
        observed = {o.instance_id: o for o in hb.instances}
        mine = {i.instance_id: i for i in s.exec(
            select(Instance).where(Instance.host_id == info.host_id,
                                   Instance.state != "terminated"))}
        for iid, inst in mine.items():
            obs = observed.get(iid)
            if obs is not None:
                lifecycle.apply_observed(s, inst, obs, settings, now)
                volume_attachments.apply_observed_volumes(s, inst, obs)
            elif (inst.acked_generation > 0 and inst.state != "shutting-down"
                  and inst.last_pushed_at is not None
                  and hb.sent_at > inst.last_pushed_at.timestamp() + _PUSH_VISIBILITY_S):
                # The agent lost a spec it had accepted (e.g. its state was wiped): push again.
                inst.acked_generation = 0
                s.add(inst)
        return {iid for iid in observed if iid not in mine}


def check_liveness(db: Database, timeout_s: float) -> list[str]:
    """Mark hosts whose last heartbeat is older than timeout_s down; returns their ids."""
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    downed = []
    with db.session(notify=False) as s:
        for h in s.exec(select(Host).where(Host.state == "up")):
            if h.last_heartbeat is None or h.last_heartbeat < cutoff:
                h.state = "down"
                s.add(h)
                record(s, "host", h.host_id, None, "up", "down",
                       f"no heartbeat for {timeout_s:g}s")
                _set_system_status(s, h.host_id, "host-down")
                downed.append(h.host_id)
    return downed
