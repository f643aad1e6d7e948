"""`kumo autoscaling-groups put-policy|put-step-policy|put-simple-policy|policies|
delete-policy|put-scheduled-action|scheduled-actions|delete-scheduled-action`: scaling
policies (target tracking, step, simple) and scheduled actions of a group over REST
/v1/autoscaling-groups/{name}/policies and /scheduled-actions. The commands attach to
autoscaling.groups (controller/cli/autoscaling.py); every put goes through _put."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .api import CliError
from .autoscaling import GroupArg, _gpath, groups
from .context import OutputOpt, state
from .output import emit_list, emit_record

def _target(p: dict):
    tt = p.get("target_tracking_configuration")
    return tt["target_value"] if tt else None


def _adjustment(p: dict) -> str:
    if p.get("step_adjustments"):
        return ", ".join(f"[{_bound(s['metric_interval_lower_bound'])}, "
                         f"{_bound(s['metric_interval_upper_bound'])}): "
                         f"{s['scaling_adjustment']:+d}" for s in p["step_adjustments"])
    return "" if p.get("scaling_adjustment") is None else f"{p['scaling_adjustment']:+d}"


def _bound(v) -> str:
    return "" if v is None else f"{v:g}"


POLICY_COLUMNS = [("POLICY", "policy_name"), ("TYPE", "policy_type"), ("TARGET", _target),
                  ("SCALE-IN", lambda p: (not p["target_tracking_configuration"]
                                          ["disable_scale_in"]) if _target(p) else None),
                  ("ADJUSTMENT", _adjustment), ("WARMUP", "estimated_instance_warmup"),
                  ("ALARMS", lambda p: ",".join(a["alarm_name"] for a in p.get("alarms", [])))]
ACTION_COLUMNS = [("ACTION", "scheduled_action_name"), ("RECURRENCE", "recurrence"),
                  ("TIME ZONE", "time_zone"), ("MIN", "min_size"), ("MAX", "max_size"),
                  ("DESIRED", "desired_capacity"), ("NEXT", "next_occurrence")]
NameArg = Annotated[str, typer.Argument(help="Policy or scheduled action name.")]
AdjustmentTypeOpt = Annotated[str, typer.Option(
    "--adjustment-type", help="ChangeInCapacity, ExactCapacity or PercentChangeInCapacity.")]
MinMagnitudeOpt = Annotated[Optional[int], typer.Option(
    "--min-adjustment-magnitude", min=1, help="PercentChangeInCapacity only.")]


def _put(ctx: typer.Context, output, name: str, path: str, body: dict) -> None:
    """PUT one policy or scheduled action of the group and print what the API answered."""
    st = state(ctx, output)
    emit_record(st, st.api().put(_gpath(name, path), body))


def parse_step(text: str) -> dict:
    """`LOWER:UPPER:ADJUSTMENT`, bounds relative to the alarm threshold, empty for open:
    `0:20:1`, `20::3`, `:-10:-2`."""
    parts = text.split(":")
    try:
        lo, hi, adj = parts
        return {"metric_interval_lower_bound": float(lo) if lo else None,
                "metric_interval_upper_bound": float(hi) if hi else None,
                "scaling_adjustment": int(adj)}
    except ValueError:
        raise CliError("ValidationError", f"step {text!r}: use LOWER:UPPER:ADJUSTMENT, "
                       "e.g. 0:20:1 or 20::3") from None


@groups.command("put-policy")
def put_policy(ctx: typer.Context, name: GroupArg, policy: NameArg,
               target: Annotated[float, typer.Option("--target", help="Average CPU percent.")],
               no_scale_in: Annotated[bool, typer.Option("--disable-scale-in")] = False,
               warmup: Annotated[Optional[int], typer.Option("--warmup", min=0)] = None,
               scale_in_period: Annotated[Optional[int], typer.Option(
                   "--scale-in-period", min=0, help="Seconds low before a scale in.")] = None,
               output: OutputOpt = None) -> None:
    """Create or replace a target tracking policy on the group's average CPU."""
    _put(ctx, output, name, f"policies/{policy}", {
        "policy_type": "TargetTrackingScaling", "target_tracking_configuration": {
            "predefined_metric_specification": {"predefined_metric_type":
                                                "ASGAverageCPUUtilization"},
            "target_value": target, "disable_scale_in": no_scale_in},
        "estimated_instance_warmup": warmup, "scale_in_period": scale_in_period})


@groups.command("put-step-policy")
def put_step_policy(ctx: typer.Context, name: GroupArg, policy: NameArg,
                    steps: Annotated[list[str], typer.Option(
                        "--step", help="LOWER:UPPER:ADJUSTMENT relative to the alarm "
                                       "threshold, empty for open (repeat).")],
                    adjustment_type: AdjustmentTypeOpt = "ChangeInCapacity",
                    min_magnitude: MinMagnitudeOpt = None,
                    aggregation: Annotated[str, typer.Option(
                        "--metric-aggregation-type")] = "Average",
                    warmup: Annotated[Optional[int], typer.Option("--warmup", min=0)] = None,
                    output: OutputOpt = None) -> None:
    """Create or replace a step scaling policy (an alarm's action runs it)."""
    _put(ctx, output, name, f"policies/{policy}", {
        "policy_type": "StepScaling", "adjustment_type": adjustment_type,
        "min_adjustment_magnitude": min_magnitude,
        "step_adjustments": [parse_step(s) for s in steps],
        "metric_aggregation_type": aggregation, "estimated_instance_warmup": warmup})


@groups.command("put-simple-policy")
def put_simple_policy(ctx: typer.Context, name: GroupArg, policy: NameArg,
                      adjustment: Annotated[int, typer.Option("--adjustment")],
                      adjustment_type: AdjustmentTypeOpt = "ChangeInCapacity",
                      min_magnitude: MinMagnitudeOpt = None,
                      cooldown: Annotated[Optional[int], typer.Option(
                          "--cooldown", min=0, help="Default: the group's.")] = None,
                      output: OutputOpt = None) -> None:
    """Create or replace a simple scaling policy (an alarm's action runs it)."""
    _put(ctx, output, name, f"policies/{policy}", {
        "policy_type": "SimpleScaling", "adjustment_type": adjustment_type,
        "min_adjustment_magnitude": min_magnitude, "scaling_adjustment": adjustment,
        "cooldown": cooldown})


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
               recurrence: Annotated[Optional[str], typer.Option(
                   "--recurrence", help="5-field cron; without it the action runs once, at "
                                        "--start-time.")] = None,
               time_zone: Annotated[str, typer.Option("--time-zone")] = "Etc/UTC",
               start: Annotated[Optional[str], typer.Option("--start-time")] = None,
               end: Annotated[Optional[str], typer.Option("--end-time")] = None,
               min_size: Annotated[Optional[int], typer.Option("--min", min=0)] = None,
               max_size: Annotated[Optional[int], typer.Option("--max", min=0)] = None,
               desired: Annotated[Optional[int], typer.Option("--desired", min=0)] = None,
               output: OutputOpt = None) -> None:
    """Create or replace a scheduled action (sets min / max / desired at each occurrence, or
    once at --start-time when there is no --recurrence)."""
    _put(ctx, output, name, f"scheduled-actions/{action}", {
        "recurrence": recurrence, "time_zone": time_zone, "start_time": start,
        "end_time": end, "min_size": min_size, "max_size": max_size,
        "desired_capacity": desired})


@groups.command("scheduled-actions")
def list_actions(ctx: typer.Context, name: GroupArg, output: OutputOpt = None) -> None:
    st = state(ctx, output)
    emit_list(st, st.api().get(_gpath(name, "scheduled-actions")), ACTION_COLUMNS)


@groups.command("delete-scheduled-action")
def delete_action(ctx: typer.Context, name: GroupArg, action: NameArg,
                  output: OutputOpt = None) -> None:
    st = state(ctx, output)
    emit_record(st, st.api().delete(_gpath(name, f"scheduled-actions/{action}")))
