"""The pure alarm rule (controller/services/alarm_rules.py): M of N, each comparison, each
missing-data treatment."""
from __future__ import annotations

import pytest

from controller.services.alarm_rules import breaches, evaluate


def ev(points, m=None, missing="missing", threshold=50.0, cmp="GreaterThanThreshold"):
    return evaluate(points, threshold=threshold, comparison=cmp,
                    datapoints_to_alarm=len(points) if m is None else m,
                    treat_missing_data=missing)


@pytest.mark.parametrize("cmp,at,above,below", [
    ("GreaterThanOrEqualToThreshold", True, True, False),
    ("GreaterThanThreshold", False, True, False),
    ("LessThanThreshold", False, False, True),
    ("LessThanOrEqualToThreshold", True, False, True)])
def test_each_comparison(cmp, at, above, below):
    assert breaches(50, 50, cmp) is at
    assert breaches(51, 50, cmp) is above
    assert breaches(49, 50, cmp) is below
    assert ev([50.0], cmp=cmp).state == ("ALARM" if at else "OK")


def test_m_of_n():
    assert ev([60, 40, 60], m=2).state == "ALARM"
    assert ev([60, 40, 40], m=2).state == "OK"
    assert ev([40, 40, 60], m=1).state == "ALARM"
    assert ev([60, 60, 40], m=3).state == "OK"
    v = ev([60, 70], m=2)
    assert v.state == "ALARM" and v.breaching == 2 and "2 out of the last 2" in v.reason
    assert "were not greater than" in ev([10, 20]).reason


def test_missing_default():
    assert ev([None, None]).state == "INSUFFICIENT_DATA"
    assert ev([None, 60], m=1).state == "ALARM"
    assert ev([None, 40], m=2).state == "OK"  # 2 of 2 can no longer breach
    assert ev([None, 60], m=2).state is None  # undecided: the state is kept
    assert ev([None, 60, 60], m=2).state == "ALARM"
    assert ev([None, 40, 60], m=2).state is None


def test_missing_ignore():
    assert ev([None, None], missing="ignore").state is None
    assert ev([None, 60], m=1, missing="ignore").state == "ALARM"
    assert ev([40, None], missing="ignore").state == "OK"


def test_missing_breaching_and_not_breaching():
    assert ev([None, None], missing="breaching").state == "ALARM"
    assert ev([None, 40], m=2, missing="breaching").state == "OK"
    assert ev([None, 60], m=2, missing="breaching").state == "ALARM"
    assert ev([None, None], missing="notBreaching").state == "OK"
    assert ev([None, 60], m=2, missing="notBreaching").state == "OK"
    assert ev([None, 60], m=1, missing="notBreaching").state == "ALARM"
