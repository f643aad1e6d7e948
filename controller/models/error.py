"""The body of every error answer (controller/errors.py renders it; the OpenAPI document
declares it for each status an operation can answer, controller/api/responses.py)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="Stable EC2-style code, e.g. InvalidParameterValue, "
                                  "InvalidInstanceID.NotFound, IncorrectInstanceState")
    message: str = Field(description="Human-readable explanation; not meant to be parsed")
    retryable: bool = Field(description="True when the same request may succeed later "
                                        "(capacity, an agent that did not answer)")


class ErrorResponse(BaseModel):
    """`{"error": {"code", "message", "retryable"}}`."""
    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail
