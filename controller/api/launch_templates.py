"""/v1/launch-templates: create, list (filters launch_template_id, launch_template_name; keyset
pages), describe, modify (default version), delete; versions: create (from a source version
with overrides), list, delete (controller/services/launch_templates.py). A template is named in
the path by its id or its name."""
from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.api.responses import errors
from controller.models.launch_template import (LaunchTemplateCreate, LaunchTemplateModify,
                                               LaunchTemplatePublic,
                                               LaunchTemplateVersionCreate,
                                               LaunchTemplateVersionPublic)
from controller.services import launch_templates

router = APIRouter(tags=["launch-templates"])


@router.post("/launch-templates", status_code=201, response_model=LaunchTemplatePublic,
             responses=errors(404))
def create(body: LaunchTemplateCreate, ctx: Ctx, caller: CurrentCaller):
    """Create a template with its version 1 (validated as `instances run` validates)."""
    return launch_templates.create(ctx.db, ctx.settings, caller, body)


@router.get("/launch-templates", response_model=Page[LaunchTemplatePublic])
def list_templates(request: Request, ctx: Ctx, caller: CurrentCaller, p: Paging):
    return launch_templates.list_page(ctx.db, caller, p, request.query_params.multi_items())


@router.get("/launch-templates/{template}", response_model=LaunchTemplatePublic)
def get_template(template: str, ctx: Ctx, caller: CurrentCaller):
    return launch_templates.get_public(ctx.db, caller, template)


@router.patch("/launch-templates/{template}", response_model=LaunchTemplatePublic)
def modify(template: str, body: LaunchTemplateModify, ctx: Ctx, caller: CurrentCaller):
    return launch_templates.modify(ctx.db, caller, template, body.default_version)


@router.delete("/launch-templates/{template}", status_code=204)
def delete_template(template: str, ctx: Ctx, caller: CurrentCaller):
    launch_templates.delete_template(ctx.db, caller, template)
    return Response(status_code=204)


@router.post("/launch-templates/{template}/versions", status_code=201,
             response_model=LaunchTemplateVersionPublic)
def create_version(template: str, body: LaunchTemplateVersionCreate, ctx: Ctx,
                   caller: CurrentCaller):
    return launch_templates.create_version(ctx.db, ctx.settings, caller, template, body)


@router.get("/launch-templates/{template}/versions",
            response_model=Page[LaunchTemplateVersionPublic])
def list_versions(template: str, ctx: Ctx, caller: CurrentCaller, p: Paging,
                  versions: list[str] = Query(default=[], max_length=100)):
    """`versions`: repeatable or comma separated numbers, $Default, $Latest."""
    wanted = [v for raw in versions for v in raw.split(",") if v]
    return launch_templates.list_versions(ctx.db, caller, template, p, wanted)


@router.delete("/launch-templates/{template}/versions/{version}", status_code=204)
def delete_version(template: str, version: str, ctx: Ctx, caller: CurrentCaller):
    launch_templates.delete_version(ctx.db, caller, template, version)
    return Response(status_code=204)
