"""`kumo alarms put|list|show|delete|history|set-state`: metric alarms over REST /v1/alarms
(CloudWatch's PutMetricAlarm, DescribeAlarms, DeleteAlarms, DescribeAlarmHistory,
SetAlarmState)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .context import OutputOpt, state
from .output import emit_list, emit_record

app = typer.Typer(help="Metric alarms: states, history, scaling policy actions.",
                  no_args_is_help=True)
NameArg = Annotated[str, typer.Argument(help="Alarm name.")]
COLUMNS = [("ALARM", "alarm_name"), ("STATE", "state_value"), ("METRIC", "metric_name"),
           ("DIMENSION", lambda a: f"{a['dimensions'][0]['name']}={a['dimensions'][0]['value']}"),
           ("CONDITION", lambda a: f"{a['statistic']} {a['comparison_operator']} "
                                   f"{a['threshold']:g}"),
           ("PERIODS", lambda a: f"{a['datapoints_to_alarm']} of {a['evaluation_periods']} x "
                                 f"{a['period']}s"),
           ("UPDATED", "state_updated_at")]
HISTORY_COLUMNS = [("TIME", "timestamp"), ("TYPE", "history_item_type"),
                   ("SUMMARY", "history_summary")]


def _path(name: str, rest: str = "") -> str:
    return f"/v1/alarms/{name}" + (f"/{rest}" if rest else "")


@app.command("put")
def put(ctx: typer.Context, name: NameArg,
        threshold: Annotated[float, typer.Option("--threshold")],
        comparison: Annotated[str, typer.Option(
            "--comparison-operator", help="GreaterThanThreshold, GreaterThanOrEqualToThreshold, "
                                          "LessThanThreshold, LessThanOrEqualToThreshold.")],
        period: Annotated[int, typer.Option("--period", help="Seconds.")],
        evaluation_periods: Annotated[int, typer.Option("--evaluation-periods", min=1)],
        instance: Annotated[Optional[str], typer.Option("--instance-id")] = None,
        group: Annotated[Optional[str], typer.Option("--auto-scaling-group")] = None,
        metric: Annotated[str, typer.Option("--metric-name")] = "CPUUtilization",
        namespace: Annotated[str, typer.Option("--namespace")] = "AWS/EC2",
        statistic: Annotated[str, typer.Option("--statistic")] = "Average",
        datapoints: Annotated[Optional[int], typer.Option("--datapoints-to-alarm", min=1)] = None,
        missing: Annotated[str, typer.Option(
            "--treat-missing-data", help="missing, notBreaching, breaching, ignore.")] = "missing",
        alarm_actions: Annotated[Optional[list[str]], typer.Option(
            "--alarm-action", help="Scaling policy ARN (repeat).")] = None,
        ok_actions: Annotated[Optional[list[str]], typer.Option("--ok-action")] = None,
        insufficient_actions: Annotated[Optional[list[str]], typer.Option(
            "--insufficient-data-action")] = None,
        disabled: Annotated[bool, typer.Option("--actions-disabled")] = False,
        description: Annotated[Optional[str], typer.Option("--description")] = None,
        output: OutputOpt = None) -> None:
    """Create or replace an alarm on one instance's or one group's metric."""
    st = state(ctx, output)
    if (instance is None) == (group is None):
        raise typer.BadParameter("give exactly one of --instance-id and --auto-scaling-group")
    dim = ({"name": "InstanceId", "value": instance} if instance
           else {"name": "AutoScalingGroupName", "value": group})
    body = {"metric_name": metric, "namespace": namespace, "dimensions": [dim],
            "statistic": statistic, "period": period, "evaluation_periods": evaluation_periods,
            "datapoints_to_alarm": datapoints, "threshold": threshold,
            "comparison_operator": comparison, "treat_missing_data": missing,
            "actions_enabled": not disabled, "alarm_actions": alarm_actions or [],
            "ok_actions": ok_actions or [],
            "insufficient_data_actions": insufficient_actions or [],
            "alarm_description": description}
    emit_record(st, st.api().put(_path(name), body))


@app.command("list")
def list_alarms(ctx: typer.Context,
                prefix: Annotated[Optional[str], typer.Option("--name-prefix")] = None,
                state_value: Annotated[Optional[str], typer.Option(
                    "--state", help="OK, ALARM or INSUFFICIENT_DATA.")] = None,
                output: OutputOpt = None) -> None:
    st = state(ctx, output)
    params = {k: v for k, v in (("name_prefix", prefix), ("state_value", state_value)) if v}
    emit_list(st, st.api().paginate("/v1/alarms", params), COLUMNS)


@app.command("show")
def show(ctx: typer.Context, name: NameArg, output: OutputOpt = None) -> None:
    st = state(ctx, output)
    emit_record(st, st.api().get(_path(name)))


@app.command("delete")
def delete(ctx: typer.Context, name: NameArg, output: OutputOpt = None) -> None:
    st = state(ctx, output)
    emit_record(st, st.api().delete(_path(name)))


@app.command("history")
def history(ctx: typer.Context, name: NameArg,
            item_type: Annotated[Optional[str], typer.Option(
                "--type", help="StateUpdate, Action or ConfigurationUpdate.")] = None,
            output: OutputOpt = None) -> None:
    """Newest first."""
    st = state(ctx, output)
    params = {"history_item_type": item_type} if item_type else {}
    emit_list(st, st.api().get(_path(name, "history"), **params), HISTORY_COLUMNS)


@app.command("set-state")
def set_state(ctx: typer.Context, name: NameArg,
              value: Annotated[str, typer.Option("--state")],
              reason: Annotated[str, typer.Option("--reason")] = "set by hand",
              output: OutputOpt = None) -> None:
    """Set the state until the next evaluation (runs that state's actions; for testing)."""
    st = state(ctx, output)
    emit_record(st, st.api().post(_path(name, "state"),
                                  {"state_value": value, "state_reason": reason}))
