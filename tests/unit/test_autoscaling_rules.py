"""The pure Auto Scaling rules (controller/services/autoscaling_rules.py): capacity bounds,
subnet balance at launch, the termination policies at scale in, launch backoff; and the health
verdict of the group controller."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from controller.errors import InvalidParameter
from controller.services.autoscaling_controller import unhealthy_reason
from controller.services.autoscaling_rules import (Member, backoff_s, check_capacity,
                                                   check_set_desired,
                                                   check_termination_policies, choose_victim,
                                                   launch_subnet)

T0 = datetime(2026, 12, 7, tzinfo=timezone.utc)


def m(iid, subnet="a", version=1, age=0, protected=False) -> Member:
    return Member(iid, subnet, version, T0 + timedelta(seconds=age), protected)


@pytest.mark.parametrize("mn,mx,want,expect", [(1, 3, None, 1), (0, 0, None, 0), (1, 3, 3, 3),
                                                (2, 2, 2, 2)])
def test_capacity_ok(mn, mx, want, expect):
    assert check_capacity(mn, mx, want) == expect


@pytest.mark.parametrize("mn,mx,want", [(3, 1, None), (1, 3, 0), (1, 3, 4)])
def test_capacity_refused(mn, mx, want):
    with pytest.raises(InvalidParameter) as e:
        check_capacity(mn, mx, want)
    assert (e.value.code, e.value.status) == ("ValidationError", 400)


def test_set_desired_wording():
    check_set_desired(2, 1, 3)
    with pytest.raises(InvalidParameter, match="above max value 3"):
        check_set_desired(4, 1, 3)
    with pytest.raises(InvalidParameter, match="below min value 1"):
        check_set_desired(0, 1, 3)


def test_termination_policies_checked_and_deduplicated():
    assert check_termination_policies([]) == ["Default"]
    assert check_termination_policies(["OldestInstance", "OldestInstance"]) == ["OldestInstance"]
    with pytest.raises(InvalidParameter):
        check_termination_policies(["ClosestToNextInstanceHour2"])


def test_launch_subnet_balances_then_list_order():
    assert launch_subnet(["a", "b"], []) == "a"
    assert launch_subnet(["a", "b"], ["a"]) == "b"
    assert launch_subnet(["a", "b", "c"], ["a", "b", "c", "c"]) == "a"


def test_default_policy_balances_then_oldest_template_then_oldest():
    members = [m("i-1", "a", 2, 0), m("i-2", "a", 1, 10), m("i-3", "b", 1, 5)]
    assert choose_victim(members, ["Default"]).instance_id == "i-2"  # crowded a, old template
    members = [m("i-1", "a", 1, 0), m("i-2", "a", 1, 10), m("i-3", "b", 1, 5)]
    assert choose_victim(members, ["Default"]).instance_id == "i-1"  # then the oldest


@pytest.mark.parametrize("policy,victim", [("OldestInstance", "i-1"), ("NewestInstance", "i-3"),
                                           ("OldestLaunchTemplate", "i-2")])
def test_named_policies(policy, victim):
    members = [m("i-1", "a", 3, 0), m("i-2", "a", 1, 5), m("i-3", "a", 2, 9)]
    assert choose_victim(members, [policy]).instance_id == victim


def test_protected_never_chosen_but_count_for_balance():
    members = [m("i-1", "a", age=0, protected=True), m("i-2", "a", age=1),
               m("i-3", "b", age=2)]
    assert choose_victim(members, ["OldestInstance"]).instance_id == "i-2"
    assert choose_victim([m("i-1", protected=True)], ["Default"]) is None


def test_backoff_doubles_and_caps():
    assert [backoff_s(n, 10, 60) for n in range(6)] == [0, 10, 20, 40, 60, 60]
    assert backoff_s(10_000, 10, 60) == 60


def _inst(**kw):
    base = dict(state="running", instance_status="ok", system_status="ok")
    return SimpleNamespace(**{**base, **kw})


def test_health_verdicts():
    assert unhealthy_reason(None, True) is not None  # gone: no grace
    assert unhealthy_reason(_inst(state="terminated"), True) is not None
    assert unhealthy_reason(_inst(state="stopped"), True) is None  # inside the grace period
    assert "stopped" in unhealthy_reason(_inst(state="stopped"), False)
    assert "impaired" in unhealthy_reason(_inst(instance_status="impaired"), False)
    assert "host-down" in unhealthy_reason(_inst(system_status="host-down"), False)
    assert unhealthy_reason(_inst(), False) is None
    assert unhealthy_reason(_inst(state="pending", instance_status="initializing"), False) is None
