"""`kumo autoscaling-groups put-policy|policies|delete-policy|put-scheduled-action|
scheduled-actions|delete-scheduled-action`: target tracking scaling policies and scheduled
actions of a group over REST /v1/autoscaling-groups/{name}/policies and /scheduled-actions.
The commands attach to autoscaling.groups (controller/cli/autoscaling.py)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .autoscaling import GroupArg, _gpath, groups
from .context import OutputOpt, state
from .output import emit_list, emit_record

POLICY_COLUMNS = [("POLICY", "policy_name"), ("TYPE", "policy_type"),
                  ("TARGET", lambda p: p["target_tracking_configuration"]["target_value"]),
                  ("SCALE-IN", lambda p: not p["target_tracking_configuration"]
                   ["disable_scale_in"]), ("WARMUP", "estimated_instance_warmup")]
ACTION_COLUMNS = [("ACTION", "scheduled_action_name"), ("RECURRENCE", "recurrence"),
                  ("TIME ZONE", "time_zone"), ("MIN", "min_size"), ("MAX", "max_size"),
                  ("DESIRED", "desired_capacity"), ("NEXT", "next_occurrence")]
NameArg = Annotated[str, typer.Argument(help="Policy or scheduled action name.")]


@groups.command("put-policy")
def put_policy(ctx: typer.Context, name: GroupArg, policy: NameArg,
               target: Annotated[float, typer.Option("--target", help="Average CPU percent.")],
               no_scale_in: Annotated[bool, typer.Option("--disable-scale-in")] = False,
               warmup: Annotated[Optional[int], typer.Option("--warmup", min=0)] = None,
               scale_in_period: Annotated[Optional[int], typer.Option(
                   "--scale-in-period", min=0, help="Seconds low before a scale in.")] = None,
               output: OutputOpt = None) -> None:
    """Create or replace a target tracking policy on the group's average CPU."""
    st = state(ctx, output)
    body = {"policy_type": "TargetTrackingScaling", "target_tracking_configuration": {
        "predefined_metric_specification": {"predefined_metric_type":
                                            "ASGAverageCPUUtilization"},
        "target_value": target, "disable_scale_in": no_scale_in},
        "estimated_instance_warmup": warmup, "scale_in_period": scale_in_period}
    emit_record(st, st.api().put(_gpath(name, f"policies/{policy}"), body))


@groups.command("policies")
def list_policies(ctx: typer.Context, name: GroupArg, output: OutputOpt = None) -> None:
    st = state(ctx, output)
    emit_list(st, st.api().get(_gpath(name, "policies")), POLICY_COLUMNS)


@groups.command("delete-policy")
def delete_policy(ctx: typer.Context, name: GroupArg, policy: NameArg,
                  output: OutputOpt = None) -> None:
    st = state(ctx, output)
    emit_record(st, st.api().delete(_gpath(name, f"policies/{policy}")))


@groups.command("put-scheduled-action")
def put_action(ctx: typer.Context, name: GroupArg, action: NameArg,
               recurrence: Annotated[str, typer.Option("--recurrence", help="5-field cron.")],
               time_zone: Annotated[str, typer.Option("--time-zone")] = "Etc/UTC",
               start: Annotated[Optional[str], typer.Option("--start-time")] = None,
               end: Annotated[Optional[str], typer.Option("--end-time")] = None,
               min_size: Annotated[Optional[int], typer.Option("--min", min=0)] = None,
               max_size: Annotated[Optional[int], typer.Option("--max", min=0)] = None,
               desired: Annotated[Optional[int], typer.Option("--desired", min=0)] = None,
               output: OutputOpt = None) -> None:
    """Create or replace a scheduled action (sets min / max / desired at each occurrence)."""
    st = state(ctx, output)
    body = {"recurrence": recurrence, "time_zone": time_zone, "start_time": start,
            "end_time": end, "min_size": min_size, "max_size": max_size,
            "desired_capacity": desired}
    emit_record(st, st.api().put(_gpath(name, f"scheduled-actions/{action}"), body))


@groups.command("scheduled-actions")
def list_actions(ctx: typer.Context, name: GroupArg, output: OutputOpt = None) -> None:
    st = state(ctx, output)
    emit_list(st, st.api().get(_gpath(name, "scheduled-actions")), ACTION_COLUMNS)


@groups.command("delete-scheduled-action")
def delete_action(ctx: typer.Context, name: GroupArg, action: NameArg,
                  output: OutputOpt = None) -> None:
    st = state(ctx, output)
    emit_record(st, st.api().delete(_gpath(name, f"scheduled-actions/{action}")))
