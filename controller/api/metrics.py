"""/v1/metrics/statistics (users), /v1/agent/metrics (agent token) and the Prometheus /metrics
(admin): thin routers over controller/services/metrics.py and cloud_health.py."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from agent.contract.metrics_v1 import MetricsAck, MetricsBatch
from controller.api.deps import AdminCaller, AgentAuth, Ctx, CurrentCaller
from controller.services import cloud_health, metrics

router = APIRouter(tags=["metrics"])
#: Mounted at the root, not under /v1: where Prometheus looks.
prometheus = APIRouter(tags=["metrics"])


def _counters(request: Request) -> metrics.IngestCounters:
    return request.app.state.metric_counters


@router.post("/agent/metrics", response_model=MetricsAck)
def ingest(body: MetricsBatch, ctx: Ctx, peer: AgentAuth, request: Request):
    peer.check_host(body.host_id)
    return metrics.ingest(ctx.db, ctx.settings, body, _counters(request))


@router.get("/metrics/statistics")
def get_statistics(
        ctx: Ctx, caller: CurrentCaller,
        namespace: Annotated[str | None, Query(max_length=255)] = None,
        metric_name: Annotated[str | None, Query(max_length=255)] = None,
        dimension: Annotated[list[str] | None, Query(
            max_length=10, description="Name=Value, e.g. InstanceId=i-0123456789abcdef0")] = None,
        start_time: datetime | None = None, end_time: datetime | None = None,
        period: Annotated[int | None, Query(ge=-2**31, le=2**31)] = None,
        statistics: Annotated[list[str] | None, Query(
            max_length=5, description="SampleCount, Average, Sum, Minimum, Maximum "
                                      "(repeated or comma separated)")] = None) -> dict:
    q = metrics.parse_query(ctx.settings, namespace=namespace, metric_name=metric_name,
                            dimensions=dimension, start_time=start_time, end_time=end_time,
                            period=period, statistics=statistics)
    return metrics.get_statistics(ctx.db, caller, q)


@prometheus.get("/metrics", response_class=Response,
                responses={200: {"content": {"text/plain": {}}}})
def prometheus_metrics(ctx: Ctx, _: AdminCaller, request: Request) -> Response:
    return Response(cloud_health.render(ctx.db, _counters(request)),
                    media_type=cloud_health.CONTENT_TYPE)
