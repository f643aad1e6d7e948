"""Images: register a file on the controller host (admin), import an uploaded file (any account),
list/describe (own + public), deregister, and resolve an image named by id or name.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from sqlalchemy import or_
from sqlmodel import Session, select

from controller.db import Database
from controller.errors import InvalidParameter, NotFound, Unauthorized
from controller.events import record
from controller.ids import new_id, utcnow
from controller.models import Image, ImagePublic, ImageRegister
from controller.services import pagination
from controller.services.accounts import Caller
from controller.services.image_check import check
from controller.services.pagination import Page, PageRequest

NOT_FOUND = "InvalidAMIID.NotFound"
ORDER = pagination.Order(Image.created_at, Image.image_id)


def _visible(caller: Caller):
    if caller.is_admin:
        return True
    return or_(Image.owner_account_id == caller.account_id, Image.public == True)  # noqa: E712


def get(s: Session, caller: Caller, ref: str) -> Image:
    """An image visible to the caller, named by id or name (own images win over public ones)."""
    if ref.startswith("ami-"):
        img = s.exec(select(Image).where(Image.image_id == ref, _visible(caller))).first()
    else:
        rows = list(s.exec(select(Image).where(Image.name == ref, _visible(caller))
                           .order_by(Image.created_at.desc())))
        own = [i for i in rows if i.owner_account_id == caller.account_id]
        img = (own or rows or [None])[0]
    if img is None or img.state != "available":
        raise NotFound(f"image {ref!r} not found", code=NOT_FOUND)
    return img


def to_public(img: Image) -> ImagePublic:
    return ImagePublic.model_validate(img, from_attributes=True)


def list_page(db: Database, caller: Caller, page: PageRequest) -> Page[ImagePublic]:
    """The available images the caller sees: its own and the public ones."""
    q = select(Image).where(_visible(caller), Image.state == "available")
    with db.session() as s:
        return pagination.list_page(s, q, ORDER, page, lambda rows: [to_public(i) for i in rows])


def register(db: Database, caller: Caller, images_dir: Path, req: ImageRegister,
             max_vsize: int) -> Image:
    """Register a file on the controller host. It is copied into the image store first, so the
    registered bytes (and their sha256) stay what agents get even if the source is rebuilt."""
    if not caller.is_admin:
        raise Unauthorized("registering a host file needs an admin account")
    path = Path(req.path)
    if not path.is_absolute():
        raise InvalidParameter("path must be absolute")
    if not path.is_file():
        raise InvalidParameter(f"image file {path} does not exist", code="InvalidImage.NotFound")
    # Inspect the source before copying (no point copying a 300 GiB refusal), then the copy.
    check(path, req.format, max_vsize)
    upload = upload_path(images_dir)
    try:
        shutil.copyfile(path, upload)
    except OSError as exc:
        upload.unlink(missing_ok=True)
        raise InvalidParameter(f"cannot read {path}: {exc.strerror}",
                               code="InvalidImage.NotFound") from None
    return _adopt(db, caller, images_dir, upload, meta=req, max_vsize=max_vsize,
                  reason="registered")


def upload_path(images_dir: Path) -> Path:
    images_dir.mkdir(parents=True, exist_ok=True)
    return images_dir / f"upload-{new_id('tmp')}.part"


def import_file(db: Database, caller: Caller, images_dir: Path, upload: Path, *,
                meta: ImageRegister, max_vsize: int) -> Image:
    """Check an uploaded file (already spooled to `upload`) and register it; the upload is
    consumed either way."""
    if meta.public and not caller.is_admin:
        upload.unlink(missing_ok=True)
        raise Unauthorized("only admins can publish public images")
    return _adopt(db, caller, images_dir, upload, meta=meta, max_vsize=max_vsize,
                  reason="imported")


def _adopt(db: Database, caller: Caller, images_dir: Path, upload: Path, *, meta: ImageRegister,
           max_vsize: int, reason: str) -> Image:
    """Check `upload` (a private file in the store), rename it to its image id and record it.
    The upload is consumed either way."""
    try:
        if upload.stat().st_size == 0:
            raise InvalidParameter("empty image body", code="InvalidImage")
        facts = check(upload, meta.format, max_vsize)
        image_id = new_id("ami")
        final = images_dir / f"{image_id}.{meta.format}"
        os.replace(upload, final)
    finally:
        upload.unlink(missing_ok=True)
    img = Image(image_id=image_id, owner_account_id=caller.account_id, path=str(final),
                virtual_size=facts.virtual_size, size=facts.size, sha256=facts.sha256,
                created_at=utcnow(), **meta.model_dump(exclude={"path"}))
    try:
        with db.session() as s:
            s.add(img)
            record(s, "image", img.image_id, caller.account_id, None, "available", reason)
    except Exception:
        final.unlink(missing_ok=True)
        raise
    return img


def deregister(db: Database, caller: Caller, ref: str) -> Image:
    with db.session() as s:
        img = get(s, caller, ref)
        if img.owner_account_id != caller.account_id and not caller.is_admin:
            # A public image of another account: visible, but not yours to remove.
            raise Unauthorized("not the owner of this image")
        img.state = "deregistered"
        s.add(img)
        record(s, "image", img.image_id, img.owner_account_id, "available", "deregistered",
               "deregistered")
    return img


def file_for_agent(s: Session, image_id: str) -> Image:
    img = s.get(Image, image_id)
    if img is None:
        raise NotFound(f"image {image_id} not found", code=NOT_FOUND)
    return img
