"""Control and ledger endpoints: read what the sandbox received, change its faults."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, BackgroundTasks, Body, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from services.sandbox.faults import Faults, OutageMode
from services.sandbox.ledger import encode_accepted
from services.sandbox.state import SandboxState

DESCRIPTION = """
A stand-in for the external SMS gateway. The contract itself,
`POST /v1/send/{msgId}` with `Authorization: Bearer <token>` and
`{"id": msgId, "phone": 79111234567, "text": "..."}`, answered
`200 {"code": 0, "message": "OK"}`, is served outside FastAPI (it is the hot path)
and so is not listed here.

Faults (`/control/faults`) and outages (`/control/outage`) change what the sends get;
the ledger (`/ledger...`) is the record of every send received and the answer given.
"""

TAGS = [
    {"name": "ledger", "description": "What the sandbox received and answered."},
    {"name": "control", "description": "Fault injection and outages, at run time."},
]

router = APIRouter()

AnswerKind = Literal[
    "ok", "5xx", "429", "malformed", "hang", "bad_request", "unauthorized", "outage"
]


def get_state(request: Request) -> SandboxState:
    return cast("SandboxState", request.app.state.sandbox)


StateDep = Annotated[SandboxState, Depends(get_state)]


class OutageIn(BaseModel):
    mode: OutageMode = Field(description="refuse: connections refused; 503: every send 503")
    seconds: float | None = Field(
        None, gt=0, description="Duration; null: until DELETE /control/outage"
    )


class OutageOut(BaseModel):
    mode: OutageMode | None
    since: str | None
    until: str | None
    remaining_s: float | None
    listening: bool


@router.get("/health", summary="The process is alive")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ledger/summary", tags=["ledger"], summary="Counts, duplicates, time span")
async def ledger_summary(state: StateDep) -> dict[str, Any]:
    return state.ledger.summary()


@router.get("/ledger", tags=["ledger"], summary="Entries in arrival order, filtered and paged")
async def ledger_entries(
    state: StateDep,
    msg_id: Annotated[int | None, Query(description="Only this msgId")] = None,
    accepted: Annotated[bool | None, Query(description="Only (not) accepted ones")] = None,
    answer: Annotated[AnswerKind | None, Query(description="Only this answer kind")] = None,
    limit: Annotated[int, Query(ge=0, le=1_000_000)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    return state.ledger.entries(
        msg_id=msg_id, accepted=accepted, answer=answer, limit=limit, offset=offset
    )


@router.get(
    "/ledger/accepted",
    tags=["ledger"],
    summary="Accepted sends as [[msgId, arrival_epoch_seconds], ...] (compact, for big runs)",
    response_class=Response,
)
async def ledger_accepted(state: StateDep) -> Response:
    body = await asyncio.to_thread(encode_accepted, *state.ledger.accepted_columns())
    return Response(body, media_type="application/json")


@router.post("/ledger/reset", tags=["ledger"], summary="Forget every entry")
async def ledger_reset(state: StateDep) -> dict[str, int]:
    return {"cleared": state.reset_ledger()}


@router.get("/control/faults", tags=["control"], summary="The fault settings")
async def get_faults(state: StateDep) -> Faults:
    return state.faults


@router.put("/control/faults", tags=["control"], summary="Replace the fault settings")
async def put_faults(state: StateDep, faults: Faults) -> Faults:
    return state.replace_faults(faults)


@router.patch(
    "/control/faults",
    tags=["control"],
    summary="Change some fault settings (the others stay)",
    responses={422: {"description": "Unknown field or invalid merged settings"}},
)
async def patch_faults(
    state: StateDep,
    changes: Annotated[
        dict[str, Any],
        Body(openapi_examples={"some 5xx": {"value": {"error_5xx": 0.3, "seed": 7}}}),
    ],
) -> Faults:
    try:
        return state.patch_faults(changes)
    except ValidationError as exc:
        raise HTTPException(
            status_code=422, detail=exc.errors(include_url=False, include_context=False)
        ) from None


@router.get("/control/state", tags=["control"], summary="Faults, seed, shares, outage")
async def get_state_view(state: StateDep) -> dict[str, Any]:
    return state.describe()


@router.get("/control/outage", tags=["control"], summary="The current outage, if any")
async def get_outage(state: StateDep) -> OutageOut:
    return OutageOut(**state.outage_info())


@router.post("/control/outage", tags=["control"], summary="Start (or replace) an outage")
async def start_outage(state: StateDep, body: OutageIn, background: BackgroundTasks) -> OutageOut:
    info = await state.start_outage(body.mode, body.seconds)
    # Open keep-alive connections are closed once this answer is on its way.
    background.add_task(state.drop_connections)
    return OutageOut(**info)


@router.delete("/control/outage", tags=["control"], summary="End the outage now")
async def clear_outage(state: StateDep) -> OutageOut:
    return OutageOut(**await state.clear_outage())
