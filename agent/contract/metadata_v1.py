"""Extension "instance-metadata" of the v1 contract: what the controller sends with an
InstanceSpec so the host's metadata service (agent/metadata/) can answer the instance.

InstanceSpec.metadata carries
- `document`: the InstanceDocument (agent/metadata/document.py is its schema, re-exported here so
  the controller imports only the contract). Its `user_data` is always None on the wire: the
  agent takes the bytes from InstanceSpec.user_data_b64 (one copy of up to 16 KiB, and raw bytes
  need no JSON encoding).
- `identity`: the signed instance identity document. The controller owns the cloud's signing
  key (it never leaves the controller's state dir) and signs each instance's document when it
  builds the spec; the agent serves the three values as they came, so metadata keeps answering
  (signed) while the controller is down. The document is static per instance: every field of
  it (ids, type, AZ, private IP, pendingTime = launch time) is fixed for the instance's life.

identity_document() and IdentitySigner are re-exported for the controller's side of the same
promise: the bytes it signs are exactly the bytes agent/metadata/identity.py lays out.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints, model_validator

from agent.metadata.document import (InstanceDocument, MetadataOptions, NetworkInterface,
                                     PublicKey)
from agent.metadata.identity import IdentitySigner, identity_document

__all__ = ["IdentitySigner", "InstanceDocument", "InstanceMetadata", "MetadataOptions",
           "NetworkInterface", "PublicKey", "SignedIdentity", "identity_document"]

_B64_LINES = r"^[A-Za-z0-9+/=\n]{1,16384}$"


class SignedIdentity(BaseModel):
    """dynamic/instance-identity/{document,signature,pkcs7} exactly as served."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The identity document's JSON text (identity_document() of the document).
    document: Annotated[str, StringConstraints(min_length=2, max_length=16384)]
    #: base64 (64-character lines) of RSA PKCS#1 v1.5 SHA-256 over `document`'s UTF-8 bytes.
    signature: Annotated[str, StringConstraints(pattern=_B64_LINES)]
    #: base64 (64-character lines, no armour) of a detached DER PKCS#7 over the same bytes.
    pkcs7: Annotated[str, StringConstraints(pattern=_B64_LINES)]


class InstanceMetadata(BaseModel):
    """InstanceSpec.metadata (extension instance-metadata)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    document: InstanceDocument
    #: None: the controller has no signing key; the identity entries then answer 404.
    identity: SignedIdentity | None = None

    @model_validator(mode="after")
    def _no_inline_user_data(self) -> "InstanceMetadata":
        if self.document.user_data is not None:
            raise ValueError("document.user_data travels as InstanceSpec.user_data_b64")
        return self
