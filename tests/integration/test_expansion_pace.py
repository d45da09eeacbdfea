"""The pace of an audience's expansion (`EXPANSION_MAX_RATE`): the first messages are
committed, so fired, at once; the rest is made no faster than the pace, leaving the
machine to the first deliveries."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, cast

import psycopg

from services.scheduler.service import Scheduler
from shared.db import create_engine, create_session_factory
from shared.kafka import topics_from
from tests.support.databases import libpq, scratch_database
from tests.support.infra import make_settings
from tests.support.polling import eventually

if TYPE_CHECKING:
    from tests.support.infra import Infra

CLIENTS = 1500
FIRST = 500
RATE = 250  # messages per second: the second batch may start 2 s after the start


async def test_a_paced_expansion_commits_its_first_messages_then_keeps_its_pace(
    infra: Infra,
) -> None:
    with scratch_database(infra.database_url, "pace") as url:
        with psycopg.connect(libpq(url), autocommit=True) as conn:
            conn.execute(
                "INSERT INTO client (phone, timezone) SELECT '7' || (9100000000 + g)::text, "
                "'UTC' FROM generate_series(1, %s) AS g",
                (CLIENTS,),
            )
            row = conn.execute(
                "INSERT INTO mailing (start_at, stop_at, text) "
                "VALUES (now() - interval '1 second', now() + interval '1 day', 'paced') "
                "RETURNING id"
            ).fetchone()
            assert row is not None
            mailing_id = int(row[0])
        settings = make_settings(
            infra,
            database_url=url,
            expansion_first_batch_size=FIRST,
            expansion_max_rate=RATE,
        )
        engine = create_engine(settings, application_name="tests")
        try:
            scheduler = Scheduler(
                create_session_factory(engine), cast("Any", None), topics_from(settings), settings
            )
            started = time.monotonic()
            activation = asyncio.create_task(scheduler.activate(mailing_id))
            with psycopg.connect(libpq(url), autocommit=True) as conn:

                async def made() -> int:
                    row = conn.execute(
                        "SELECT count(*) FROM message WHERE mailing_id = %s", (mailing_id,)
                    ).fetchone()
                    return int(row[0]) if row else 0

                count = await eventually(made, bool, interval=0.05, what="the first batch")
                # The first batch is there to be fired; the rest waits for its pace.
                assert count == FIRST
                assert not activation.done()
                assert await asyncio.wait_for(activation, timeout=60) == 1
                took = time.monotonic() - started
                assert await made() == CLIENTS
            # The second batch started no sooner than FIRST messages at RATE a second.
            assert took >= FIRST / RATE
        finally:
            await engine.dispose()
