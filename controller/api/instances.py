"""/v1/instances: run, list (filters state, tag:K=V, instance_id; keyset pages), describe,
actions, modify, console, status. Every mutation wakes the reconciler once the service's
transaction has committed (controller/app.py's middleware), so its spec reaches the agent at
once."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from controller.agents import AgentError
from controller.api.deps import Ctx, CurrentCaller, Page
from controller.errors import KumoError
from controller.ids import utcnow
from controller.models import (Host, InstanceGroupsRequest, InstancePublic, InstanceStatusPublic,
                               ModifyInstanceRequest, RunInstancesRequest, RunInstancesResponse)
from controller.services import instances, pagination

router = APIRouter(tags=["instances"])


@router.post("/instances", status_code=201, response_model=RunInstancesResponse)
def run_instances(body: RunInstancesRequest, ctx: Ctx, caller: CurrentCaller):
    rid, rows = instances.run(ctx.db, ctx.settings, caller, body)
    return RunInstancesResponse(reservation_id=rid, instances=instances.describe(ctx.db, rows))


@router.get("/instances", response_model=Page[InstancePublic])
def list_instances(request: Request, ctx: Ctx, caller: CurrentCaller,
                   max_results: Annotated[int, Query(ge=1, le=1000)] = 100,
                   next_token: Annotated[str | None, Query(max_length=128)] = None):
    # Keyset paging (not deps.Paging's offsets): an account can hold tens of thousands.
    after = pagination.decode_key(next_token)
    qp = request.query_params
    tags = {k[4:]: v for k, v in qp.multi_items() if k.startswith("tag:")}
    states = [v for s in qp.getlist("state") for v in s.split(",") if v]
    ids = [v for s in qp.getlist("instance_id") for v in s.split(",") if v]
    with ctx.db.session() as s:
        rows = instances.list_instances(s, caller, states=states, ids=ids, tags=tags,
                                        limit=max_results + 1, after=after)
    items, token = pagination.keyset_page(rows, max_results,
                                          lambda i: (i.created_at, i.instance_id))
    return Page(items=instances.describe(ctx.db, items), next_token=token)


@router.get("/instances/{instance_id}", response_model=InstancePublic)
def get_instance(instance_id: str, ctx: Ctx, caller: CurrentCaller):
    with ctx.db.session() as s:
        inst = instances.get(s, caller, instance_id)
    return instances.describe(ctx.db, [inst])[0]


@router.post("/instances/{instance_id}/stop", response_model=InstancePublic)
def stop_instance(instance_id: str, ctx: Ctx, caller: CurrentCaller, force: bool = False):
    inst = instances.stop(ctx.db, ctx.settings, caller, instance_id, force)
    return instances.describe(ctx.db, [inst])[0]


@router.post("/instances/{instance_id}/start", response_model=InstancePublic)
def start_instance(instance_id: str, ctx: Ctx, caller: CurrentCaller):
    inst = instances.start(ctx.db, ctx.settings, caller, instance_id)
    return instances.describe(ctx.db, [inst])[0]


@router.post("/instances/{instance_id}/reboot", response_model=InstancePublic)
def reboot_instance(instance_id: str, ctx: Ctx, caller: CurrentCaller):
    inst = instances.reboot(ctx.db, ctx.settings, caller, instance_id)
    return instances.describe(ctx.db, [inst])[0]


@router.post("/instances/{instance_id}/terminate", response_model=InstancePublic)
def terminate_instance(instance_id: str, ctx: Ctx, caller: CurrentCaller):
    inst = instances.terminate(ctx.db, ctx.settings, caller, instance_id)
    return instances.describe(ctx.db, [inst])[0]


@router.patch("/instances/{instance_id}", response_model=InstancePublic)
def modify_instance(instance_id: str, body: ModifyInstanceRequest, ctx: Ctx,
                    caller: CurrentCaller):
    inst = instances.modify(ctx.db, ctx.settings, caller, instance_id, body.instance_type)
    return instances.describe(ctx.db, [inst])[0]


@router.put("/instances/{instance_id}/security-groups", response_model=InstancePublic)
def set_security_groups(instance_id: str, body: InstanceGroupsRequest, ctx: Ctx,
                        caller: CurrentCaller):
    inst = instances.set_security_groups(ctx.db, ctx.settings, caller, instance_id,
                                         body.security_group_ids)
    return instances.describe(ctx.db, [inst])[0]


@router.get("/instances/{instance_id}/console")
def console(instance_id: str, ctx: Ctx, caller: CurrentCaller):
    with ctx.db.session() as s:
        inst = instances.get(s, caller, instance_id)
        host = s.get(Host, inst.host_id) if inst.host_id else None
    output = ""
    if host is not None and inst.state != "terminated":
        try:
            output = ctx.pool.for_url(host.agent_url).console(instance_id).output
        except AgentError as exc:
            if exc.status != 404:
                raise KumoError(f"console unavailable: {exc.code}", code="ServiceUnavailable",
                                status=503, retryable=True) from None
    return {"instance_id": instance_id, "output": output,
            "timestamp": utcnow().isoformat().replace("+00:00", "Z")}


@router.get("/instances/{instance_id}/status", response_model=InstanceStatusPublic)
def status(instance_id: str, ctx: Ctx, caller: CurrentCaller):
    with ctx.db.session() as s:
        inst = instances.get(s, caller, instance_id)
    reason = ({"code": inst.state_reason_code, "message": inst.state_reason_message}
              if inst.state_reason_code else None)
    return InstanceStatusPublic(
        instance_id=inst.instance_id, state=inst.state, instance_status=inst.instance_status,
        system_status=inst.system_status,
        details={"observed_power": inst.observed_power, "booted": inst.observed_booted,
                 "boot_count": inst.observed_boot_count, "agent_error": inst.observed_error,
                 "state_reason": reason, "generation": inst.generation,
                 "acked_generation": inst.acked_generation})
