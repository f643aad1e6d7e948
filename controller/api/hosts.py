"""/v1/hosts (admin: list, describe, enable/disable, remove, join tokens), /v1/agent/heartbeat
(agent), and host identity (docs/security.md): /v1/agent/join (a join token) and
/v1/agent/certificate (renewal over the agent's current certificate)."""
from __future__ import annotations

from fastapi import APIRouter

from agent.contract.v1 import HeartbeatRequest, HeartbeatResponse
from controller.api.deps import AdminCaller, AgentAuth, Ctx, Page, Paging
from controller.api.responses import errors
from controller.errors import InvalidParameter
from controller.models import (AgentCertificate, AgentCertificateRequest, HostPublic,
                               JoinTokenCreate, JoinTokenCreated)
from controller.services import cloud_ca, host_identity, hosts

router = APIRouter(tags=["hosts"])


@router.get("/hosts", response_model=Page[HostPublic])
def list_hosts(ctx: Ctx, _: AdminCaller, p: Paging):
    return hosts.list_page(ctx.db, p, ctx.settings)


@router.post("/hosts/join-tokens", status_code=201, response_model=JoinTokenCreated)
def create_join_token(body: JoinTokenCreate, ctx: Ctx, _: AdminCaller):
    return host_identity.create_join_token(ctx.db, body, cloud_ca.load(ctx.settings.state_dir))


@router.get("/hosts/{host_id}", response_model=HostPublic)
def get_host(host_id: str, ctx: Ctx, _: AdminCaller):
    return hosts.describe(ctx.db, host_id, ctx.settings)


@router.delete("/hosts/{host_id}")
def remove_host(host_id: str, ctx: Ctx, _: AdminCaller) -> dict:
    """Revoke the host's certificates; it is no longer scheduled, sent work or heard."""
    revoked = host_identity.remove_host(ctx.db, host_id)
    return {"host_id": host_id, "state": host_identity.REMOVED, "revoked_serials": revoked}


@router.post("/hosts/{host_id}/disable", response_model=HostPublic)
def disable_host(host_id: str, ctx: Ctx, _: AdminCaller):
    return hosts.set_enabled(ctx.db, host_id, False)


@router.post("/hosts/{host_id}/enable", response_model=HostPublic)
def enable_host(host_id: str, ctx: Ctx, _: AdminCaller):
    return hosts.set_enabled(ctx.db, host_id, True)


@router.post("/agent/heartbeat", response_model=HeartbeatResponse)
def heartbeat(body: HeartbeatRequest, ctx: Ctx, peer: AgentAuth):
    peer.check_host(body.host.host_id)
    host_identity.check_not_removed(ctx.db, body.host.host_id)
    orphans = hosts.heartbeat(ctx.db, body, ctx.settings)
    ctx.reconciler.note_orphans(body.host.host_id, orphans)
    # Asked only of agents that advertise it: older ones refuse unknown fields.
    return HeartbeatResponse(interval=ctx.settings.heartbeat_interval_s,
                             nat_processed="nat-processed" in body.host.extensions)


@router.post("/agent/join", response_model=AgentCertificate, status_code=201,
             responses=errors(401))  # JoinTokenInvalid, JoinTokenExpired
def join(body: AgentCertificateRequest, ctx: Ctx):
    """A join token (no other credential) and a CSR -> the host's certificate and the CA."""
    return host_identity.join(ctx.db, cloud_ca.load(ctx.settings.state_dir), body.join_token,
                              body.csr)


@router.post("/agent/certificate", response_model=AgentCertificate, status_code=201)
def renew_certificate(body: AgentCertificateRequest, ctx: Ctx, peer: AgentAuth):
    """A new certificate for the host the presenting certificate names."""
    if peer.host_id is None:
        raise InvalidParameter("certificates are renewed over mutual TLS (agent_auth mtls)",
                               code="UnsupportedOperation")
    host_identity.check_not_removed(ctx.db, peer.host_id)
    return host_identity.renew(ctx.db, cloud_ca.load(ctx.settings.state_dir), peer.host_id,
                               body.csr)
