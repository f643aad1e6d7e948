"""Key pairs: generate ed25519 (private key returned once, OpenSSH format), import a public key
(validated by parsing it and stored re-serialised, so no comment or stray text survives), list,
delete, and look up by name for launches.
"""
from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from controller.db import Database
from controller.errors import Conflict, InvalidParameter, NotFound
from controller.events import record
from controller.ids import new_id, utcnow
from controller.models import KeyPair, KeyPairPublic
from controller.services import pagination
from controller.services.pagination import Page, PageRequest

NOT_FOUND = "InvalidKeyPair.NotFound"
ORDER = pagination.Order(KeyPair.created_at, KeyPair.key_pair_id)


def fingerprint(openssh_public: str) -> str:
    """ssh-keygen -l style: SHA256 of the key blob, base64 without padding."""
    blob = base64.b64decode(openssh_public.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _parse_public(text: str) -> tuple[str, str]:
    text = text.strip()
    if not text or "\n" in text or "\r" in text or "\x00" in text:
        raise InvalidParameter("public key must be one OpenSSH line", code="InvalidKey.Format")
    try:
        key = serialization.load_ssh_public_key(text.encode())
    except Exception:
        raise InvalidParameter("not a valid OpenSSH public key", code="InvalidKey.Format") from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        kind = "ed25519"
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise InvalidParameter("RSA keys must have at least 2048 bits", code="InvalidKey.Format")
        kind = "rsa"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        kind = "ecdsa"
    else:
        raise InvalidParameter("unsupported key type", code="InvalidKey.Format")
    canonical = key.public_bytes(serialization.Encoding.OpenSSH,
                                 serialization.PublicFormat.OpenSSH).decode()
    return canonical, kind


def create(db: Database, account_id: str, name: str, public_key: str | None) -> tuple[KeyPair, str | None]:
    private_text = None
    if public_key is None:
        priv = ed25519.Ed25519PrivateKey.generate()
        private_text = priv.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()).decode()
        public_text = priv.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        kind = "ed25519"
    else:
        public_text, kind = _parse_public(public_key)
    kp = KeyPair(key_pair_id=new_id("key"), account_id=account_id, name=name,
                 fingerprint=fingerprint(public_text), key_type=kind, public_key=public_text,
                 created_at=utcnow())
    dup = Conflict(f"key pair {name!r} already exists", code="InvalidKeyPair.Duplicate")
    try:
        with db.session() as s:
            if s.exec(select(KeyPair).where(KeyPair.account_id == account_id,
                                            KeyPair.name == name)).first():
                raise dup
            s.add(kp)
            record(s, "key-pair", kp.key_pair_id, account_id, None, "available",
                   "imported" if public_key else "created")
    except IntegrityError:
        raise dup from None
    return kp, private_text


def list_page(db: Database, account_id: str, page: PageRequest) -> Page[KeyPairPublic]:
    q = select(KeyPair).where(KeyPair.account_id == account_id)
    with db.session() as s:
        return pagination.list_page(
            s, q, ORDER, page,
            lambda rows: [KeyPairPublic.model_validate(k, from_attributes=True) for k in rows])


def get(s: Session, account_id: str, name: str) -> KeyPair:
    kp = s.exec(select(KeyPair).where(KeyPair.account_id == account_id,
                                      KeyPair.name == name)).first()
    if kp is None:
        raise NotFound(f"key pair {name!r} not found", code=NOT_FOUND)
    return kp


def delete(db: Database, account_id: str, name: str) -> str | None:
    """EC2 semantics: deleting a key pair that does not exist succeeds. Returns the deleted id."""
    with db.session() as s:
        kp = s.exec(select(KeyPair).where(KeyPair.account_id == account_id,
                                          KeyPair.name == name)).first()
        if kp is not None:
            s.delete(kp)
            record(s, "key-pair", kp.key_pair_id, account_id, "available", "deleted", "deleted")
            return kp.key_pair_id
    return None
