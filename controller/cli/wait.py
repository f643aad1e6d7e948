"""Polling instances (or other resources: volumes) until they reach a target state, with a rich
progress display on stderr.

The loop takes its clock and sleep from CliState so tests run it instantly with a fake clock.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .api import Api, CliError
from .output import stderr


@dataclass(frozen=True)
class Goal:
    """What "done" and "failed" mean for one kind of wait."""

    label: str
    done: Callable[[dict], bool]
    failure: Callable[[dict], "str | None"]  # a reason string when the instance cannot get there


def _reason(inst: dict) -> str:
    r = inst.get("state_reason") or {}
    if r:
        return f"{r.get('code')}: {r.get('message')}"
    return "no state reason given"


def _running_failure(inst: dict) -> str | None:
    if inst.get("state") in ("stopping", "stopped", "shutting-down", "terminated"):
        return f"instance {inst.get('instance_id')} is {inst.get('state')} ({_reason(inst)})"
    if inst.get("instance_status") == "impaired":
        return (f"instance {inst.get('instance_id')} status is impaired "
                f"({_reason(inst)})")
    return None


RUNNING = Goal("running, status ok",
               lambda i: i.get("state") == "running" and i.get("instance_status") == "ok",
               _running_failure)
STOPPED = Goal("stopped", lambda i: i.get("state") == "stopped",
               lambda i: (f"instance {i.get('instance_id')} is {i.get('state')} ({_reason(i)})"
                          if i.get("state") in ("shutting-down", "terminated") else None))
TERMINATED = Goal("terminated", lambda i: i.get("state") == "terminated", lambda i: None)


def _describe(inst: dict) -> str:
    return f"{inst.get('instance_id')}: {inst.get('state')} / {inst.get('instance_status')}"


def wait_for(api: Api, ids: list[str], goal: Goal, *, timeout: float, interval: float,
             clock: Callable[[], float], sleep: Callable[[float], None],
             show_progress: bool = True, path: str = "/v1/instances/{}",
             describe: Callable[[dict], str] = _describe,
             failed_code: str = "InstanceFailed") -> dict[str, dict]:
    """Poll GET `path` (formatted with each id) until every id meets `goal`; their last states
    by id.

    Raises CliError(`failed_code`) as soon as one cannot reach the goal, and
    CliError("WaitTimeout") when `timeout` seconds pass first.
    """
    start = clock()
    last: dict[str, dict] = {}
    pending = list(ids)
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                        console=stderr(), transient=False, disable=not show_progress)
    with progress:
        tasks = {i: progress.add_task(f"{i}: waiting", total=1) for i in ids}
        while True:
            for iid in list(pending):
                inst = api.get(path.format(iid))
                last[iid] = inst
                progress.update(tasks[iid], description=describe(inst))
                reason = goal.failure(inst)
                if reason:
                    raise CliError(failed_code, reason)
                if goal.done(inst):
                    pending.remove(iid)
                    progress.update(tasks[iid], completed=1)
            if not pending:
                return last
            if clock() - start >= timeout:
                states = ", ".join(describe(last[i]) for i in pending)
                raise CliError("WaitTimeout",
                               f"not {goal.label} after {timeout:g}s: {states}")
            sleep(interval)
