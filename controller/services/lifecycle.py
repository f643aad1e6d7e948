"""The instance state machine: every state/status change goes through here, so each one sets
its deadline and appends an event.

  pending -> running -> stopping -> stopped -> pending ...      any -> shutting-down -> terminated
Desired power per state: pending/running -> running; stopping/stopped -> stopped;
shutting-down -> the domain is deleted. Each transitional state has a deadline (settings) the
reconciler enforces via `apply_deadlines`; failures put a code in state_reason.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import Session

from agent.contract.v1 import InstanceObserved
from controller.events import record
from controller.ids import utcnow
from controller.models import Image, Instance
from controller.services import instance_network, metering, volume_attachments
from controller.services.spec_generation import bump  # noqa: F401 - lifecycle.bump, as callers use it
from controller.settings import Settings

TRANSITIONAL = ("pending", "stopping", "shutting-down")


def _deadline_s(state: str, settings: Settings) -> float | None:
    return {"pending": settings.pending_deadline_s, "stopping": settings.stopping_deadline_s,
            "shutting-down": settings.shutting_down_deadline_s}.get(state)


def transition(s: Session, inst: Instance, to: str, settings: Settings, *, reason: str,
               code: str | None = None, message: str | None = None,
               now: datetime | None = None) -> None:
    """Move inst to state `to` (recording an event); code/message set state_reason."""
    now = now or utcnow()
    frm = inst.state
    inst.state = to
    inst.updated_at = now
    secs = _deadline_s(to, settings)
    inst.state_deadline = now + timedelta(seconds=secs) if secs is not None else None
    if code is not None:
        inst.state_reason_code, inst.state_reason_message = code, (message or code)[:1024]
    elif to in ("pending", "running"):
        inst.state_reason_code = inst.state_reason_message = None
    if to in ("pending", "running", "stopping", "stopped"):
        inst.power = "running" if to in ("pending", "running") else "stopped"
    if to == "running":
        inst.launch_time = inst.launch_time or now
        inst.status_deadline = now + timedelta(seconds=settings.status_deadline_s)
    if to in ("stopped", "shutting-down", "terminated", "stopping"):
        inst.status_deadline = None
        inst.reboot_pending = False
        set_instance_status(s, inst, "not-applicable" if to != "stopping" else inst.instance_status)
    if to == "pending":
        set_instance_status(s, inst, "initializing")
    if to == "terminated" and frm != "terminated":
        instance_network.release(s, inst)
        volume_attachments.release_on_termination(s, inst)
        inst.terminated_at = now
        inst.system_status = "not-applicable"
    s.add(inst)
    event = record(s, "instance", inst.instance_id, inst.account_id, frm, to,
                   f"{code}: {message}" if code else reason)
    # Usage intervals open and close in this same transaction (services/metering.py), at the
    # event's instant: the bill and the event log agree to the microsecond. (`now` may be a
    # little older: the caller's, taken before other events of the same change.)
    metering.instance_transition(s, inst, frm, to, event.time)


def set_instance_status(s: Session, inst: Instance, status: str, reason: str | None = None) -> None:
    if inst.instance_status == status:
        return
    record(s, "instance-status", inst.instance_id, inst.account_id, inst.instance_status, status,
           reason)
    inst.instance_status = status
    s.add(inst)


def set_system_status(s: Session, inst: Instance, status: str) -> None:
    if inst.state == "terminated" or inst.system_status == status:
        return
    record(s, "system-status", inst.instance_id, inst.account_id, inst.system_status, status,
           None)
    inst.system_status = status
    inst.updated_at = utcnow()
    s.add(inst)


def _has_marker(s: Session, inst: Instance) -> bool:
    img = s.get(Image, inst.image_id)
    return bool(img and img.ready_marker)


def apply_observed(s: Session, inst: Instance, obs: InstanceObserved, settings: Settings,
                   now: datetime | None = None) -> None:
    """Fold what the agent reports into the instance (heartbeats and PUT answers)."""
    now = now or utcnow()
    if obs.generation < inst.acked_generation:
        return  # a report older than what the agent already acknowledged (reordered heartbeat)
    inst.observed_power = obs.power
    inst.observed_booted = obs.booted
    inst.observed_boot_count = obs.boot_count
    inst.observed_error = f"{obs.error.code}: {obs.error.message}"[:1024] if obs.error else None
    if obs.generation > inst.generation:
        # The agent holds a newer spec than we know (e.g. a restored database): supersede it.
        inst.generation = obs.generation + 1
    elif obs.generation > inst.acked_generation:
        inst.acked_generation = obs.generation
    s.add(inst)
    if obs.generation != inst.generation or inst.state == "terminated":
        return  # the agent still works on an older spec; judge it once it has ours
    if inst.state == "pending":
        if obs.error is not None and not obs.error.retryable:
            _fail_launch(s, inst, settings, "Server.InternalError", inst.observed_error, now)
        elif obs.power == "running":
            transition(s, inst, "running", settings, reason="agent reports running", now=now)
    elif inst.state == "stopping" and obs.power in ("shutoff", "absent", "crashed"):
        transition(s, inst, "stopped", settings, reason="agent reports shut off", now=now)
    elif inst.state == "running" and obs.power == "shutoff" and not inst.reboot_pending:
        # The guest powered itself off: EC2 calls that an instance-initiated shutdown.
        transition(s, inst, "stopped", settings, reason="guest shut down",
                   code="Client.InstanceInitiatedShutdown",
                   message="the instance shut itself down", now=now)
        bump(inst)
    if inst.state == "running":
        if obs.power in ("crashed", "error") or (obs.error is not None and not obs.error.retryable):
            set_instance_status(s, inst, "impaired", inst.observed_error or "domain crashed")
        elif obs.power == "running" and inst.instance_status != "ok":
            ready = (obs.booted and obs.boot_count > inst.reboot_boot_count) \
                or not _has_marker(s, inst)
            if ready:
                inst.reboot_pending = False
                set_instance_status(s, inst, "ok", "guest is ready")


def _fail_launch(s: Session, inst: Instance, settings: Settings, code: str, message: str | None,
                 now: datetime) -> None:
    if inst.launch_time is None:  # first launch: give up on the instance
        transition(s, inst, "shutting-down", settings, reason="launch failed", code=code,
                   message=message, now=now)
    else:  # a start of a stopped instance: back to stopped
        transition(s, inst, "stopped", settings, reason="start failed", code=code,
                   message=message, now=now)
        bump(inst)


def apply_deadlines(s: Session, inst: Instance, settings: Settings, now: datetime) -> None:
    if inst.state_deadline is not None and now >= inst.state_deadline:
        if inst.state == "pending":
            detail = f" ({inst.observed_error})" if inst.observed_error else ""
            _fail_launch(s, inst, settings, "Server.LaunchTimeout",
                         f"not running after {settings.pending_deadline_s:g}s{detail}", now)
        elif inst.state == "stopping":
            # Leave it stopping (the domain may still run); say why; a forced stop re-pushes.
            inst.state_deadline = None
            inst.state_reason_code = "Server.StopTimeout"
            inst.state_reason_message = f"not stopped after {settings.stopping_deadline_s:g}s"
            s.add(inst)
            record(s, "instance", inst.instance_id, inst.account_id, "stopping", "stopping",
                   "Server.StopTimeout: stop deadline passed")
        elif inst.state == "shutting-down":
            transition(s, inst, "terminated", settings, reason="terminate deadline passed",
                       code="Server.TerminateTimeout",
                       message="the host did not confirm the deletion in time", now=now)
    if (inst.state == "running" and inst.instance_status == "initializing"
            and inst.status_deadline is not None and now >= inst.status_deadline):
        inst.reboot_pending = False  # from now on a shutoff is the guest's own doing again
        set_instance_status(s, inst, "impaired",
                            f"guest not ready after {settings.status_deadline_s:g}s")
