"""The EC2 metadata path tree: (InstanceDocument, path) -> Reply, as EC2 answers it.

This module owns *what* a path answers; nothing here knows about sockets, tokens or rate limits
(server.py), and signing is identity.py's. It is pure apart from the signer's cache.

Layout (as EC2, and as cloud-init's MetadataMaterializer parses it):
- `/` lists the versions, one per line, no trailing '/'.
- `/<version>/` lists `dynamic`, `meta-data`, `user-data` (the last only when there is user-data).
  EC2 writes these three *without* a trailing '/', and this reproduces that quirk; cloud-init
  never reads this level (it asks for `<version>/meta-data/` directly).
- Every listing below that ends sub-directories with '/', leaves without; entries sorted as EC2.
- `public-keys/` lists `0=<name>`; `public-keys/0/` lists `openssh-key` (cloud-init turns
  `0=name` into a fetch of `0/openssh-key`).
- A directory asked for without its trailing slash still lists; a leaf asked for with one is still
  the leaf (the path is split on '/' and empty segments are ignored, so `//` collapses too).
  A query string is ignored. Anything else is 404 with EC2's fixed error page.
- Every dated version serves the same (current) tree: EC2 hides keys newer than a version, but
  no reader Kumo cares about relies on their absence.
- Multi-valued leaves (security-groups, local-ipv4s, ...) are one value per line, no trailing
  newline, as EC2.
"""
from __future__ import annotations

from typing import Callable, Union

from agent.metadata import reply
from agent.metadata.document import InstanceDocument, NetworkInterface
from agent.metadata.identity import IdentitySigner, identity_document
from agent.metadata.reply import Reply

#: Versions listed at `/`: EC2's dated versions up to 2021-03-23 (cloud-init probes 2021-03-23,
#: 2018-09-24, 2016-09-02, then falls back to 2009-04-04), then `latest`.
VERSIONS: tuple[str, ...] = (
    "1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15", "2008-02-01",
    "2008-09-01", "2009-04-04", "2011-01-01", "2011-05-01", "2012-01-12", "2014-02-25",
    "2014-11-05", "2015-10-20", "2016-04-19", "2016-06-30", "2016-09-02", "2018-03-28",
    "2018-08-17", "2018-09-24", "2019-10-01", "2020-10-27", "2021-01-03", "2021-03-23", "latest",
)

#: A leaf is its bytes, or a function computing them (signatures: only signed when asked for).
Leaf = Union[bytes, Callable[[], bytes]]


class Directory:
    """A listing node: children by path segment, and the listing text's entries.

    `entries` overrides the default listing (child name, plus '/' for sub-directories) where EC2
    lists something else: public-keys' `0=name` and the version level's bare names.
    """

    def __init__(self, children: dict[str, "Node"], entries: list[str] | None = None) -> None:
        self.children = children
        self.entries = entries if entries is not None else [
            name + ("/" if isinstance(child, Directory) else "")
            for name, child in children.items()]

    def listing(self) -> bytes:
        return "\n".join(self.entries).encode()


Node = Union[Directory, Leaf]


def _lines(values) -> bytes:
    return "\n".join(str(v) for v in values).encode()


def _sorted_dir(children: dict[str, Node]) -> Directory:
    return Directory(dict(sorted(children.items())))


def _interface(doc: InstanceDocument, eni: NetworkInterface) -> Directory:
    children: dict[str, Node] = {
        "device-number": str(eni.device_number).encode(),
        "interface-id": eni.interface_id.encode(),
        "local-hostname": doc.local_hostname.encode(),
        "local-ipv4s": _lines(eni.local_ipv4s),
        "mac": eni.mac.encode(),
        "owner-id": eni.owner_id.encode(),
        "security-group-ids": _lines(eni.security_group_ids),
        "security-groups": _lines(eni.security_group_names),
        "subnet-id": eni.subnet_id.encode(),
        "subnet-ipv4-cidr-block": str(eni.subnet_ipv4_cidr_block).encode(),
        "vpc-id": eni.vpc_id.encode(),
        "vpc-ipv4-cidr-block": str(eni.vpc_ipv4_cidr_blocks[0]).encode(),
        "vpc-ipv4-cidr-blocks": _lines(eni.vpc_ipv4_cidr_blocks),
    }
    if eni.public_ipv4s:
        children["public-ipv4s"] = _lines(eni.public_ipv4s)
        # ipv4-associations/<public ip> -> the private address it maps to (same position).
        children["ipv4-associations"] = Directory({
            str(pub): str(priv).encode()
            for pub, priv in zip(eni.public_ipv4s, eni.local_ipv4s)})
        if eni.device_number == 0 and doc.public_hostname:
            children["public-hostname"] = doc.public_hostname.encode()
    return _sorted_dir(children)


def _meta_data(doc: InstanceDocument) -> Directory:
    primary = doc.primary_interface
    children: dict[str, Node] = {
        "ami-id": doc.ami_id.encode(),
        "ami-launch-index": b"0",
        "ami-manifest-path": b"(unknown)",
        "block-device-mapping": _sorted_dir(
            {k: v.encode() for k, v in doc.block_device_mapping.items()}),
        "hostname": doc.hostname.encode(),
        "instance-action": b"none",
        "instance-id": doc.instance_id.encode(),
        "instance-life-cycle": b"on-demand",
        "instance-type": doc.instance_type.encode(),
        "local-hostname": doc.local_hostname.encode(),
        "local-ipv4": str(doc.local_ipv4).encode(),
        "mac": primary.mac.encode(),
        "network": Directory({"interfaces": Directory({"macs": Directory({
            eni.mac: _interface(doc, eni)
            for eni in sorted(doc.interfaces, key=lambda e: e.device_number)})})}),
        "placement": Directory({
            "availability-zone": doc.availability_zone.encode(),
            "region": doc.region.encode()}),
        "profile": b"default-hvm",
        "reservation-id": doc.reservation_id.encode(),
        "security-groups": _lines(primary.security_group_names),
    }
    if doc.public_ipv4 is not None:
        children["public-ipv4"] = str(doc.public_ipv4).encode()
    if doc.public_hostname is not None:
        children["public-hostname"] = doc.public_hostname.encode()
    if doc.public_keys:
        keys = {str(i): Directory({"openssh-key": k.openssh_key.encode()})
                for i, k in enumerate(doc.public_keys)}
        children["public-keys"] = Directory(
            keys, [f"{i}={k.name}" for i, k in enumerate(doc.public_keys)])
    if doc.metadata_options.instance_metadata_tags == "enabled":
        children["tags"] = Directory({"instance": Directory(
            {k: v.encode() for k, v in sorted(doc.tags.items())})})
    return _sorted_dir(children)


def build(doc: InstanceDocument, signer: IdentitySigner) -> Directory:
    """The tree of one version for one instance (the same for every version, see above)."""
    document = identity_document(doc)
    identity = Directory({
        "document": document,
        "pkcs7": lambda: signer.pkcs7(document),
        "rsa2048": lambda: signer.pkcs7(document),
        "signature": lambda: signer.signature(document),
    })
    children: dict[str, Node] = {
        "dynamic": Directory({"instance-identity": identity}),
        "meta-data": _meta_data(doc),
    }
    if doc.user_data is not None:
        children["user-data"] = doc.user_data
    return Directory(children, sorted(children))


def resolve(doc: InstanceDocument, path: str, signer: IdentitySigner,
            root: Node | None = None) -> Reply:
    """Answer a GET of `path` (the request target, query string allowed) for this instance.
    `root`: build(doc, signer) made earlier (the server keeps one per document)."""
    segments = [s for s in path.split("?", 1)[0].split("/") if s]
    if not segments:
        return reply.ok(_lines(VERSIONS))
    if segments[0] not in VERSIONS:
        return reply.error(404)
    node: Node = root if root is not None else build(doc, signer)
    for segment in segments[1:]:
        if not isinstance(node, Directory) or segment not in node.children:
            return reply.error(404)
        node = node.children[segment]
    if isinstance(node, Directory):
        return reply.ok(node.listing())
    body = node() if callable(node) else node
    if segments[1:] == ["user-data"]:
        return reply.ok(body, reply.BINARY)
    return reply.ok(body)
