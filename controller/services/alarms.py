"""Metric alarms (CloudWatch PutMetricAlarm, DescribeAlarms, DeleteAlarms,
DescribeAlarmHistory, SetAlarmState): the user-facing rules, the history, and invoking an
alarm's actions. The periodic evaluation is services/alarm_controller.py; the pure state rule
is services/alarm_rules.py.

Validation follows CloudWatch (400 InvalidParameterValue / InvalidParameterCombination,
nothing changed); an unknown alarm is 404 ResourceNotFound. Actions are step or simple scaling
policy ARNs of the alarm's own account (services/step_scaling.py resolve): anything else,
another account's policy included, is refused as unknown. A new alarm starts in
INSUFFICIENT_DATA; a put on an existing one replaces its configuration and keeps its state
(as CloudWatch). History is bounded: the newest settings.alarm_history_max items per alarm.
"""
from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import delete as sql_delete
from sqlmodel import Session, col, select

from agent.contract.metrics_v1 import METRIC_UNITS
from controller.db import Database
from controller.errors import InvalidParameter, NotFound
from controller.ids import new_id, utcnow
from controller.models.alarms import (COMPARISONS, MISSING_DATA, STATES, AlarmHistory,
                                      AlarmHistoryItem, AlarmPublic, AlarmPut, AlarmStateSet,
                                      Dimension, MetricAlarm)
from controller.models.step_policies import AlarmRef
from controller.services import pagination, step_scaling
from controller.services.pagination import Page, PageRequest
from controller.services.metrics import DIMENSIONS, NAMESPACES, STATISTICS
from controller.settings import Settings

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
COMBINATION = "InvalidParameterCombination"


def alarm_arn(a: MetricAlarm) -> str:
    return f"arn:kumo:cloudwatch::{a.account_id}:alarm:{a.name}"


def _public(a: MetricAlarm) -> AlarmPublic:
    return AlarmPublic(
        alarm_name=a.name, alarm_arn=alarm_arn(a), alarm_description=a.description,
        metric_name=a.metric_name, namespace=a.namespace,
        dimensions=[Dimension(name=a.dimension_name, value=a.dimension_value)],
        statistic=a.statistic, period=a.period, evaluation_periods=a.evaluation_periods,
        datapoints_to_alarm=a.datapoints_to_alarm, threshold=a.threshold,
        comparison_operator=a.comparison_operator, treat_missing_data=a.treat_missing_data,
        actions_enabled=a.actions_enabled, alarm_actions=list(a.alarm_actions),
        ok_actions=list(a.ok_actions), insufficient_data_actions=list(a.insufficient_data_actions),
        state_value=a.state_value, state_reason=a.state_reason,
        state_updated_at=a.state_updated_at, alarm_configuration_updated_at=a.updated_at)


def _one_of(value: str, allowed, what: str) -> str:
    if value not in allowed:
        raise InvalidParameter(f"Invalid {what} {value!r}: use one of {', '.join(allowed)}")
    return value


def _check(settings: Settings, name: str, body: AlarmPut) -> None:
    if not _NAME.match(name):
        raise InvalidParameter(f"Invalid alarm name {name!r}")
    _one_of(body.namespace, NAMESPACES, "namespace")
    _one_of(body.metric_name, tuple(METRIC_UNITS), "metric name")
    _one_of(body.statistic, STATISTICS, "statistic")
    _one_of(body.dimensions[0].name, DIMENSIONS, "dimension")
    _one_of(body.comparison_operator, COMPARISONS, "comparison operator")
    _one_of(body.treat_missing_data, MISSING_DATA, "treat_missing_data")
    granule = settings.metrics_sample_period_s
    if body.period < granule or body.period % granule or body.period > settings.alarm_max_period_s:
        raise InvalidParameter(f"The period must be a multiple of {granule} seconds, at most "
                               f"{settings.alarm_max_period_s}")
    if body.evaluation_periods > settings.alarm_max_evaluation_periods:
        raise InvalidParameter("evaluation_periods is at most "
                               f"{settings.alarm_max_evaluation_periods}")
    if body.period * body.evaluation_periods > settings.metrics_raw_retention_s:
        raise InvalidParameter("period * evaluation_periods must fit in the raw metric "
                               f"retention ({settings.metrics_raw_retention_s} s)",
                               code=COMBINATION)
    if (body.datapoints_to_alarm or 0) > body.evaluation_periods:
        raise InvalidParameter("datapoints_to_alarm must be at most evaluation_periods",
                               code=COMBINATION)


def _check_actions(s: Session, account_id: str, body: AlarmPut) -> None:
    for arn in [*body.alarm_actions, *body.ok_actions, *body.insufficient_data_actions]:
        if step_scaling.resolve(s, account_id, arn) is None:
            raise InvalidParameter(f"Invalid alarm action {arn!r}: not a step or simple "
                                   "scaling policy of this account")


def _get(s: Session, caller, name: str) -> MetricAlarm:
    a = s.exec(select(MetricAlarm).where(MetricAlarm.account_id == caller.account_id,
                                         MetricAlarm.name == name)).first()
    if a is None:
        raise NotFound(f"Alarm {name} does not exist", code="ResourceNotFound")
    return a


def record(s: Session, settings: Settings, a: MetricAlarm, now: datetime, kind: str,
           summary: str, data: dict) -> None:
    """Append a history item, dropping the alarm's oldest beyond alarm_history_max."""
    s.add(AlarmHistory(alarm_id=a.alarm_id, account_id=a.account_id, alarm_name=a.name,
                       ts=now, item_type=kind, summary=summary[:1024], data=data))
    s.flush()
    cut = s.exec(select(AlarmHistory.id).where(AlarmHistory.alarm_id == a.alarm_id)
                 .order_by(col(AlarmHistory.id).desc())
                 .offset(settings.alarm_history_max).limit(1)).first()
    if cut is not None:
        s.execute(sql_delete(AlarmHistory).where(AlarmHistory.alarm_id == a.alarm_id,
                                                 AlarmHistory.id <= cut))


def set_state(s: Session, settings: Settings, a: MetricAlarm, state: str, reason: str,
              now: datetime, value: float | None = None) -> None:
    """Move the alarm to a new state: record it, then invoke that state's actions once."""
    old = a.state_value
    a.state_value, a.state_reason, a.state_updated_at = state, reason[:1024], now
    s.add(a)
    record(s, settings, a, now, "StateUpdate", f"Alarm updated from {old} to {state}",
           {"old_state": old, "new_state": state, "reason": a.state_reason})
    invoke(s, settings, a, state, now, value)


def invoke(s: Session, settings: Settings, a: MetricAlarm, state: str, now: datetime,
           value: float | None) -> None:
    """Run the actions of `state` (if actions are enabled), each recorded in the history."""
    if not a.actions_enabled:
        return
    arns = {"ALARM": a.alarm_actions, "OK": a.ok_actions,
            "INSUFFICIENT_DATA": a.insufficient_data_actions}[state]
    for arn in arns:
        out = step_scaling.execute(s, arn, a.account_id, a.name, state, a.threshold, value, now)
        record(s, settings, a, now, "Action", out.summary,
               {"action": arn, "state": state, "changed": out.changed})


# -- operations ----------------------------------------------------------------------------------
def put(db: Database, settings: Settings, caller, name: str, body: AlarmPut) -> AlarmPublic:
    _check(settings, name, body)
    now = utcnow()
    with db.session() as s:
        _check_actions(s, caller.account_id, body)
        a = s.exec(select(MetricAlarm).where(MetricAlarm.account_id == caller.account_id,
                                             MetricAlarm.name == name)).first()
        created = a is None
        if created:
            a = MetricAlarm(alarm_id=new_id("alm"), account_id=caller.account_id, name=name,
                            state_value="INSUFFICIENT_DATA",
                            state_reason="Unchecked: Initial alarm creation",
                            state_updated_at=now, created_at=now, updated_at=now,
                            namespace=body.namespace, metric_name=body.metric_name,
                            dimension_name="", dimension_value="", statistic=body.statistic,
                            period=body.period, evaluation_periods=body.evaluation_periods,
                            datapoints_to_alarm=1, threshold=body.threshold,
                            comparison_operator=body.comparison_operator,
                            treat_missing_data=body.treat_missing_data)
        a.description, a.namespace, a.metric_name = (body.alarm_description, body.namespace,
                                                     body.metric_name)
        a.dimension_name, a.dimension_value = body.dimensions[0].name, body.dimensions[0].value
        a.statistic, a.period, a.evaluation_periods = (body.statistic, body.period,
                                                       body.evaluation_periods)
        a.datapoints_to_alarm = body.datapoints_to_alarm or body.evaluation_periods
        a.threshold, a.comparison_operator = body.threshold, body.comparison_operator
        a.treat_missing_data, a.actions_enabled = body.treat_missing_data, body.actions_enabled
        a.alarm_actions = list(dict.fromkeys(body.alarm_actions))
        a.ok_actions = list(dict.fromkeys(body.ok_actions))
        a.insufficient_data_actions = list(dict.fromkeys(body.insufficient_data_actions))
        a.updated_at = now
        s.add(a)
        record(s, settings, a, now, "ConfigurationUpdate",
               f"Alarm {'created' if created else 'updated'}", {"type": "Create" if created
                                                                else "Update"})
        return _public(a)


ORDER = pagination.Order(MetricAlarm.name, MetricAlarm.alarm_id)


def describe(db: Database, caller, page: PageRequest, name_prefix: str | None = None,
             state: str | None = None) -> Page[AlarmPublic]:
    """One page of the caller's alarms by name (keyset pages, as every list)."""
    if state is not None:
        _one_of(state, STATES, "state")
    q = select(MetricAlarm).where(MetricAlarm.account_id == caller.account_id)
    if name_prefix:
        q = q.where(col(MetricAlarm.name).startswith(name_prefix, autoescape=True))
    if state is not None:
        q = q.where(MetricAlarm.state_value == state)
    with db.session(notify=False) as s:
        return pagination.list_page(s, q, ORDER, page, lambda rows: [_public(a) for a in rows])


def get(db: Database, caller, name: str) -> AlarmPublic:
    with db.session(notify=False) as s:
        return _public(_get(s, caller, name))


def delete(db: Database, caller, name: str) -> None:
    with db.session() as s:
        a = _get(s, caller, name)
        s.execute(sql_delete(AlarmHistory).where(AlarmHistory.alarm_id == a.alarm_id))
        s.delete(a)


def history(db: Database, caller, name: str, item_type: str | None = None,
            limit: int = 100) -> list[AlarmHistoryItem]:
    """Newest first."""
    with db.session(notify=False) as s:
        a = _get(s, caller, name)
        q = select(AlarmHistory).where(AlarmHistory.alarm_id == a.alarm_id)
        if item_type:
            _one_of(item_type, ("StateUpdate", "Action", "ConfigurationUpdate"), "history type")
            q = q.where(AlarmHistory.item_type == item_type)
        rows = s.exec(q.order_by(col(AlarmHistory.id).desc()).limit(limit))
        return [AlarmHistoryItem(alarm_name=h.alarm_name, timestamp=h.ts,
                                 history_item_type=h.item_type, history_summary=h.summary,
                                 history_data=h.data) for h in rows]


def set_alarm_state(db: Database, settings: Settings, caller, name: str,
                    body: AlarmStateSet) -> AlarmPublic:
    """SetAlarmState: for testing actions; the next evaluation sets the state it computes."""
    _one_of(body.state_value, STATES, "state value")
    with db.session() as s:
        a = _get(s, caller, name)
        if a.state_value != body.state_value:
            set_state(s, settings, a, body.state_value, body.state_reason, utcnow())
        return _public(a)


def attached(s: Session, account_id: str) -> dict[str, list[AlarmRef]]:
    """Policy ARN -> the account's alarms whose actions name it (DescribePolicies' Alarms)."""
    refs: dict[str, list[AlarmRef]] = {}
    for a in s.exec(select(MetricAlarm).where(MetricAlarm.account_id == account_id)
                    .order_by(MetricAlarm.name)):
        ref = AlarmRef(alarm_name=a.name, alarm_arn=alarm_arn(a))
        for arn in dict.fromkeys([*a.alarm_actions, *a.ok_actions,
                                  *a.insufficient_data_actions]):
            refs.setdefault(arn, []).append(ref)
    return refs
