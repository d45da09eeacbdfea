"""The local stack's mail catcher: an SMTP server that keeps what it receives.

    python -m tools.mailcatcher [--port 1025] [--dir .dev/mail]

`make dev` starts it and points the reporter at it, so the daily report and
`make report-now` work with no mail server. Each message is saved as an `.eml` file
(open it in any mail client, or read it with `less`) and announced on stderr with its
subject and recipients. Plain SMTP on 127.0.0.1, no login: for development only.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import UTC, datetime
from email import message_from_bytes
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

REPO = Path(__file__).resolve().parents[1]


class Keeper:
    """aiosmtpd handler: save every message, then accept it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data: bytes = envelope.original_content or envelope.content
        self.count += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        path = self.directory / f"{stamp}-{self.count:04d}.eml"
        path.write_bytes(data)
        subject = message_from_bytes(data).get("Subject", "(no subject)")
        sys.stderr.write(f"mailcatcher: {subject!s} -> {', '.join(envelope.rcpt_tos)} ({path})\n")
        sys.stderr.flush()
        return "250 Message accepted for delivery"


async def serve(port: int, directory: Path) -> None:
    controller = Controller(Keeper(directory), hostname="127.0.0.1", port=port)
    controller.start()
    sys.stderr.write(f"mailcatcher: SMTP on 127.0.0.1:{port}, saving to {directory}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        controller.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description="SMTP server keeping what it receives.")
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--dir", type=Path, default=REPO / ".dev" / "mail")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args.port, args.dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
