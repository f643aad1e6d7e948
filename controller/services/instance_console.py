"""An instance's serial console output: the tail its host's agent keeps (controller/agents.py).

The database says where the instance runs; the agent call happens after that transaction
closed, so a slow agent holds no lock. An instance never placed, terminated, or unknown to its
agent has an empty console; an agent that cannot answer is a retryable 503.
"""
from __future__ import annotations

from controller.agents import AgentError, AgentPool
from controller.db import Database
from controller.errors import KumoError
from controller.ids import utcnow
from controller.models import Host
from controller.services import instances


def output(db: Database, pool: AgentPool, caller, instance_id: str) -> dict:
    """{"instance_id", "output", "timestamp" (ISO 8601 UTC, "Z")}."""
    with db.session() as s:
        inst = instances.get(s, caller, instance_id)
        host = s.get(Host, inst.host_id) if inst.host_id else None
    text = ""
    if host is not None and inst.state != "terminated":
        try:
            text = pool.for_host(host).console(instance_id).output
        except AgentError as exc:
            if exc.status != 404:
                raise KumoError(f"console unavailable: {exc.code}", code="ServiceUnavailable",
                                status=503, retryable=True) from None
    return {"instance_id": instance_id, "output": text,
            "timestamp": utcnow().isoformat().replace("+00:00", "Z")}
