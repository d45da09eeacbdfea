"""`make report-now`: ask the running reporter to send the report now.

    python -m services.reporter.report_now [--to a@example.com,b@example.com]
                                           [--url http://127.0.0.1:8003] [--token TOKEN]

By default it calls the reporter of the local stack (`HTTP_HOST`:`REPORTER_PORT`) with
the first of `API_TOKENS`, read from the environment and `.env` like the services.
Exits 0 when the SMTP server took the report, 1 otherwise, saying why.
"""

from __future__ import annotations

import argparse
import os
import sys

import httpx

from shared.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::") else settings.http_host
    parser = argparse.ArgumentParser(prog="report-now", description=__doc__.split("\n")[0])
    parser.add_argument("--to", help="comma-separated recipients instead of REPORT_RECIPIENTS")
    parser.add_argument("--url", default=f"http://{host}:{settings.reporter_port}")
    tokens = settings.token_values()
    parser.add_argument(
        "--token",
        default=os.environ.get("NOTIFICATIONS_TOKEN") or (tokens[0] if tokens else None),
        help="an admin credential (default: NOTIFICATIONS_TOKEN, else the first of API_TOKENS)",
    )
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("no credential: give --token, or set NOTIFICATIONS_TOKEN or API_TOKENS")

    url = f"{args.url.rstrip('/')}/reports/send"
    try:
        response = httpx.post(
            url,
            params={"to": args.to} if args.to else None,
            headers={"Authorization": f"Bearer {args.token}"},
            timeout=settings.smtp_timeout_s + 10,
        )
    except httpx.HTTPError as exc:
        sys.stderr.write(f"report-now: no answer from the reporter at {url}: {exc!r}\n")
        return 1
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text}
    if response.status_code != 200:
        detail = body.get("detail") if isinstance(body, dict) else body
        if isinstance(detail, list):
            detail = "; ".join(str(item.get("message", item)) for item in detail)
        sys.stderr.write(f"report-now: {response.status_code}: {detail}\n")
        return 1
    lines = [
        f"sent: {body['subject']}",
        f"  to:         {', '.join(body['recipients'])}",
        f"  mailings:   {body['mailings']}",
        f"  message-id: {body['message_id']}",
    ]
    lines += [f"  refused:    {address}: {why}" for address, why in body["refused"].items()]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
