"""The answer of ``GET /v1/usage``: requests and tokens per group of key, model and hour.

Parsing the query (dates, ``group_by``) is :mod:`api.services.usage`'s; this module only
says what the answer looks like, for the route and the OpenAPI document.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from domain.records import format_timestamp

GroupBy = Literal["key", "model", "hour"]


class UsageCounts(BaseModel):
    requests: int = Field(description="answered requests")
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageRow(UsageCounts):
    """One group: only the fields grouped by are present."""

    key_id: str | None = None
    key_name: str | None = None
    model: str | None = None
    hour: datetime | None = Field(default=None, description="the UTC hour's start")

    @field_serializer("hour")
    def _hour(self, value: datetime | None) -> str | None:
        return format_timestamp(value) if value is not None else None


class UsageReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    object: Literal["list"] = "list"
    start: datetime = Field(alias="from", description="the range's start (UTC)")
    end: datetime = Field(alias="to", description="the range's end (UTC), exclusive")
    group_by: list[GroupBy]
    data: list[UsageRow]
    totals: UsageCounts

    @field_serializer("start", "end")
    def _moment(self, value: datetime) -> str:
        return format_timestamp(value)
