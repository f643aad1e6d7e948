"""Images: register a file on the controller host (admin), import an uploaded file (any account),
list/describe (own + public + shared with the account), deregister, and resolve an image named by
id or name. A deregistered image's file is deleted once no instance that is not terminated uses
it (at once, or later by sweep_image_files). Captures from instances: image_capture.py; launch
permissions: image_permissions.py.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from sqlalchemy import and_, or_
from sqlmodel import Session, select

from controller.db import Database
from controller.errors import InvalidParameter, NotFound, Unauthorized
from controller.events import record
from controller.ids import new_id, utcnow
from controller.models import Image, ImagePublic, ImageRegister, Instance
from controller.models.image import ImageLaunchPermission
from controller.services import pagination
from controller.services.accounts import Caller
from controller.services.image_check import check
from controller.services.pagination import Page, PageRequest

log = logging.getLogger(__name__)
NOT_FOUND = "InvalidAMIID.NotFound"
ORDER = pagination.Order(Image.created_at, Image.image_id)
#: States a describe shows (a launch needs "available").
DESCRIBED = ("available", "pending", "failed")


def _visible(caller: Caller):
    """Own images, public ones, and private ones shared with the caller's account."""
    if caller.is_admin:
        return True
    shared = select(ImageLaunchPermission.image_id).where(
        ImageLaunchPermission.account_id == caller.account_id)
    return or_(Image.owner_account_id == caller.account_id, Image.public == True,  # noqa: E712
               Image.image_id.in_(shared))


def get(s: Session, caller: Caller, ref: str, states: tuple[str, ...] = ("available",)) -> Image:
    """An image visible to the caller in one of `states`, named by id or name (own images win
    over public and shared ones)."""
    q = select(Image).where(_visible(caller), Image.state.in_(states))
    if ref.startswith("ami-"):
        img = s.exec(q.where(Image.image_id == ref)).first()
    else:
        rows = list(s.exec(q.where(Image.name == ref).order_by(Image.created_at.desc())))
        own = [i for i in rows if i.owner_account_id == caller.account_id]
        img = (own or rows or [None])[0]
    if img is None:
        raise NotFound(f"image {ref!r} not found", code=NOT_FOUND)
    return img


def to_public(img: Image) -> ImagePublic:
    return ImagePublic.model_validate(img, from_attributes=True)


def list_page(db: Database, caller: Caller, page: PageRequest) -> Page[ImagePublic]:
    """The available images the caller sees (its own, the public ones and those shared with
    it), plus its own pending and failed captures."""
    q = select(Image).where(_visible(caller), or_(
        Image.state == "available",
        and_(Image.state.in_(("pending", "failed")),
             Image.owner_account_id == caller.account_id)))
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
    """The image leaves every list and launch at once; its file stays on the controller while
    an instance that is not terminated uses it (agents may still need to fetch it), then goes
    (here, or in sweep_image_files). A pending capture is abandoned (image_capture.advance
    cleans up after it)."""
    with db.session() as s:
        img = get(s, caller, ref, DESCRIBED)
        if img.owner_account_id != caller.account_id and not caller.is_admin:
            # A public or shared image of another account: visible, but not yours to remove.
            raise Unauthorized("not the owner of this image")
        before = img.state
        img.state = "deregistered"
        s.add(img)
        record(s, "image", img.image_id, img.owner_account_id, before, "deregistered",
               "deregistered")
        _delete_file_if_unused(s, img)
    return img


def in_use(s: Session, image_id: str) -> bool:
    """An instance that is not terminated was launched from the image."""
    return s.exec(select(Instance.instance_id).where(
        Instance.image_id == image_id, Instance.state != "terminated").limit(1)).first() is not None


def _delete_file_if_unused(s: Session, img: Image) -> bool:
    if img.file_deleted_at is not None or img.state != "deregistered" or in_use(s, img.image_id):
        return False
    try:
        Path(img.path).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot delete the file of %s: %s", img.image_id, exc)
        return False
    img.file_deleted_at = utcnow()
    s.add(img)
    return True


def sweep_image_files(db: Database, settings=None) -> int:
    """Delete the files of deregistered images no instance (not terminated) uses any more; the
    reconciler's tick calls it. Returns how many went."""
    n = 0
    with db.session(notify=False) as s:
        rows = list(s.exec(select(Image).where(Image.state == "deregistered",
                                               Image.file_deleted_at == None)))  # noqa: E711
        for img in rows:
            n += _delete_file_if_unused(s, img)
    return n


def file_for_agent(s: Session, image_id: str) -> Image:
    img = s.get(Image, image_id)
    if img is None:
        raise NotFound(f"image {image_id} not found", code=NOT_FOUND)
    return img
