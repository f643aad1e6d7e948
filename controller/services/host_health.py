"""Host health, shown by `kumo hosts` and GET /v1/hosts (issue 14, "Operations"): one word and
the reasons behind it, from what the controller already records, so an operator sees a host
going wrong before its instances do.

- "down": the liveness check marked it down (no heartbeat within heartbeat_timeout_s);
- "degraded", with a reason each:
  - its last heartbeat is older than LATE_FACTOR heartbeat intervals (still up, but late);
  - instances on it report errors from the agent (observed_error), counted;
  - its certificate (mutual TLS) expires within CERT_WARN_DAYS, or has expired: renewal
    should have happened at a third of its life left;
  - its agent lacks extensions of the contract this controller speaks (an older agent, which
    keeps working: docs/deploy.md "Upgrades"), named;
- "ok" otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlmodel import Session, select

from agent.contract.v1 import EXTENSIONS
from controller.models import Host, Instance
from controller.models.host_identity import HostCertificate

LATE_FACTOR = 3
CERT_WARN_DAYS = 7


@dataclass
class HostHealth:
    health: str = "ok"
    reasons: list[str] = field(default_factory=list)
    heartbeat_age_s: float | None = None


def _errored(s: Session) -> dict[str, int]:
    rows = s.exec(select(Instance.host_id, func.count()).where(
        Instance.observed_error != None, Instance.state != "terminated",  # noqa: E711
        Instance.host_id != None).group_by(Instance.host_id))  # noqa: E711
    return {h: int(n) for h, n in rows}


def _cert_expiry(s: Session) -> dict[str, datetime]:
    rows = s.exec(select(HostCertificate.host_id, func.max(HostCertificate.not_after)).where(
        HostCertificate.revoked_at == None).group_by(HostCertificate.host_id))  # noqa: E711
    return {h: t for h, t in rows}


def assess_all(s: Session, hosts: list[Host], now: datetime,
               heartbeat_interval_s: float) -> dict[str, HostHealth]:
    """The health of each of `hosts`, with two grouped queries whatever their number."""
    errored, expiry = _errored(s), _cert_expiry(s)
    return {h.host_id: assess(h, now, heartbeat_interval_s, errored.get(h.host_id, 0),
                              expiry.get(h.host_id)) for h in hosts}


def assess(h: Host, now: datetime, heartbeat_interval_s: float, errored: int,
           cert_not_after: datetime | None) -> HostHealth:
    out = HostHealth()
    if h.last_heartbeat is not None:
        out.heartbeat_age_s = round(max((now - h.last_heartbeat).total_seconds(), 0.0), 1)
    if h.state != "up":
        out.health = "down"
        out.reasons.append(f"no heartbeat for {out.heartbeat_age_s} s" if out.heartbeat_age_s
                           is not None else "never heard from")
        return out
    if out.heartbeat_age_s is not None and \
            out.heartbeat_age_s > LATE_FACTOR * heartbeat_interval_s:
        out.reasons.append(f"last heartbeat {out.heartbeat_age_s} s ago (expected every "
                           f"{heartbeat_interval_s:g} s)")
    if errored:
        out.reasons.append(f"{errored} instance{'s' if errored != 1 else ''} report"
                           f"{'' if errored != 1 else 's'} errors from the agent")
    if cert_not_after is not None:
        left = cert_not_after - now
        if left <= timedelta(0):
            out.reasons.append("its certificate has expired")
        elif left <= timedelta(days=CERT_WARN_DAYS):
            out.reasons.append(f"its certificate expires in {left.days} days")
    if h.extensions:  # empty: not heard since the controller's upgrade
        # vpc-network says whether the agent runs a VPC dataplane (a choice), not its version.
        missing = [e for e in EXTENSIONS if e not in h.extensions and e != "vpc-network"]
        if missing:
            out.reasons.append(f"its agent lacks contract extensions: {', '.join(missing)}")
    if out.reasons:
        out.health = "degraded"
    return out
