"""/v1/images: register (admin), import (upload), list, describe, deregister, launch permissions,
the image file for agents (agent token), and POST /v1/instances/{id}/image (CreateImage)."""
from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import ValidationError

from controller.api.deps import AgentAuth, Ctx, CurrentCaller, Page, Paging
from controller.api.responses import OCTET_STREAM, errors
from controller.errors import InvalidParameter, NotFound
from controller.models import ImagePublic, ImageRegister
from controller.models.image import (CreateImageRequest, LaunchPermissionModify,
                                     LaunchPermissionPublic)
from controller.services import image_capture, image_permissions, images

router = APIRouter(tags=["images"])


@router.post("/images", status_code=201, response_model=ImagePublic, responses=errors(403))
def register_image(body: ImageRegister, ctx: Ctx, caller: CurrentCaller):
    return images.to_public(images.register(ctx.db, caller, ctx.settings.state_dir / "images",
                                            body, ctx.settings.max_image_virtual_size))


@router.post("/images/import", status_code=201, response_model=ImagePublic,
             responses=errors(403))
async def import_image(request: Request, ctx: Ctx, caller: CurrentCaller,
                       name: Annotated[str, Query(max_length=128)],
                       format: str = "qcow2", public: bool = False,
                       architecture: str = "x86_64", ready_marker: str | None = None,
                       min_ram_mib: int = 0, description: str | None = None):
    try:
        meta = ImageRegister(name=name, path="/upload", format=format, public=public,
                             architecture=architecture, ready_marker=ready_marker,
                             min_ram_mib=min_ram_mib, description=description)
    except ValidationError as exc:
        raise InvalidParameter("; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())) \
            from None
    images_dir = ctx.settings.state_dir / "images"
    upload = images.upload_path(images_dir)
    limit = ctx.settings.max_image_file_size
    total = 0
    try:
        fd = os.open(upload, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise InvalidParameter(f"image larger than {limit} bytes",
                                           code="InvalidImage.TooLarge")
                f.write(chunk)
    except BaseException:
        upload.unlink(missing_ok=True)
        raise
    img = await run_in_threadpool(images.import_file, ctx.db, caller, images_dir, upload,
                                  meta=meta, max_vsize=ctx.settings.max_image_virtual_size)
    return images.to_public(img)


@router.get("/images", response_model=Page[ImagePublic])
def list_images(ctx: Ctx, caller: CurrentCaller, p: Paging):
    return images.list_page(ctx.db, caller, p)


@router.get("/images/{image_id}", response_model=ImagePublic)
def get_image(image_id: str, ctx: Ctx, caller: CurrentCaller):
    with ctx.db.session() as s:
        return images.to_public(images.get(s, caller, image_id, images.DESCRIBED))


@router.post("/instances/{instance_id}/image", status_code=201, response_model=ImagePublic)
def create_image(instance_id: str, body: CreateImageRequest, ctx: Ctx, caller: CurrentCaller):
    """A new private image of the caller's account from the instance's root disk; state
    "pending" until the capture is copied ("available") or fails ("failed", state_reason).
    Unless no_reboot, a running instance is stopped for the copy and started again after."""
    return images.to_public(image_capture.create_image(ctx.db, ctx.settings, caller,
                                                       instance_id, body))


@router.get("/images/{image_id}/launch-permission", response_model=LaunchPermissionPublic)
def get_launch_permission(image_id: str, ctx: Ctx, caller: CurrentCaller):
    """Who may launch the image besides its owner (owner and admins only)."""
    return image_permissions.describe(ctx.db, caller, image_id)


@router.put("/images/{image_id}/launch-permission", response_model=LaunchPermissionPublic,
            responses=errors(403))
def put_launch_permission(image_id: str, body: LaunchPermissionModify, ctx: Ctx,
                          caller: CurrentCaller):
    """Share with (add) or unshare from (remove) accounts; make public (admins only, else 403
    UnauthorizedOperation) or private."""
    return image_permissions.modify(ctx.db, caller, image_id, body)


@router.delete("/images/{image_id}", response_model=ImagePublic, responses=errors(403))
def deregister_image(image_id: str, ctx: Ctx, caller: CurrentCaller):
    """Answers the image as deregistered (state "deregistered")."""
    return images.to_public(images.deregister(ctx.db, caller, image_id))


@router.get("/images/{image_id}/file", response_class=FileResponse,
            responses={200: {"description": "The image file", "content": OCTET_STREAM}})
def image_file(image_id: str, ctx: Ctx, _: AgentAuth):
    with ctx.db.session() as s:
        img = images.file_for_agent(s, image_id)
    if not os.path.isfile(img.path):
        raise NotFound(f"file of image {image_id} is missing", code="InvalidAMIID.Unavailable")
    return FileResponse(img.path, media_type="application/octet-stream",
                        headers={"X-Kumo-Sha256": img.sha256})
