"""The report on request: `GET /reports/preview` (its HTML, sending nothing) and
`POST /reports/send` (now, to the configured recipients or to `?to=`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from services.reporter.daily import Reports
from services.reporter.mailer import MailError
from shared.auth import ADMIN, VIEWER
from shared.logging import get_logger
from shared.settings import email_address

log = get_logger(__name__)

router = APIRouter(prefix="/reports", tags=["reports"])


class SentReport(BaseModel):
    recipients: list[str] = Field(description="Addresses the SMTP server accepted.")
    refused: dict[str, str] = Field(description="Addresses it refused, with its answer.")
    subject: str
    mailings: int = Field(description="Mailings in the report.")
    message_id: str


class Problem(BaseModel):
    detail: str


class FieldProblem(BaseModel):
    field: str
    message: str
    type: str


class FieldProblems(BaseModel):
    detail: list[FieldProblem]


EXAMPLE = {
    "recipients": ["ops@example.com"],
    "refused": {},
    "subject": "Notifications report 2031-01-02 14:05 (on request): 3 mailings, "
    "1,234 sent, 56 undelivered, 95.7% delivered",
    "mailings": 3,
    "message_id": "<173012345678.12345.4242@example.com>",
}


@router.get(
    "/preview",
    summary="Preview the report",
    description=(
        "The report as of now (mailings active in the last 24 hours, changes against the "
        "last daily report), as the HTML part of the e-mail would show it; its subject "
        "in the `X-Report-Subject` header. Nothing is sent. Needs the `viewer` role."
    ),
    response_class=HTMLResponse,
    dependencies=[VIEWER],
    responses={
        200: {"content": {"text/html": {}}},
        401: {"model": Problem, "description": "Missing or wrong token"},
    },
)
async def preview_report(request: Request) -> HTMLResponse:
    reports: Reports = request.app.state.reports
    title, html = await reports.preview()
    return HTMLResponse(
        html,
        headers={
            "X-Report-Subject": title.encode("ascii", "backslashreplace").decode(),
            # The report is a document, not an application: no script, no framing
            # except by the console of the same site.
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
            "img-src data:; frame-ancestors 'none'",
            "Cache-Control": "no-store",
        },
    )


@router.post(
    "/send",
    dependencies=[ADMIN],
    summary="Send the report now",
    description=(
        "Builds the report as of now (mailings active in the last 24 hours, changes "
        "against the last daily report) and sends it, in one SMTP attempt, to "
        "`REPORT_RECIPIENTS` or to the addresses in `to` (repeat it or separate with "
        "commas). The day's scheduled report is not affected. Needs the `admin` role."
    ),
    response_model=SentReport,
    responses={
        200: {"content": {"application/json": {"example": EXAMPLE}}},
        401: {"model": Problem, "description": "Missing or wrong token"},
        403: {"model": Problem, "description": "The caller is not an admin"},
        409: {"model": Problem, "description": "No recipients: reports are not configured"},
        422: {"model": FieldProblems, "description": "An address in `to` is not valid"},
        502: {"model": Problem, "description": "The SMTP server did not take the report"},
    },
)
async def send_report(
    request: Request,
    to: Annotated[
        list[str] | None,
        Query(description="Recipients instead of REPORT_RECIPIENTS (comma-separated)."),
    ] = None,
) -> SentReport | JSONResponse:
    reports: Reports = request.app.state.reports
    given = [part for value in to or [] for part in value.split(",") if part.strip()]
    problems = []
    recipients: list[str] = []
    for value in given:
        try:
            recipients.append(email_address(value))
        except ValueError as exc:
            problems.append({"field": "to", "message": str(exc), "type": "value_error"})
    if problems:
        return JSONResponse({"detail": problems}, status_code=422)
    if to is not None and not recipients:
        problem = {"field": "to", "message": "give at least one address", "type": "value_error"}
        return JSONResponse({"detail": [problem]}, status_code=422)
    recipients = list(dict.fromkeys(recipients)) or reports.recipients
    if not recipients:
        return JSONResponse(
            {
                "detail": "reports are not configured: REPORT_RECIPIENTS is empty; set it, "
                "or give the addresses with ?to="
            },
            status_code=409,
        )
    try:
        sent = await reports.send_now(recipients)
    except MailError as exc:
        log.warning("report_on_request_not_sent", smtp=reports.mailer.server, error=exc.reason)
        return JSONResponse(
            {
                "detail": f"the SMTP server {reports.mailer.server} did not take the report: "
                f"{exc.reason}"
            },
            status_code=502,
        )
    return SentReport(
        recipients=sent.recipients,
        refused=sent.refused,
        subject=sent.subject,
        mailings=sent.mailings,
        message_id=sent.message_id,
    )
