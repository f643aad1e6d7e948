"""Launch templates: create (name unique per account), versions (immutable; new ones from a
source version with overrides), default/latest version, describe with filters and keyset pages,
delete (a template, or versions other than the default), and resolve(): template + version ->
the RunInstancesRequest a launch sends (Auto Scaling groups use it).

A version is validated when it is created exactly as `instances run` validates a launch (the
same service functions: image, instance type, key pair, block device mappings, subnet and
security groups, tags, user data), so a broken version never exists: the same codes, nothing
written. Placement and capacity are the launch's business, not the template's.
"""
from __future__ import annotations

from pydantic import ValidationError
from sqlmodel import Session, delete, select

from controller.db import Database
from controller.errors import Conflict, InvalidParameter, NotFound
from controller.ids import new_id, utcnow
from controller.models.instance import RunInstancesRequest
from controller.models.launch_template import (LaunchTemplate, LaunchTemplateCreate,
                                               LaunchTemplateData, LaunchTemplatePublic,
                                               LaunchTemplateVersion,
                                               LaunchTemplateVersionCreate,
                                               LaunchTemplateVersionPublic)
from controller.services import (block_devices, filters, images, instance_network,
                                 instance_types, instances, key_pairs, pagination, vpcs)
from controller.services.pagination import Page, PageRequest
from controller.services.sg_rules import Limits
from controller.settings import Settings

ID_NOT_FOUND = "InvalidLaunchTemplateId.NotFound"
NAME_NOT_FOUND = "InvalidLaunchTemplateName.NotFoundException"
NAME_EXISTS = "InvalidLaunchTemplateName.AlreadyExistsException"
VERSION_NOT_FOUND = "InvalidLaunchTemplateId.VersionNotFound"
MAX_VERSIONS = 10000
ORDER = pagination.Order(LaunchTemplate.created_at, LaunchTemplate.launch_template_id)
VERSION_ORDER = pagination.Order(LaunchTemplateVersion.version_number, LaunchTemplateVersion.id)
FILTERS = {"launch-template-id": "launch_template_id",
           "launch-template-name": "launch_template_name"}


# -- validation ----------------------------------------------------------------------------------
def parse_data(doc: dict) -> LaunchTemplateData:  # type: ignore[valid-type]
    try:
        return LaunchTemplateData.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidParameter(f"launch_template_data.{where}: {first['msg']}") from None


def validate(db: Database, settings: Settings, caller, data) -> None:
    """The checks `instances run` makes of these parameters, in its order and with its codes;
    raises the first broken rule's KumoError."""
    instances._check_tags(data.tags)  # the same rules as a launch, in one place
    instances._user_data(data.user_data)
    if data.subnet_id is None and data.security_group_ids:
        vpcs.ensure_default(db, caller.account_id)  # groups named without a subnet: default VPC
    with db.session(notify=False) as s:
        image = images.get(s, caller, data.image)
        instance_types.resolve_for_launch(s, data.instance_type)
        if data.key_name is not None:
            key_pairs.get(s, caller.account_id, data.key_name)
        block_devices.validate(s, settings, caller, data.block_device_mappings, image=image,
                               root_disk_gib=data.root_disk_gib)
        if data.subnet_id is not None or data.security_group_ids:
            instance_network.resolve(s, caller, data.subnet_id, data.security_group_ids,
                                     data.associate_public_ip, Limits.from_settings(settings))
        s.rollback()  # nothing of a validation is kept


# -- lookups -------------------------------------------------------------------------------------
def get(s: Session, caller, ref: str) -> LaunchTemplate:
    """By id (lt-...) or name, in the caller's account."""
    lt = None
    if ref.startswith("lt-"):
        lt = s.get(LaunchTemplate, ref)
        if lt is not None and lt.account_id != caller.account_id:
            lt = None
    if lt is None:
        lt = s.exec(select(LaunchTemplate).where(LaunchTemplate.account_id == caller.account_id,
                                                 LaunchTemplate.name == ref)).first()
    if lt is None:
        code = ID_NOT_FOUND if ref.startswith("lt-") else NAME_NOT_FOUND
        raise NotFound(f"launch template {ref} not found", code=code)
    return lt


def version_number(lt: LaunchTemplate, version: str | int | None) -> int:
    """"$Default"/None, "$Latest" or a number -> the version number (not checked to exist)."""
    if version is None or version == "$Default":
        return lt.default_version
    if version == "$Latest":
        return lt.latest_version
    try:
        n = int(version)
    except (TypeError, ValueError):
        raise InvalidParameter(f"version {version!r}: a number, $Default or $Latest",
                               code="InvalidLaunchTemplateVersion") from None
    if n < 1:
        raise InvalidParameter(f"version {version!r}: versions start at 1",
                               code="InvalidLaunchTemplateVersion")
    if n > MAX_VERSIONS:  # never a version (and never a number past SQL's integers)
        raise NotFound(f"launch template {lt.launch_template_id} has no version {n}",
                       code=VERSION_NOT_FOUND)
    return n


def get_version(s: Session, lt: LaunchTemplate, version: str | int | None
                ) -> LaunchTemplateVersion:
    n = version_number(lt, version)
    row = s.exec(select(LaunchTemplateVersion).where(
        LaunchTemplateVersion.launch_template_id == lt.launch_template_id,
        LaunchTemplateVersion.version_number == n)).first()
    if row is None:
        raise NotFound(f"launch template {lt.launch_template_id} has no version {n}",
                       code=VERSION_NOT_FOUND)
    return row


def resolve(s: Session, caller, ref: str, version: str | int | None = "$Default"
            ) -> tuple[RunInstancesRequest, LaunchTemplate, int]:
    """Template id or name + version -> (the request one launch sends, the template, the
    version number). The request launches one instance; the caller adds subnet, tags, token."""
    lt = get(s, caller, ref)
    row = get_version(s, lt, version)
    return RunInstancesRequest.model_validate(row.data), lt, row.version_number


# -- public shapes -------------------------------------------------------------------------------
def to_public(lt: LaunchTemplate) -> LaunchTemplatePublic:
    return LaunchTemplatePublic(launch_template_id=lt.launch_template_id,
                                launch_template_name=lt.name,
                                default_version_number=lt.default_version,
                                latest_version_number=lt.latest_version,
                                create_time=lt.created_at)


def version_public(lt: LaunchTemplate, v: LaunchTemplateVersion) -> LaunchTemplateVersionPublic:
    return LaunchTemplateVersionPublic(
        launch_template_id=lt.launch_template_id, launch_template_name=lt.name,
        version_number=v.version_number, version_description=v.description,
        default_version=v.version_number == lt.default_version,
        launch_template_data=LaunchTemplateData.model_validate(v.data), create_time=v.created_at)


# -- operations ----------------------------------------------------------------------------------
def create(db: Database, settings: Settings, caller, body: LaunchTemplateCreate
           ) -> LaunchTemplatePublic:
    validate(db, settings, caller, body.launch_template_data)
    now = utcnow()
    with db.session() as s:
        if s.exec(select(LaunchTemplate).where(LaunchTemplate.account_id == caller.account_id,
                                               LaunchTemplate.name ==
                                               body.launch_template_name)).first():
            raise Conflict(f"launch template name {body.launch_template_name} already in use",
                           code=NAME_EXISTS)
        lt = LaunchTemplate(launch_template_id=new_id("lt"), account_id=caller.account_id,
                            name=body.launch_template_name, default_version=1,
                            latest_version=1, created_at=now, updated_at=now)
        s.add(lt)
        s.flush()
        s.add(LaunchTemplateVersion(launch_template_id=lt.launch_template_id, version_number=1,
                                    description=body.version_description,
                                    data=body.launch_template_data.model_dump(mode="json"),
                                    created_at=now))
        return to_public(lt)


def create_version(db: Database, settings: Settings, caller, ref: str,
                   body: LaunchTemplateVersionCreate) -> LaunchTemplateVersionPublic:
    with db.session(notify=False) as s:
        lt = get(s, caller, ref)
        base = (dict(get_version(s, lt, body.source_version).data)
                if body.source_version is not None else {})
    data = parse_data({**base, **body.launch_template_data})
    validate(db, settings, caller, data)
    now = utcnow()
    with db.session() as s:
        lt = get(s, caller, ref)
        if lt.latest_version >= MAX_VERSIONS:
            raise InvalidParameter(f"a launch template has at most {MAX_VERSIONS} versions",
                                   code="LaunchTemplateVersionLimitExceeded")
        lt.latest_version += 1
        lt.updated_at = now
        s.add(lt)
        row = LaunchTemplateVersion(launch_template_id=lt.launch_template_id,
                                    version_number=lt.latest_version,
                                    description=body.version_description,
                                    data=data.model_dump(mode="json"), created_at=now)
        s.add(row)
        s.flush()
        return version_public(lt, row)


def modify(db: Database, caller, ref: str, default_version: str) -> LaunchTemplatePublic:
    if default_version == "$Default":
        raise InvalidParameter("the default version is a number or $Latest",
                               code="InvalidLaunchTemplateVersion")
    with db.session() as s:
        lt = get(s, caller, ref)
        lt.default_version = get_version(s, lt, default_version).version_number
        lt.updated_at = utcnow()
        s.add(lt)
        return to_public(lt)


def delete_template(db: Database, caller, ref: str) -> None:
    # A group launching from it keeps working until it next launches: EC2 lets the template
    # go too (the group's launches then fail, recorded as failed activities).
    with db.session() as s:
        lt = get(s, caller, ref)
        s.exec(delete(LaunchTemplateVersion).where(
            LaunchTemplateVersion.launch_template_id == lt.launch_template_id))
        s.delete(lt)


def delete_version(db: Database, caller, ref: str, version: str) -> None:
    with db.session() as s:
        lt = get(s, caller, ref)
        row = get_version(s, lt, version)
        if row.version_number == lt.default_version:
            raise Conflict("the default version cannot be deleted: delete the template, or "
                           "make another version the default first",
                           code="InvalidLaunchTemplateVersion.DefaultVersion")
        s.delete(row)


def get_public(db: Database, caller, ref: str) -> LaunchTemplatePublic:
    with db.session(notify=False) as s:
        return to_public(get(s, caller, ref))


def list_page(db: Database, caller, page: PageRequest, params) -> Page[LaunchTemplatePublic]:
    by, tags = filters.parse(FILTERS, filters.group_query(FILTERS, params))
    q = select(LaunchTemplate).where(LaunchTemplate.account_id == caller.account_id)
    q = filters.where_in(q, (LaunchTemplate.launch_template_id, by.get("launch_template_id")),
                         (LaunchTemplate.name, by.get("launch_template_name")))
    if tags:  # templates carry no tags yet: a tag filter matches none
        q = q.where(LaunchTemplate.launch_template_id.is_(None))
    with db.session(notify=False) as s:
        return pagination.list_page(s, q, ORDER, page, lambda rows: [to_public(r) for r in rows])


def list_versions(db: Database, caller, ref: str, page: PageRequest,
                  versions: list[str]) -> Page[LaunchTemplateVersionPublic]:
    """The template's versions in number order; `versions` ("1", "$Latest", ...) narrows them."""
    with db.session(notify=False) as s:
        lt = get(s, caller, ref)
        q = select(LaunchTemplateVersion).where(
            LaunchTemplateVersion.launch_template_id == lt.launch_template_id)
        if versions:
            q = q.where(LaunchTemplateVersion.version_number.in_(
                [version_number(lt, v) for v in versions]))
        return pagination.list_page(s, q, VERSION_ORDER, page,
                                    lambda rows: [version_public(lt, r) for r in rows])
