"""``POST /v1/scaler/pressure``: a chat-job-executor in another process reports models at
capacity to this task-executor-manager (admin key; see
:mod:`api.chat_job_executor.pressure_report`)."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, ConfigDict, Field

from api.deps import AdminDep

router = APIRouter(tags=["scaler"])

# Names in one report at most: a gateway serves far fewer models at capacity at once.
MAX_MODELS_PER_REPORT = 1000


class PressureReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(
        min_length=1, max_length=MAX_MODELS_PER_REPORT,
        description="names of models with a request waiting for a slot at the gateway",
    )  # fmt: skip


class PressureAccepted(BaseModel):
    accepted: list[str]


@router.post(
    "/v1/scaler/pressure", status_code=status.HTTP_202_ACCEPTED, response_model=PressureAccepted
)
async def report_pressure(body: PressureReport, _: AdminDep, request: Request) -> PressureAccepted:
    """Decide for these models soon (within ``AIF_SCALE_PRESSURE_PASS_S`` of the last pass)
    rather than at the next interval; names of no model scaled here are ignored."""
    manager = request.app.state.manager
    for name in body.models:
        manager.nudge(name)
    return PressureAccepted(accepted=body.models)
