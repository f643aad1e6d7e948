"""The instance metadata service's controller side (issue 12): each instance's metadata options
(at run, from launch templates, ModifyInstanceMetadataOptions), the document its host serves at
169.254.169.254, and the cloud's identity signing key and certificate.

Defaults (DEFAULTS): http_tokens "required" (IMDSv2 only: a careful cloud's default for new
instances, as AWS does for new-generation AMIs; a v1 GET answers 401 and SSRF-style "fetch this
URL" bugs in guests cannot read credentials-like data), http_endpoint "enabled", hop limit 1
(token replies do not cross a router or a container bridge in the guest), tags in metadata
"disabled". Instances from before the options existed (NULL column) get the same defaults.

Identity: the controller owns one RSA-2048 key and a self-signed certificate, generated at first
use into its state dir (metadata-identity.key, mode 0600, and metadata-identity.crt) like the
admin key. The key never leaves the controller: each instance's identity document is signed here
when its spec is built and travels, signed, with the spec (agent/contract/metadata_v1.py), so
hosts answer while the controller is down. GET /v1/metadata/certificate publishes the
certificate. The document is static per instance (pendingTime is the launch time).

What is not live: an elastic IP associated while the instance runs reaches its metadata with
the next spec push (options, groups, volumes, stop/start push one), not at once.
"""
from __future__ import annotations

import logging
import re
import threading
from ipaddress import IPv4Network
from pathlib import Path

from sqlmodel import Session, select

from agent.contract.metadata_v1 import (IdentitySigner, InstanceDocument, InstanceMetadata,
                                        MetadataOptions, NetworkInterface, PublicKey,
                                        SignedIdentity, identity_document)
from agent.fsutil import write_file
from controller.db import Database
from controller.errors import IncorrectState, InvalidParameter, NotFound
from controller.events import record
from controller.ids import utcnow
from controller.models import (Instance, InstanceMetadataOptions, InstanceSecurityGroup,
                               SecurityGroup, Subnet, VolumeAttachmentRow, Vpc)
from controller.services import instance_network, lifecycle

DEFAULTS = InstanceMetadataOptions(http_tokens="required", http_endpoint="enabled",
                                   http_put_response_hop_limit=1,
                                   instance_metadata_tags="disabled")
KEY_FILE = "metadata-identity.key"
CERT_FILE = "metadata-identity.crt"
#: The root device every Kumo instance boots from (virtio: vda).
ROOT_DEVICE = "vda"
_ENTRY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+,-]{0,254}$")
_TAG_KEY_RE = re.compile(r"^[A-Za-z0-9+\-._:@]{1,128}$")
_GROUP_NAME_RE = re.compile(r"^[A-Za-z0-9 ._:/()#,@\[\]+=&;{}!$*-]{1,255}$")
_NOT_FOUND = "InvalidInstanceID.NotFound"

log = logging.getLogger(__name__)


# -- options -------------------------------------------------------------------------------

def resolve_options(requested: InstanceMetadataOptions | None,
                    current: dict | None = None) -> dict:
    """Every option set: `requested`'s fields over `current` (a stored dict) over DEFAULTS."""
    base = DEFAULTS.model_dump()
    if current:
        base.update({k: v for k, v in current.items() if k in base and v is not None})
    if requested is not None:
        base.update(requested.model_dump(exclude_none=True))
    # Validated again as a whole (a stored dict edited by hand must not reach an agent).
    return MetadataOptions.model_validate(base).model_dump()


def effective(inst: Instance) -> InstanceMetadataOptions:
    """The options in effect for `inst` (public shape, every field set)."""
    return InstanceMetadataOptions.model_validate(resolve_options(None, inst.metadata_options))


def modify(db: Database, caller, instance_id: str,
           body: InstanceMetadataOptions) -> tuple[Instance, InstanceMetadataOptions]:
    """ModifyInstanceMetadataOptions: change the given options of a live instance. Nothing
    given, or a terminated instance: refused, nothing changed. The new options reach the host
    with the instance's next spec generation (served from the next request on)."""
    if not body.model_dump(exclude_none=True):
        raise InvalidParameter("give at least one metadata option to change")
    with db.session() as s:
        inst = s.get(Instance, instance_id)
        if inst is None or (inst.account_id != caller.account_id and not caller.is_admin):
            raise NotFound(f"instance {instance_id} not found", code=_NOT_FOUND)
        if inst.state in ("shutting-down", "terminated"):
            raise IncorrectState(f"instance {instance_id} is {inst.state}",
                                 code="IncorrectInstanceState")
        new = resolve_options(body, inst.metadata_options)
        if new != resolve_options(None, inst.metadata_options):
            inst.metadata_options = new
            inst.updated_at = utcnow()
            lifecycle.bump(inst)
            s.add(inst)
            record(s, "instance", inst.instance_id, inst.account_id, inst.state, inst.state,
                   "metadata options modified")
        s.flush()
        s.refresh(inst)
        s.expunge(inst)
        return inst, InstanceMetadataOptions.model_validate(new)


def state_of(inst: Instance) -> str:
    """"applied" once the host acknowledged the instance's current spec, else "pending"."""
    return "applied" if inst.acked_generation >= inst.generation else "pending"


# -- the identity key ----------------------------------------------------------------------

_signers: dict[Path, IdentitySigner] = {}
_signers_lock = threading.Lock()


def signer(state_dir: Path) -> IdentitySigner:
    """The cloud's identity signer: loaded from state_dir, generated there at first use."""
    state_dir = Path(state_dir).absolute()
    with _signers_lock:
        got = _signers.get(state_dir)
        if got is not None:
            return got
        key_path, cert_path = state_dir / KEY_FILE, state_dir / CERT_FILE
        if key_path.exists() and cert_path.exists():
            got = IdentitySigner.from_pem(key_path.read_bytes(), cert_path.read_bytes())
        else:
            got = IdentitySigner.generate(common_name="Kumo instance identity")
            state_dir.mkdir(parents=True, exist_ok=True)
            write_file(key_path, got.key_pem(), 0o600)
            write_file(cert_path, got.certificate_pem, 0o644)
        _signers[state_dir] = got
        return got




def certificate_pem(state_dir: Path) -> bytes:
    return signer(state_dir).certificate_pem


# -- the document --------------------------------------------------------------------------

def region_of(availability_zone: str) -> str:
    """EC2's region of an AZ: the AZ without its trailing letter ("kumo-1a" -> "kumo-1")."""
    return availability_zone[:-1] if availability_zone[-1:].isalpha() and \
        len(availability_zone) > 1 else availability_zone


def private_dns(ip: str, region: str) -> str:
    return f"ip-{ip.replace('.', '-')}.{region}.compute.internal"


def _entry(value: str | None, fallback: str) -> str:
    return value if value and _ENTRY_RE.match(value) else fallback


def document(s: Session, inst: Instance, availability_zone: str) -> InstanceDocument | None:
    """What the metadata service serves `inst` (user_data excluded: it travels in the spec).
    None for an instance without a VPC address (no port the service could know it by)."""
    if not (inst.vpc_id and inst.subnet_id and inst.private_ip and inst.mac):
        return None
    subnet, vpc = s.get(Subnet, inst.subnet_id), s.get(Vpc, inst.vpc_id)
    if subnet is None or vpc is None:
        return None
    region = region_of(availability_zone)
    public_ip = instance_network.public_ips(s, [inst.instance_id]).get(inst.instance_id)
    groups = list(s.exec(select(SecurityGroup).join(
        InstanceSecurityGroup, InstanceSecurityGroup.group_id == SecurityGroup.group_id)
        .where(InstanceSecurityGroup.instance_id == inst.instance_id)
        .order_by(SecurityGroup.group_id)))
    nic = NetworkInterface(
        mac=inst.mac, device_number=0, interface_id="eni-" + inst.instance_id[2:],
        local_ipv4s=[inst.private_ip], public_ipv4s=[public_ip] if public_ip else [],
        owner_id=inst.account_id, subnet_id=subnet.subnet_id,
        subnet_ipv4_cidr_block=IPv4Network(subnet.cidr_block), vpc_id=vpc.vpc_id,
        vpc_ipv4_cidr_blocks=[IPv4Network(vpc.cidr_block)],
        security_group_ids=[g.group_id for g in groups],
        security_group_names=[g.group_name if _GROUP_NAME_RE.match(g.group_name) else g.group_id
                              for g in groups])
    mapping = {"ami": ROOT_DEVICE, "root": f"/dev/{ROOT_DEVICE}"}
    atts = s.exec(select(VolumeAttachmentRow).where(
        VolumeAttachmentRow.instance_id == inst.instance_id,
        VolumeAttachmentRow.state.in_(("attaching", "attached"))).order_by(
        VolumeAttachmentRow.device))
    for n, a in enumerate(atts, start=1):
        mapping[f"ebs{n}"] = a.device.removeprefix("/dev/")
    keys = []
    if inst.ssh_public_key:
        keys.append(PublicKey(name=_entry(inst.key_name, "key"),
                              openssh_key=inst.ssh_public_key.strip()))
    # Tag keys that cannot be a path segment (EC2 refuses '/' and spaces there) are left out.
    tags = {k: v for k, v in (inst.tags or {}).items() if _TAG_KEY_RE.match(k)}
    dns = private_dns(inst.private_ip, region)
    return InstanceDocument(
        instance_id=inst.instance_id, ami_id=inst.image_id, instance_type=inst.instance_type,
        owner_id=inst.account_id, reservation_id=inst.reservation_id, hostname=dns,
        local_hostname=dns, local_ipv4=inst.private_ip, public_ipv4=public_ip,
        availability_zone=availability_zone, region=region,
        pending_time=inst.launch_time or inst.created_at, interfaces=[nic],
        block_device_mapping=mapping, public_keys=keys, tags=tags, user_data=None,
        metadata_options=MetadataOptions.model_validate(
            resolve_options(None, inst.metadata_options)))


def wire(s: Session, inst: Instance, availability_zone: str,
         state_dir: Path | None) -> InstanceMetadata | None:
    """InstanceSpec.metadata for `inst`: its document, the identity document signed with the
    cloud's key (state_dir None: unsigned, the identity entries answer 404)."""
    try:
        doc = document(s, inst, availability_zone)
    except ValueError as exc:  # a row the document refuses: the instance runs, unserved
        log.error("no metadata for %s: %s", inst.instance_id, exc)
        return None
    if doc is None:
        return None
    identity = None
    if state_dir is not None:
        sig = signer(state_dir)
        body = identity_document(doc)
        identity = SignedIdentity(document=body.decode(), signature=sig.signature(body).decode(),
                                  pkcs7=sig.pkcs7(body).decode())
    return InstanceMetadata(document=doc, identity=identity)
