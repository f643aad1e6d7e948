"""Money and units, stated once: every billing module rounds and converts through here.

- Money is `decimal.Decimal`, never float; stored and answered as decimal strings.
- Usage is metered to the second. Hourly usage types bill seconds / 3600 hours. GiB-month usage
  types bill GiB x seconds / MONTH_SECONDS, where one billing month is 730 hours (2,628,000 s,
  AWS's convention: 8760 h / 12), whatever the calendar month's length. Data usage types (NAT
  gateways' data processed) bill bytes / 2^30: a GiB is 1,073,741,824 bytes, counted exactly.
- Rounding: each line item's amount is rounded half-up to 0.0001 (`item_amount`); a total is
  the sum of its rounded line items, rounded half-up to 0.01 (`total_amount`). Grouping never
  rounds again, so every grouping of a period adds up to the same total.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from controller.errors import InvalidParameter

ITEM_QUANTUM = Decimal("0.0001")
TOTAL_QUANTUM = Decimal("0.01")
QUANTITY_QUANTUM = Decimal("0.000001")  # display only: amounts use the exact seconds
HOUR_SECONDS = 3600
MONTH_HOURS = 730
MONTH_SECONDS = MONTH_HOURS * HOUR_SECONDS
MAX_RATE = Decimal("1000000")
GIB = 1 << 30


@dataclass(frozen=True)
class UsageType:
    unit: str
    #: seconds in one unit (an hour, or a 730-hour month)
    unit_seconds: int
    #: whether the interval's quantity (GiB) multiplies the time
    per_gib: bool
    #: the dimension is the instance type's name
    by_instance_type: bool = False
    #: an amount, not a time: the quantity is bytes and unit_seconds is bytes per unit (a GiB)
    per_byte: bool = False


USAGE_TYPES: dict[str, UsageType] = {
    "instance-hours": UsageType("Hrs", HOUR_SECONDS, False, True),
    "volume-gib-month": UsageType("GiB-Mo", MONTH_SECONDS, True),
    "snapshot-gib-month": UsageType("GiB-Mo", MONTH_SECONDS, True),
    "public-ipv4-hours": UsageType("Hrs", HOUR_SECONDS, False),
    "nat-gateway-hours": UsageType("Hrs", HOUR_SECONDS, False),
    "nat-gateway-gib": UsageType("GiB", GIB, False, per_byte=True),
}

#: The price list every new site starts with (usage type -> rate), besides instance types.
DEFAULT_RATES = {"volume-gib-month": "0.08", "snapshot-gib-month": "0.05",
                 "public-ipv4-hours": "0.005", "nat-gateway-hours": "0.045",
                 "nat-gateway-gib": "0.045"}


def measure(usage_type: str, quantity: int, seconds: int) -> int:
    """What one unit divides: seconds, GiB x seconds, or bytes (per-byte usage types)."""
    t = USAGE_TYPES[usage_type]
    if t.per_byte:
        return quantity
    return (quantity if t.per_gib else 1) * seconds


def units(usage_type: str, quantity: int, seconds: int) -> Decimal:
    """Exact billed units (hours, GiB-months, GiB) of one item."""
    return Decimal(measure(usage_type, quantity, seconds)) / Decimal(USAGE_TYPES[usage_type].unit_seconds)


def item_amount(rate: Decimal, usage_type: str, quantity: int, seconds: int) -> Decimal:
    t = USAGE_TYPES[usage_type]
    exact = rate * Decimal(measure(usage_type, quantity, seconds)) / Decimal(t.unit_seconds)
    return exact.quantize(ITEM_QUANTUM, rounding=ROUND_HALF_UP)


def total_amount(amounts) -> Decimal:
    return sum(amounts, Decimal(0)).quantize(TOTAL_QUANTUM, rounding=ROUND_HALF_UP)


def show_quantity(q: Decimal) -> str:
    return str(q.quantize(QUANTITY_QUANTUM, rounding=ROUND_HALF_UP))


def parse_money(value, what: str = "rate", code: str = "InvalidPrice") -> Decimal:
    """A non-negative, finite decimal of at most 10 fractional digits, or 400 `code`."""
    if isinstance(value, bool) or value is None:
        raise InvalidParameter(f"{what} {value!r} is not a number", code=code)
    try:
        d = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise InvalidParameter(f"{what} {value!r} is not a decimal number", code=code) from None
    if not d.is_finite() or d < 0 or d > MAX_RATE:
        raise InvalidParameter(f"{what} {value!r} must be a number from 0 to {MAX_RATE}",
                               code=code)
    if d.as_tuple().exponent < -10:
        raise InvalidParameter(f"{what} {value!r} has more than 10 decimal places", code=code)
    # Plain notation ("100", not "1E+2") so stored strings read as written.
    return d.quantize(Decimal(1)) if d.as_tuple().exponent > 0 else d
