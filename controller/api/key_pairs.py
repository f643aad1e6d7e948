"""/v1/key-pairs."""
from __future__ import annotations

from fastapi import APIRouter

from controller.api.deps import Ctx, CurrentCaller, Page, Paging
from controller.models import KeyPairCreate, KeyPairCreated, KeyPairDeleted, KeyPairPublic
from controller.services import key_pairs

router = APIRouter(tags=["key-pairs"])


@router.post("/key-pairs", status_code=201, response_model=KeyPairCreated,
             response_model_exclude_none=True)
def create_key_pair(body: KeyPairCreate, ctx: Ctx, caller: CurrentCaller):
    kp, private = key_pairs.create(ctx.db, caller.account_id, body.name, body.public_key)
    return KeyPairCreated.model_validate(kp, from_attributes=True,
                                         update={"private_key": private})


@router.get("/key-pairs", response_model=Page[KeyPairPublic])
def list_key_pairs(ctx: Ctx, caller: CurrentCaller, p: Paging):
    return key_pairs.list_page(ctx.db, caller.account_id, p)


@router.get("/key-pairs/{name}", response_model=KeyPairPublic)
def get_key_pair(name: str, ctx: Ctx, caller: CurrentCaller):
    with ctx.db.session() as s:
        return KeyPairPublic.model_validate(key_pairs.get(s, caller.account_id, name),
                                            from_attributes=True)


@router.delete("/key-pairs/{name}", response_model=KeyPairDeleted)
def delete_key_pair(name: str, ctx: Ctx, caller: CurrentCaller):
    """Idempotent (EC2 semantics): `key_pair_id` is null when there was nothing to delete."""
    deleted = key_pairs.delete(ctx.db, caller.account_id, name)
    return {"name": name, "key_pair_id": deleted, "deleted": True}
