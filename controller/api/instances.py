"""/v1/instances: run, list (filters state, tag:K=V, instance_id; keyset pages), describe,
actions, modify, console, status (controller/services/instances.py, instance_console.py).
Every mutation wakes the reconciler when the service's transaction commits (controller/db.py),
so its spec reaches the agent at once."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response

from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.api.responses import errors
from controller.models import (ConsoleOutput, InstanceGroupsRequest, InstanceMetadataOptions,
                               InstanceMetadataOptionsResponse, InstancePublic,
                               InstanceStatusPublic, ModifyInstanceRequest, RunInstancesRequest,
                               RunInstancesResponse)
from controller.services import instance_console, instance_metadata, instances

router = APIRouter(tags=["instances"])


@router.post("/instances", status_code=201, response_model=RunInstancesResponse,
             responses=errors(404, 503))
def run_instances(body: RunInstancesRequest, ctx: Ctx, caller: CurrentCaller):
    rid, rows = instances.run(ctx.db, ctx.settings, caller, body)
    return RunInstancesResponse(reservation_id=rid, instances=instances.describe(ctx.db, rows))


@router.get("/instances", response_model=Page[InstancePublic])
def list_instances(request: Request, ctx: Ctx, caller: CurrentCaller, p: Paging):
    filters = instances.InstanceFilters.from_query(request.query_params.multi_items())
    return instances.list_page(ctx.db, caller, p, filters)


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


@router.patch("/instances/{instance_id}", response_model=InstancePublic, responses=errors(503))
def modify_instance(instance_id: str, body: ModifyInstanceRequest, ctx: Ctx,
                    caller: CurrentCaller):
    """Change a stopped instance's type and/or grow its root disk (running or stopped)."""
    inst = instances.modify(ctx.db, ctx.settings, caller, instance_id, body.instance_type,
                            body.root_disk_gib)
    return instances.describe(ctx.db, [inst])[0]


@router.put("/instances/{instance_id}/security-groups", response_model=InstancePublic)
def set_security_groups(instance_id: str, body: InstanceGroupsRequest, ctx: Ctx,
                        caller: CurrentCaller):
    inst = instances.set_security_groups(ctx.db, ctx.settings, caller, instance_id,
                                         body.security_group_ids)
    return instances.describe(ctx.db, [inst])[0]


@router.get("/instances/{instance_id}/console", response_model=ConsoleOutput,
            responses=errors(503))
def console(instance_id: str, ctx: Ctx, caller: CurrentCaller):
    return instance_console.output(ctx.db, ctx.pool, caller, instance_id)


@router.get("/instances/{instance_id}/status", response_model=InstanceStatusPublic)
def status(instance_id: str, ctx: Ctx, caller: CurrentCaller):
    return instances.status(ctx.db, caller, instance_id)


@router.post("/instances/{instance_id}/metadata-options",
             response_model=InstanceMetadataOptionsResponse, responses=errors(404, 409))
def modify_metadata_options(instance_id: str, body: InstanceMetadataOptions, ctx: Ctx,
                            caller: CurrentCaller):
    """ModifyInstanceMetadataOptions (controller/services/instance_metadata.py)."""
    inst, options = instance_metadata.modify(ctx.db, caller, instance_id, body)
    return InstanceMetadataOptionsResponse(instance_id=inst.instance_id,
                                           state=instance_metadata.state_of(inst),
                                           metadata_options=options)


@router.get("/metadata/certificate", response_class=Response)
def metadata_certificate(ctx: Ctx, caller: CurrentCaller):
    """The certificate (PEM) instance identity documents are signed with."""
    return Response(instance_metadata.certificate_pem(ctx.settings.state_dir),
                    media_type="application/x-pem-file")
