"""Launch permissions of images: the owner shares a private image with named accounts (they see
it in lists and launch it, as their own), or an admin makes it public; the owner may make it
private again. Only the owner (or an admin) reads or changes them: anyone else gets 404, as if
the image did not exist (a shared image's grantees see the image, not who else has it).
"""
from __future__ import annotations

from sqlmodel import Session, select

from controller.db import Database
from controller.errors import InvalidParameter, NotFound, Unauthorized
from controller.events import record
from controller.models import Account, Image
from controller.models.image import (ImageLaunchPermission, LaunchPermissionModify,
                                     LaunchPermissionPublic)
from controller.services import images
from controller.services.accounts import Caller

#: Answered when a non-admin asks to make an image public.
PUBLIC_NOT_PERMITTED = "UnauthorizedOperation"
ACCOUNT_NOT_FOUND = "InvalidAccountID.NotFound"


def _owned(s: Session, caller: Caller, image_id: str) -> Image:
    img = s.get(Image, image_id)
    if (img is None or img.state not in images.DESCRIBED
            or (img.owner_account_id != caller.account_id and not caller.is_admin)):
        raise NotFound(f"image {image_id!r} not found", code=images.NOT_FOUND)
    return img


def _public(s: Session, img: Image) -> LaunchPermissionPublic:
    ids = s.exec(select(ImageLaunchPermission.account_id)
                 .where(ImageLaunchPermission.image_id == img.image_id)
                 .order_by(ImageLaunchPermission.account_id))
    return LaunchPermissionPublic(image_id=img.image_id, public=img.public, account_ids=list(ids))


def describe(db: Database, caller: Caller, image_id: str) -> LaunchPermissionPublic:
    with db.session() as s:
        return _public(s, _owned(s, caller, image_id))


def modify(db: Database, caller: Caller, image_id: str,
           req: LaunchPermissionModify) -> LaunchPermissionPublic:
    """Apply `req` in one transaction: every check first, so a refused request changes
    nothing. Adding an account twice, or removing one that is not there, is a no-op."""
    with db.session() as s:
        img = _owned(s, caller, image_id)
        if req.public is True and not img.public and not caller.is_admin:
            raise Unauthorized("only admins can make an image public", code=PUBLIC_NOT_PERMITTED)
        add = [a for a in dict.fromkeys(req.add) if a != img.owner_account_id]
        missing = [a for a in add if s.get(Account, a) is None]
        if missing:
            raise InvalidParameter(f"no such account: {', '.join(missing)}",
                                   code=ACCOUNT_NOT_FOUND)
        changes = []
        for a in add:
            if s.get(ImageLaunchPermission, (img.image_id, a)) is None:
                s.add(ImageLaunchPermission(image_id=img.image_id, account_id=a))
                changes.append(f"+{a}")
        s.flush()
        for a in dict.fromkeys(req.remove):
            row = s.get(ImageLaunchPermission, (img.image_id, a))
            if row is not None:
                s.delete(row)
                changes.append(f"-{a}")
        if req.public is not None and req.public != img.public:
            img.public = req.public
            s.add(img)
            changes.append("public" if req.public else "private")
        if changes:
            record(s, "image", img.image_id, img.owner_account_id, img.state, img.state,
                   "launch permission: " + " ".join(changes))
        s.flush()
        return _public(s, img)
