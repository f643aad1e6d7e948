"""`kumo metrics statistics ...`: CloudWatch-style statistics of an instance's metric (REST
GET /v1/metrics/statistics): one row per period, oldest first. Times are ISO 8601 (UTC when
no zone is given) or relative to now: `-90s`, `-15m`, `-3h`, `-2d`, `now`."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Callable, Optional

import typer

from .api import CliError
from .context import Output, OutputOpt, state
from .output import emit_list, print_json

app = typer.Typer(help="Instance metrics (CPU, network, disk): statistics over periods.",
                  no_args_is_help=True)

_RELATIVE = re.compile(r"^-(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_time(text: str, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> str:
    """An ISO 8601 time for the API from `text` (ISO, `now` or `-<n><s|m|h|d>`)."""
    if text == "now":
        return now().isoformat()
    m = _RELATIVE.match(text)
    if m:
        return (now() - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})).isoformat()
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError("InvalidParameterValue",
                       f"time {text!r}: use ISO 8601, 'now' or -<n>s/m/h/d") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).isoformat()


@app.command("statistics")
def statistics(ctx: typer.Context,
               metric: Annotated[str, typer.Option(
                   "--metric", help="CPUUtilization, NetworkIn, NetworkOut, NetworkPacketsIn, "
                   "NetworkPacketsOut, DiskReadBytes, DiskWriteBytes, DiskReadOps, "
                   "DiskWriteOps.")] = "CPUUtilization",
               instance: Annotated[Optional[str], typer.Option(
                   "--instance", help="Instance id (dimension InstanceId); none: all your "
                   "instances together.")] = None,
               start: Annotated[str, typer.Option("--start", help="Start time.")] = "-1h",
               end: Annotated[str, typer.Option("--end", help="End time.")] = "now",
               period: Annotated[int, typer.Option(
                   "--period", help="Seconds per datapoint (a multiple of 60 for ranges older "
                   "than the raw retention).")] = 60,
               stats: Annotated[str, typer.Option(
                   "--statistics", help="Comma separated: SampleCount, Average, Sum, Minimum, "
                   "Maximum.")] = "Average,Maximum",
               namespace: Annotated[str, typer.Option("--namespace")] = "Kumo/EC2",
               output: OutputOpt = None) -> None:
    """Statistics of one metric over consecutive periods (GET /v1/metrics/statistics)."""
    st = state(ctx, output)
    params = {"namespace": namespace, "metric_name": metric, "start_time": parse_time(start),
              "end_time": parse_time(end), "period": period, "statistics": stats}
    if instance:
        params["dimension"] = f"InstanceId={instance}"
    result = st.api().get("/v1/metrics/statistics", **params)
    if st.output == Output.json:
        print_json(result)  # the API's object: label and datapoints
        return
    names = [s.strip() for s in stats.split(",") if s.strip()]
    columns = [("TIMESTAMP", "timestamp"), *((n.upper(), n) for n in names), ("UNIT", "unit")]
    emit_list(st, result["datapoints"], columns, title=result.get("label"))
