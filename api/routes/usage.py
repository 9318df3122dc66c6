"""``GET /v1/usage``: requests and tokens per key, model and hour, from the stored buckets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from api.deps import PrincipalDep, UsageServiceDep, in_store
from api.schemas_usage import UsageReport

router = APIRouter(tags=["usage"])

Moment = Annotated[
    str | None,
    Query(description="an ISO 8601 date or datetime; UTC when it names no zone"),
]


@router.get("/v1/usage", response_model=UsageReport, response_model_exclude_none=True)
async def usage(
    principal: PrincipalDep,
    service: UsageServiceDep,
    request: Request,
    key: Annotated[
        str | None, Query(description="one key's id (an inference key: its own)")
    ] = None,
    model: Annotated[str | None, Query(description="one model's name")] = None,
    start: Annotated[Moment, Query(alias="from")] = None,
    end: Annotated[Moment, Query(alias="to")] = None,
    group_by: Annotated[
        list[str] | None,
        Query(
            description="key, model and/or hour; repeated or comma-separated (default key,model)"
        ),
    ] = None,
) -> UsageReport:
    """Usage from ``from`` (default: 7 days before ``to``) to ``to`` (default: now).

    An admin key sees every key's, an inference key only its own. Each chat process writes
    its counts every ``AIF_USAGE_FLUSH_S`` (2 s), so the last seconds may not show yet.
    """
    return await in_store(
        request, service.report, principal, key=key, model=model, start=start, end=end,
        group_by=group_by,
    )  # fmt: skip
