"""The planner: run the needed steps in order, then plan again, until nothing is needed.

Flintlock-style: a plan is the list of steps whose needed() is true right now. Each step is
re-checked just before it runs (an earlier step may have made it moot) and verified after.
Planning repeats because acting can reveal more work (e.g. a redefine, then a start); a plan
that never empties is an error, not an endless loop.
"""
from __future__ import annotations

from typing import Callable

from agent.drivers.base import DriverError
from agent.reconcile.steps import InstanceContext, Step

MAX_ROUNDS = 6


class StepVerifyFailed(DriverError):
    code = "StepVerifyFailed"
    retryable = True


class PlanNotConverging(DriverError):
    code = "ReconcileNotConverging"
    retryable = True


class Aborted(Exception):
    """The reconcile was cancelled between steps (agent stopping, spec replaced or deleted)."""


def plan(ctx: InstanceContext, steps: Callable[[InstanceContext], list[Step]]) -> list[Step]:
    return [s for s in steps(ctx) if s.needed(ctx)]


def execute(ctx: InstanceContext, steps: Callable[[InstanceContext], list[Step]],
            should_abort: Callable[[], bool] = lambda: False,
            on_step: Callable[[Step], None] = lambda s: None) -> list[str]:
    """Converge one instance; returns the names of the steps that ran. Raises on failure."""
    ran: list[str] = []
    for _ in range(MAX_ROUNDS):
        todo = plan(ctx, steps)
        if not todo:
            return ran
        for step in todo:
            if should_abort():
                raise Aborted()
            if not step.needed(ctx):
                continue
            step.run(ctx)
            ran.append(step.name)
            on_step(step)
            if not step.verify(ctx):
                raise StepVerifyFailed(f"step {step.name} did not take effect")
    raise PlanNotConverging(f"still work left after {MAX_ROUNDS} rounds: "
                            + ", ".join(s.name for s in plan(ctx, steps)))
