"""The pure rules of Auto Scaling (no database): capacity bounds, which subnet a launch goes
to, which instance a scale-in terminates, and the launch retry backoff. Unit-tested alone
(tests/unit/test_autoscaling_rules.py); services/autoscaling*.py apply them to rows.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from controller.errors import InvalidParameter
from controller.models.autoscaling import TERMINATION_POLICIES

VALIDATION = "ValidationError"  # EC2 Auto Scaling's code for every refused parameter


def check_capacity(min_size: int, max_size: int, desired: int | None) -> int:
    """min <= desired <= max (desired defaults to min) -> desired; else 400 ValidationError
    with EC2 Auto Scaling's wording."""
    if min_size > max_size:
        raise InvalidParameter(f"Max bound, {max_size}, must be greater than or equal to min "
                               f"bound, {min_size}", code=VALIDATION)
    desired = min_size if desired is None else desired
    if desired < min_size:
        raise InvalidParameter(f"Desired capacity:{desired} must be between the specified min "
                               f"size:{min_size} and max size:{max_size}", code=VALIDATION)
    if desired > max_size:
        raise InvalidParameter(f"Desired capacity:{desired} must be between the specified min "
                               f"size:{min_size} and max size:{max_size}", code=VALIDATION)
    return desired


def check_set_desired(desired: int, min_size: int, max_size: int) -> None:
    """SetDesiredCapacity's own wording for a value outside [min, max]."""
    if desired > max_size:
        raise InvalidParameter(f"New SetDesiredCapacity value {desired} is above max value "
                               f"{max_size} for the AutoScalingGroup.", code=VALIDATION)
    if desired < min_size:
        raise InvalidParameter(f"New SetDesiredCapacity value {desired} is below min value "
                               f"{min_size} for the AutoScalingGroup.", code=VALIDATION)


def check_termination_policies(policies: Sequence[str]) -> list[str]:
    for p in policies:
        if p not in TERMINATION_POLICIES:
            raise InvalidParameter(f"termination policy {p!r}: one of "
                                   f"{', '.join(TERMINATION_POLICIES)}", code=VALIDATION)
    return list(dict.fromkeys(policies)) or ["Default"]


def launch_subnet(subnets: Sequence[str], occupied: Sequence[str | None]) -> str:
    """The subnet with the fewest of the group's instances (`occupied`: the subnet of each),
    the first listed on a tie: launches keep the subnets balanced."""
    counts = Counter(occupied)
    return min(subnets, key=lambda sn: (counts[sn], subnets.index(sn)))


@dataclass(frozen=True)
class Member:
    """What the termination policies look at of one instance."""

    instance_id: str
    subnet_id: str | None
    launch_template_version: int
    launched_at: datetime
    protected: bool = False


def _oldest_template(c: list[Member]) -> list[Member]:
    low = min(m.launch_template_version for m in c)
    return [m for m in c if m.launch_template_version == low]


def _oldest(c: list[Member]) -> list[Member]:
    t = min(m.launched_at for m in c)
    return [m for m in c if m.launched_at == t]


def _newest(c: list[Member]) -> list[Member]:
    t = max(m.launched_at for m in c)
    return [m for m in c if m.launched_at == t]


_NARROW = {"OldestLaunchTemplate": [_oldest_template], "OldestInstance": [_oldest],
           "NewestInstance": [_newest], "Default": [_oldest_template, _oldest]}


def choose_victim(members: Sequence[Member], policies: Sequence[str]) -> Member | None:
    """The instance a scale-in terminates, as EC2 Auto Scaling picks it: never a protected one;
    first the subnet holding most of the group's instances (balance; counting protected ones
    too), then each policy in order narrows the candidates, then Default's rules (oldest launch
    template version, then oldest instance), then the lowest id. None: all are protected."""
    candidates = [m for m in members if not m.protected]
    if not candidates:
        return None
    counts = Counter(m.subnet_id for m in members)
    top = max(counts[m.subnet_id] for m in candidates)
    candidates = [m for m in candidates if counts[m.subnet_id] == top]
    for policy in [*policies, "Default"]:
        for narrow in _NARROW[policy]:
            if len(candidates) == 1:
                return candidates[0]
            candidates = narrow(candidates)
    return min(candidates, key=lambda m: m.instance_id)


def backoff_s(failures: int, base: float, cap: float) -> float:
    """Seconds before the next launch after `failures` consecutive failed ones: doubling from
    `base`, at most `cap` (failed launches are retried, never in a storm)."""
    if failures <= 0:
        return 0.0
    return min(cap, base * 2 ** min(failures - 1, 30))
