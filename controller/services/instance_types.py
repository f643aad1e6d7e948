"""Instance types: list, create (admin), retire (admin), seed defaults, resolve for launches.

The `hourly_price` shown is the price list's current instance-hours rate of the type (what a run
starting now is billed, services/prices.py), not the price the type was created with; a type
without a list entry yet shows the price it was created with."""
from __future__ import annotations

from sqlmodel import Session, select

from controller.db import Database
from controller.errors import Conflict, InvalidParameter, NotFound
from controller.events import record
from controller.ids import utcnow
from controller.models import InstanceType, InstanceTypeCreate, InstanceTypePublic
from controller.models.billing import Price
from controller.services import pagination, prices
from controller.services.pagination import Page, PageRequest

#: Smallest first; the name (the primary key) breaks ties.
ORDER = pagination.Order(InstanceType.vcpus, InstanceType.memory_mib, InstanceType.name)

# Small sizes first: the lab's TCG guests need little memory.
DEFAULTS = [
    ("t3.nano", 1, 256, 0.0052), ("t3.micro", 1, 512, 0.0104), ("t3.small", 2, 1024, 0.0208),
    ("t3.medium", 2, 2048, 0.0416), ("t3.large", 2, 4096, 0.0832), ("t3.xlarge", 4, 8192, 0.1664),
]


def seed(db: Database) -> None:
    with db.session() as s:
        if s.exec(select(InstanceType)).first():
            return
        for name, vcpus, mem, price in DEFAULTS:
            s.add(InstanceType(name=name, vcpus=vcpus, memory_mib=mem, hourly_price=price))


def current_prices(s: Session, names) -> dict[str, float]:
    """{type name: its instance-hours rate in effect now} for the names that have one."""
    rows = s.exec(select(Price.dimension, Price.rate).where(
        Price.usage_type == "instance-hours", Price.dimension.in_(list(names)),
        Price.effective_at <= utcnow()).order_by(Price.effective_at)).all()
    return {name: float(rate) for name, rate in rows}  # the latest entry of each name wins


def to_public(t: InstanceType, price: float | None = None) -> InstanceTypePublic:
    out = InstanceTypePublic.model_validate(t, from_attributes=True)
    return out if price is None else out.model_copy(update={"hourly_price": price})


def get_public(db: Database, t: InstanceType) -> InstanceTypePublic:
    """`t` as answered: with its current list price."""
    with db.session(notify=False) as s:
        return to_public(t, current_prices(s, [t.name]).get(t.name))


def list_page(db: Database, page: PageRequest,
              include_retired: bool = False) -> Page[InstanceTypePublic]:
    q = select(InstanceType)
    if not include_retired:
        q = q.where(InstanceType.retired == False)  # noqa: E712
    with db.session() as s:
        def public(rows):
            now = current_prices(s, [t.name for t in rows])
            return [to_public(t, now.get(t.name)) for t in rows]
        return pagination.list_page(s, q, ORDER, page, public)


def create(db: Database, req: InstanceTypeCreate) -> InstanceType:
    with db.session() as s:
        existing = s.get(InstanceType, req.name)
        if existing and not existing.retired:
            raise Conflict(f"instance type {req.name} exists", code="InstanceTypeAlreadyExists")
        if existing:  # re-creating a retired name revives it with the new size
            for k, v in req.model_dump().items():
                setattr(existing, k, v)
            existing.retired = False
            t = existing
        else:
            t = InstanceType(**req.model_dump())
            s.add(t)
        prices.add_for_new_type(s, t)  # billed at its hourly_price from now (services/prices.py)
        record(s, "instance-type", t.name, None, None, "available", "created")
    return t


def retire(db: Database, name: str) -> InstanceType:
    with db.session() as s:
        t = s.get(InstanceType, name)
        if t is None:
            raise NotFound(f"instance type {name} not found", code="InvalidInstanceType")
        if not t.retired:
            t.retired = True
            record(s, "instance-type", t.name, None, "available", "retired", "retired")
    return t


def resolve_for_launch(s: Session, name: str) -> InstanceType:
    t = s.get(InstanceType, name)
    if t is None or t.retired:
        raise InvalidParameter(f"instance type {name!r} does not exist or is retired",
                               code="InvalidInstanceType")
    return t
