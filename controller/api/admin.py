"""/v1/admin/status (admin): the controller processes, the leader and the reconcile lag."""
from __future__ import annotations

from fastapi import APIRouter, Request

from controller.api.deps import AdminCaller, Ctx
from controller.models.controller_lease import AdminStatusPublic
from controller.services import controller_status

router = APIRouter(tags=["admin"])


@router.get("/admin/status", response_model=AdminStatusPublic)
def admin_status(request: Request, ctx: Ctx, _: AdminCaller):
    return controller_status.status(ctx.db, ctx.settings, request.app.state.kumo_controller_id)
