"""HTTP entry points for an operator's control of a mailing: pause, resume, cancel,
replay of failed messages (docs/api.md, "Pause, resume, cancel, replay")."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends

from services.api import control
from services.api.deps import UnitDep, bind_path_ids
from services.api.routes.mailings import MailingId
from services.api.schemas import ErrorOut, MailingOut, Replayed, ReplayIn
from shared.auth import OPERATOR, VIEWER

router = APIRouter(
    prefix="/api/v1/notifications",
    tags=["mailings"],
    dependencies=[Depends(bind_path_ids), VIEWER],
    responses={
        401: {"model": ErrorOut, "description": "Missing or wrong token"},
        404: {"model": ErrorOut, "description": "No such mailing"},
        422: {"model": ErrorOut, "description": "Invalid input, each bad field named"},
    },
)
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorOut, "description": "Not possible in the mailing's state (named)"}
}


@router.post(
    "/{mailing_id}/pause/",
    responses=CONFLICT,
    dependencies=[OPERATOR],
    summary="Pause: no new request to the gateway until resumed (requests in flight finish)",
)
async def pause(mailing_id: MailingId, unit: UnitDep) -> MailingOut:
    async with unit.write() as session:
        return await control.change_state(session, unit.topics, mailing_id, "pause")


@router.post(
    "/{mailing_id}/resume/",
    responses=CONFLICT,
    dependencies=[OPERATOR],
    summary="Resume a paused mailing, within its window and before its stop time",
)
async def resume(mailing_id: MailingId, unit: UnitDep) -> MailingOut:
    async with unit.write() as session:
        return await control.change_state(session, unit.topics, mailing_id, "resume")


@router.post(
    "/{mailing_id}/cancel/",
    responses=CONFLICT,
    dependencies=[OPERATOR],
    summary="Cancel: every pending message becomes cancelled; history and counts stay",
)
async def cancel(mailing_id: MailingId, unit: UnitDep) -> MailingOut:
    async with unit.write() as session:
        return await control.change_state(session, unit.topics, mailing_id, "cancel")


@router.post(
    "/{mailing_id}/replay/",
    dependencies=[OPERATOR],
    summary="Replay failed messages (as `make replay-dlq` does): back to scheduled, due now",
)
async def replay(
    mailing_id: MailingId, unit: UnitDep, body: Annotated[ReplayIn | None, Body()] = None
) -> Replayed:
    reason = body.reason if body is not None else None
    async with unit.write() as session:
        return Replayed(replayed=await control.replay(session, unit.topics, mailing_id, reason))
