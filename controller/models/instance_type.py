"""Instance types: named (vcpus, memory) sizes; retired ones refuse new launches."""
from __future__ import annotations

from sqlmodel import Field, SQLModel

from controller.models.common import TypeName


class InstanceTypeBase(SQLModel):
    name: TypeName = Field(primary_key=True, max_length=40)
    vcpus: int = Field(ge=1, le=64)
    memory_mib: int = Field(ge=64, le=1048576)
    hourly_price: float = Field(default=0.0, ge=0)


class InstanceTypeCreate(InstanceTypeBase):
    pass


class InstanceTypePublic(InstanceTypeBase):
    retired: bool = False


class InstanceType(InstanceTypeBase, table=True):
    __tablename__ = "instance_type"
    retired: bool = False
