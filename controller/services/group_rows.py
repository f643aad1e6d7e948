"""The rows that hang off an Auto Scaling group by (group, name): scaling policies of each
type and scheduled actions. One helper finds the row to create-or-replace, so every Put*
(services/scaling_policies.py, step_scaling.py, scheduled_actions.py) upserts the same way.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlmodel import Session, select

from controller.models.autoscaling import AutoScalingGroup

Row = TypeVar("Row")


def find(s: Session, model: type[Row], g: AutoScalingGroup, name: str) -> Row | None:
    return s.exec(select(model).where(model.group_id == g.group_id,
                                      model.name == name)).first()


def upsert(s: Session, model: type[Row], g: AutoScalingGroup, name: str,
           create: Callable[[], Row]) -> Row:
    """The group's row of that name, or a new one from create() (not yet added: the caller
    sets its fields and adds it)."""
    row = find(s, model, g, name)
    return create() if row is None else row
