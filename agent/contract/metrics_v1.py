"""Version 1 of the metrics wire contract: the batches of per-instance samples an agent pushes to
the controller's POST /v1/agent/metrics (agent token), and the controller's answer.

The agent owns this schema, like agent/contract/v1.py; the controller imports it. One sample is
what one instance did during one sampling interval (CloudWatch's EC2 metric names): CPU
utilization in percent of its vCPUs' capacity, and bytes/packets/operations *during* the
interval (so a Sum over a period is the total of that period). Additive changes (a new metric
name, a new optional field) keep the module; breaking ones go to metrics_v2.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

#: Samples in one batch at most: bounds one request's size (about 300 bytes a sample as JSON).
MAX_BATCH_SAMPLES = 1000

#: The metrics one sample may carry (CloudWatch's AWS/EC2 names) and their units.
METRIC_UNITS: dict[str, str] = {
    "CPUUtilization": "Percent",
    "NetworkIn": "Bytes",
    "NetworkOut": "Bytes",
    "NetworkPacketsIn": "Count",
    "NetworkPacketsOut": "Count",
    "DiskReadBytes": "Bytes",
    "DiskWriteBytes": "Bytes",
    "DiskReadOps": "Count",
    "DiskWriteOps": "Count",
}
MetricName = Literal["CPUUtilization", "NetworkIn", "NetworkOut", "NetworkPacketsIn",
                     "NetworkPacketsOut", "DiskReadBytes", "DiskWriteBytes", "DiskReadOps",
                     "DiskWriteOps"]
InstanceId = Annotated[str, StringConstraints(pattern=r"^i-[0-9a-f]{17}$")]
HostId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricSample(_Wire):
    """What one instance did during one sampling interval."""

    instance_id: InstanceId
    #: End of the interval: seconds since the epoch on the agent's clock.
    timestamp: float = Field(ge=0)
    #: Length of the interval in seconds (the two samples' distance on the monotonic clock).
    interval: float = Field(gt=0, le=3600)
    #: Metric name -> value: CPUUtilization in percent (0-100) of the instance's vCPUs;
    #: the others are totals during the interval (bytes, packets, operations), never negative.
    values: dict[MetricName, Annotated[float, Field(ge=0, allow_inf_nan=False)]]


class MetricsBatch(_Wire):
    """One POST of an agent: the oldest buffered samples first."""

    host_id: HostId
    samples: list[MetricSample] = Field(max_length=MAX_BATCH_SAMPLES)
    #: Samples this agent dropped since it started because its buffer was full (the controller
    #: was away too long): cumulative, so a lost batch loses no count.
    dropped_total: int = Field(default=0, ge=0)
    #: Seconds since the epoch on the agent when this was sent.
    sent_at: float


class MetricsAck(_Wire):
    """The controller's answer: the batch is stored and must not be sent again."""

    #: Samples stored.
    accepted: int
    #: Samples refused (an instance the controller does not know, a time outside retention).
    rejected: int
