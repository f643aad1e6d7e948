"""Cost estimates before a launch (`instances run --dry-run`): what a RunInstancesRequest would
create, priced at the rates in effect now. It validates the request as a launch does (image,
type, block devices) but writes nothing and places nothing.

Each line is priced for one hour and for one billing month (730 hours, services/money.py) of
`max_count` instances: the instance hours, their root disks and extra volumes (GiB-month
prorated), and their public IPv4 addresses. Amounts are rounded like line items (0.0001).
"""
from __future__ import annotations

import math
from decimal import Decimal

from controller.db import Database
from controller.ids import utcnow
from controller.models import RunInstancesRequest
from controller.services import block_devices, images, instance_types, money, subnets
from controller.services.capacity import GIB
from controller.services.prices import Timeline
from controller.settings import Settings


def _line(prices: Timeline, now: int, usage_type: str, dimension: str, quantity: int,
          count: int, what: str) -> dict:
    rate, _ = prices.at(usage_type, dimension, now)
    t = money.USAGE_TYPES[usage_type]
    gib = quantity * count if t.per_gib else 1
    hours = 1 if t.per_gib else count
    return {"what": what, "usage_type": usage_type, "dimension": dimension, "unit": t.unit,
            "rate": str(rate), "quantity": quantity, "count": count,
            "hourly": money.item_amount(rate, usage_type, gib, hours * money.HOUR_SECONDS),
            "monthly": money.item_amount(rate, usage_type, gib, hours * money.MONTH_SECONDS)}


def estimate(db: Database, settings: Settings, caller, req: RunInstancesRequest) -> dict:
    now = utcnow()
    with db.session(notify=False) as s:
        image = images.get(s, caller, req.image)
        itype = instance_types.resolve_for_launch(s, req.instance_type)
        devices = block_devices.validate(s, settings, caller, req.block_device_mappings,
                                         image=image, root_disk_gib=req.root_disk_gib)
        root_gib = next((g for g in (req.root_disk_gib, devices.root_gib) if g is not None),
                        max(1, math.ceil(image.virtual_size / GIB)))
        if req.associate_public_ip is not None:
            public = req.associate_public_ip
        elif req.subnet_id is not None:
            public = subnets.get(s, caller, req.subnet_id).map_public_ip_on_launch
        else:
            public = True  # the default subnet maps public IPs on launch
        prices = Timeline.load(s)
    t, n = int(now.timestamp()), req.max_count
    lines = [_line(prices, t, "instance-hours", itype.name, 1, n, f"{n} x {itype.name}"),
             _line(prices, t, "volume-gib-month", "", root_gib, n, f"root disk {root_gib} GiB")]
    for v in devices.volumes:
        lines.append(_line(prices, t, "volume-gib-month", "", v.size_gib, n,
                           f"volume {v.device} {v.size_gib} GiB"))
    if public:
        lines.append(_line(prices, t, "public-ipv4-hours", "", 1, n, "public IPv4 address"))
    hourly = sum((ln["hourly"] for ln in lines), Decimal(0))
    monthly = sum((ln["monthly"] for ln in lines), Decimal(0))
    for ln in lines:
        ln["hourly"], ln["monthly"] = str(ln["hourly"]), str(ln["monthly"])
    return {"dry_run": True, "instance_type": itype.name, "count": n, "currency": "USD",
            "as_of": now.isoformat(), "month_hours": money.MONTH_HOURS, "lines": lines,
            "hourly": str(hourly), "monthly": str(monthly)}
