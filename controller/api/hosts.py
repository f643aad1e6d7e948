"""/v1/hosts (admin) and /v1/agent/heartbeat (agent token)."""
from __future__ import annotations

from fastapi import APIRouter

from agent.contract.v1 import HeartbeatRequest, HeartbeatResponse
from controller.api.deps import AdminCaller, AgentAuth, Ctx, Page, Paging
from controller.models import HostPublic
from controller.services import hosts

router = APIRouter(tags=["hosts"])


@router.get("/hosts", response_model=Page[HostPublic])
def list_hosts(ctx: Ctx, _: AdminCaller, p: Paging):
    return hosts.list_page(ctx.db, p)


@router.get("/hosts/{host_id}", response_model=HostPublic)
def get_host(host_id: str, ctx: Ctx, _: AdminCaller):
    return hosts.describe(ctx.db, host_id)


@router.post("/hosts/{host_id}/disable", response_model=HostPublic)
def disable_host(host_id: str, ctx: Ctx, _: AdminCaller):
    return hosts.set_enabled(ctx.db, host_id, False)


@router.post("/hosts/{host_id}/enable", response_model=HostPublic)
def enable_host(host_id: str, ctx: Ctx, _: AdminCaller):
    return hosts.set_enabled(ctx.db, host_id, True)


@router.post("/agent/heartbeat", response_model=HeartbeatResponse)
def heartbeat(body: HeartbeatRequest, ctx: Ctx, _: AgentAuth):
    orphans = hosts.heartbeat(ctx.db, body, ctx.settings)
    ctx.reconciler.note_orphans(body.host.host_id, orphans)
    return HeartbeatResponse(interval=ctx.settings.heartbeat_interval_s)
