"""Launch templates: a named, versioned set of launch parameters (EC2 CreateLaunchTemplate).

A version's data is what `instances run` accepts (RunInstancesRequest), minus what belongs to
one call rather than to a template (counts, client token, one fixed private address): the
fields and their validation are taken from RunInstancesRequest itself, never restated. Versions
are immutable; a template has a default and a latest version number.
"""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, create_model
from pydantic import Field as PField
from sqlalchemy import JSON, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime
from controller.models.common import ResourceName
from controller.models.instance import RunInstancesRequest

#: RunInstancesRequest fields that describe one call, not a template.
NOT_IN_TEMPLATES = frozenset({"min_count", "max_count", "client_token", "private_ip"})

#: A version's launch parameters: RunInstancesRequest's fields (same types, limits, defaults).
LaunchTemplateData = create_model(
    "LaunchTemplateData", __config__=ConfigDict(extra="forbid"),
    **{name: (f.annotation, f) for name, f in RunInstancesRequest.model_fields.items()
       if name not in NOT_IN_TEMPLATES})


class LaunchTemplateCreate(BaseModel):
    launch_template_name: ResourceName
    version_description: str | None = PField(default=None, max_length=255)
    launch_template_data: LaunchTemplateData  # type: ignore[valid-type]


class LaunchTemplateVersionCreate(BaseModel):
    #: The version to start from ("$Default", "$Latest" or a number); None: start empty.
    source_version: str | None = PField(default=None, max_length=16)
    version_description: str | None = PField(default=None, max_length=255)
    #: With a source version: the fields to change (the rest is kept); without: the whole data.
    launch_template_data: dict = PField(default_factory=dict)


class LaunchTemplateModify(BaseModel):
    #: The new default version: a number or "$Latest".
    default_version: str = PField(min_length=1, max_length=16)


class LaunchTemplatePublic(BaseModel):
    launch_template_id: str
    launch_template_name: str
    default_version_number: int
    latest_version_number: int
    create_time: datetime


class LaunchTemplateVersionPublic(BaseModel):
    launch_template_id: str
    launch_template_name: str
    version_number: int
    version_description: str | None = None
    default_version: bool
    launch_template_data: LaunchTemplateData  # type: ignore[valid-type]
    create_time: datetime


class LaunchTemplate(SQLModel, table=True):
    __tablename__ = "launch_template"
    __table_args__ = (UniqueConstraint("account_id", "name", name="uq_launch_template_name"),
                      Index("ix_launch_template_account_created", "account_id", "created_at",
                            "launch_template_id"))
    launch_template_id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(foreign_key="account.account_id", max_length=32)
    name: str = Field(max_length=128)
    default_version: int = 1
    latest_version: int = 1
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)


class LaunchTemplateVersion(SQLModel, table=True):
    __tablename__ = "launch_template_version"
    __table_args__ = (UniqueConstraint("launch_template_id", "version_number",
                                       name="uq_launch_template_version"),)
    id: int | None = Field(default=None, primary_key=True)
    launch_template_id: str = Field(foreign_key="launch_template.launch_template_id",
                                    max_length=32)
    version_number: int
    description: str | None = Field(default=None, max_length=255)
    #: LaunchTemplateData as JSON (validated when written).
    data: dict = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = Field(sa_type=UtcDateTime)
