"""The reconcile planner: re-plans until nothing is needed, verifies, never loops forever."""
from __future__ import annotations

import pytest

from agent.reconcile.planner import Aborted, PlanNotConverging, StepVerifyFailed, execute
from agent.reconcile.steps import Step


class Counter(Step):
    def __init__(self, name, state, target, verify_ok=True, reveals=None):
        self.name, self.state, self.target = name, state, target
        self.verify_ok, self.reveals = verify_ok, reveals

    def needed(self, ctx):
        return self.state[self.name] < self.target

    def run(self, ctx):
        self.state[self.name] += 1
        if self.reveals:
            self.state[self.reveals[0]] = self.reveals[1]

    def verify(self, ctx):
        return self.verify_ok


def test_runs_needed_steps_in_order_and_replans():
    state = {"a": 0, "b": 5}
    # "a" runs once per round until 2; running "a" the first time reveals work for "b".
    steps = lambda ctx: [Counter("a", state, 2, reveals=("b", 0)), Counter("b", state, 1)]
    ran = execute(None, steps)
    assert ran == ["a", "a", "b"]  # "b" was not in the first plan: found by re-planning
    assert state == {"a": 2, "b": 1}


def test_nothing_needed_runs_nothing():
    state = {"a": 3}
    assert execute(None, lambda ctx: [Counter("a", state, 1)]) == []


def test_failed_verification_is_an_error():
    state = {"a": 0}
    with pytest.raises(StepVerifyFailed) as e:
        execute(None, lambda ctx: [Counter("a", state, 1, verify_ok=False)])
    assert e.value.code == "StepVerifyFailed" and e.value.retryable


def test_a_plan_that_never_empties_is_an_error():
    state = {"a": 0}
    with pytest.raises(PlanNotConverging):
        execute(None, lambda ctx: [Counter("a", state, 10**6)])
    assert state["a"] < 100


def test_abort_between_steps():
    state = {"a": 0, "b": 0}
    with pytest.raises(Aborted):
        execute(None, lambda ctx: [Counter("a", state, 1), Counter("b", state, 1)],
                should_abort=lambda: state["a"] == 1)
    assert state == {"a": 1, "b": 0}
