"""The alarm pass: evaluates every metric alarm once per completed period, records state
changes and invokes actions (services/alarms.py). Started from controller/app.py every
settings.alarm_interval_s; tick(now=...) is what tests drive with a fake clock.

Level-triggered and restart-safe: an alarm is evaluated when a period has ended (plus
alarm_evaluation_delay_s, so the agents' samples of it have arrived) after the one it last
evaluated (`evaluated_until_ms`). That marker, the new state, the history and the scaling
changes its actions make commit in one transaction per alarm: a restart neither evaluates a
period twice (no repeated action) nor skips one that was due (no lost change); periods missed
while the controller was down are evaluated once, as the latest. As in CloudWatch with Auto
Scaling actions, an alarm that stays in ALARM invokes its alarm actions again at each
evaluation (the policy's cooldown or warmup decides whether anything changes); OK and
INSUFFICIENT_DATA actions run on the transition only.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from types import SimpleNamespace

from sqlmodel import select

from controller import periodic
from controller.db import Database
from controller.ids import utcnow
from controller.models.alarms import MetricAlarm
from controller.services import alarms
from controller.services.accounts import Caller
from controller.services.alarm_rules import evaluate
from controller.services.metrics import StatisticsQuery, get_statistics
from controller.settings import Settings

log = logging.getLogger(__name__)
_pass_lock = threading.Lock()  # one pass at a time (the loop and a test's tick)


def datapoints(db: Database, a, end_ms: int) -> list[float | None]:
    """The alarm's statistic over its N periods ending at end_ms, oldest first (None: no
    samples), from the metrics service's own query (same scoping as the statistics API:
    the alarm's account)."""
    period_ms = a.period * 1000
    start_ms = end_ms - a.evaluation_periods * period_ms
    q = StatisticsQuery(a.metric_name, (a.dimension_name, a.dimension_value), start_ms, end_ms,
                        a.period, (a.statistic,), from_rollups=False)
    caller = Caller(account_id=a.account_id, name="alarm", is_admin=False)
    out: list[float | None] = [None] * a.evaluation_periods
    for p in get_statistics(db, caller, q)["datapoints"]:
        at = datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00"))
        i = (int(at.timestamp() * 1000) - start_ms) // period_ms
        if 0 <= i < len(out):
            out[i] = p[a.statistic]
    return out


def _evaluate_alarm(db: Database, settings: Settings, alarm_id: str, now: datetime) -> bool:
    """-> whether the alarm was evaluated (a new period had ended)."""
    now_ms = int(now.timestamp() * 1000) - int(settings.alarm_evaluation_delay_s * 1000)
    with db.session(notify=False) as s:
        a = s.get(MetricAlarm, alarm_id)
        if a is None:
            return False
        end_ms = now_ms - now_ms % (a.period * 1000)
        if a.evaluated_until_ms is not None and end_ms <= a.evaluated_until_ms:
            return False
        a = SimpleNamespace(**a.model_dump())  # read outside this session
    points = datapoints(db, a, end_ms)
    verdict = evaluate(points, threshold=a.threshold, comparison=a.comparison_operator,
                       datapoints_to_alarm=a.datapoints_to_alarm,
                       treat_missing_data=a.treat_missing_data)
    latest = next((v for v in reversed(points) if v is not None), None)
    with db.session() as s:
        a = s.get(MetricAlarm, alarm_id)
        # Another pass (or a put that changed the period) got here first: leave it to it.
        if a is None or (a.evaluated_until_ms is not None and end_ms <= a.evaluated_until_ms):
            return False
        a.evaluated_until_ms = end_ms
        s.add(a)
        state = verdict.state or a.state_value
        if state != a.state_value:
            alarms.set_state(s, settings, a, state, verdict.reason, now, latest)
        elif state == "ALARM":
            alarms.invoke(s, settings, a, state, now, latest)
    return True


def tick(db: Database, settings: Settings, now: datetime | None = None) -> dict:
    """One pass over every alarm; -> counters (evaluated, errors)."""
    now = now or utcnow()
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    stats = {"evaluated": 0, "errors": 0}
    with _pass_lock:
        with db.session(notify=False) as s:
            ids = list(s.exec(select(MetricAlarm.alarm_id).order_by(MetricAlarm.alarm_id)))
        for aid in ids:
            try:  # one alarm's failure never stops the others
                stats["evaluated"] += _evaluate_alarm(db, settings, aid, now)
            except Exception:
                log.exception("alarm evaluation failed for %s", aid)
                stats["errors"] += 1
    return stats


async def run_forever(db: Database, settings: Settings) -> None:
    """The controller's alarm loop: a pass every alarm_interval_s."""
    await periodic.every(settings.alarm_interval_s, lambda: tick(db, settings), "alarm pass")
