"""The SMS gateway sandbox, as a real child process over HTTP (no Kafka, no PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from services.sandbox.ceiling import measure_ceiling, send_many
from services.sandbox.client import SandboxControl
from services.sandbox.process import SandboxProcess

AUTH = {"Authorization": "Bearer sandbox-token"}
OK_BODY = {"code": 0, "message": "OK"}
DEFAULT_FAULTS = {
    "latency_ms": 0.0,
    "latency_min_ms": None,
    "latency_max_ms": None,
    "error_5xx": 0.0,
    "error_429": 0.0,
    "retry_after_s": 1,
    "retry_after": None,
    "malformed": 0.0,
    "hang": 0.0,
    "hang_s": 300.0,
    "seed": None,
}


def payload(msg_id: int, phone: int = 79111234567, text: str = "hello") -> dict[str, Any]:
    return {"id": msg_id, "phone": phone, "text": text}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    process = SandboxProcess()
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def control(sandbox: SandboxProcess) -> AsyncIterator[SandboxControl]:
    """The control client, on a clean sandbox: no outage, no faults, empty ledger."""
    async with SandboxControl(sandbox.control_url) as control:
        await control.clear_outage()
        await control.set_faults(replace=True)
        await control.reset()
        yield control


@pytest.fixture
async def http(sandbox: SandboxProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=5.0) as client:
        yield client


async def post(
    http: httpx.AsyncClient,
    msg_id: int | str,
    body: Any = None,
    headers: dict[str, str] | None = AUTH,
) -> httpx.Response:
    if body is None:
        body = payload(int(msg_id))
    return await http.post(f"/v1/send/{msg_id}", json=body, headers=headers)


def is_documented_ok(response: httpx.Response) -> bool:
    try:
        return bool(response.status_code == 200 and response.json() == OK_BODY)
    except ValueError:
        return False


# --- the contract ------------------------------------------------------------------------


async def test_valid_send_is_accepted_and_recorded(
    http: httpx.AsyncClient, control: SandboxControl
) -> None:
    before = time.time()
    response = await post(http, 101, payload(101, 79111234567, "Привет, код 1234"))
    after = time.time()

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == OK_BODY
    [entry] = await control.entries(msg_id=101)
    assert entry["msg_id"] == 101
    assert entry["phone"] == 79111234567
    assert entry["text"] == "Привет, код 1234"
    assert (entry["answer"], entry["status"], entry["accepted"]) == ("ok", 200, True)
    assert before - 0.5 <= entry["at_epoch"] <= after + 0.5
    assert entry["at"].endswith("Z")
    summary = await control.summary()
    assert summary["requests"] == summary["accepted"] == summary["unique_accepted"] == 1
    assert summary["duplicates"] == []
    assert summary["by_answer"]["ok"] == 1
    assert await control.accepted() == [(101, entry["at_epoch"])]


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "sandbox-token"},
        {"Authorization": "Basic sandbox-token"},
        {"Authorization": "Bearer"},
    ],
    ids=["missing", "wrong", "no-bearer-prefix", "basic", "empty"],
)
async def test_bad_token_is_401_and_not_accepted(
    http: httpx.AsyncClient, control: SandboxControl, headers: dict[str, str] | None
) -> None:
    response = await post(http, 7, headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["code"] == 401
    [entry] = await control.entries(msg_id=7)
    assert (entry["answer"], entry["status"], entry["accepted"]) == ("unauthorized", 401, False)
    assert (await control.summary())["accepted"] == 0


async def test_bearer_scheme_is_case_insensitive(
    http: httpx.AsyncClient, control: SandboxControl
) -> None:
    response = await post(http, 8, headers={"Authorization": "bearer sandbox-token"})
    assert is_documented_ok(response)


@pytest.mark.parametrize(
    ("path_id", "content"),
    [
        ("7", {"id": 8, "phone": 79111234567, "text": "x"}),
        ("7", b"not json"),
        ("7", b""),
        ("7", [7, 79111234567, "x"]),
        ("7", {"phone": 79111234567, "text": "x"}),
        ("7", {"id": "7", "phone": 79111234567, "text": "x"}),
        ("1", {"id": True, "phone": 79111234567, "text": "x"}),
        ("7", {"id": 7, "phone": "79111234567", "text": "x"}),
        ("7", {"id": 7, "phone": 79111234567.0, "text": "x"}),
        ("7", {"id": 7, "phone": 79111234567, "text": None}),
        ("7", {"id": 7, "phone": 79111234567}),
        ("abc", {"id": 7, "phone": 79111234567, "text": "x"}),
        ("9223372036854775808", {"id": 9223372036854775808, "phone": 1, "text": "x"}),
    ],
    ids=[
        "id-differs",
        "not-json",
        "empty",
        "array",
        "no-id",
        "id-string",
        "id-bool",
        "phone-string",
        "phone-float",
        "text-null",
        "no-text",
        "path-not-int",
        "path-past-int64",
    ],
)
async def test_malformed_request_is_400(
    http: httpx.AsyncClient, control: SandboxControl, path_id: str, content: Any
) -> None:
    raw = content if isinstance(content, bytes) else json.dumps(content).encode()
    response = await http.post(
        f"/v1/send/{path_id}",
        content=raw,
        headers={**AUTH, "Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["code"] == 400
    [entry] = await control.entries()
    assert (entry["answer"], entry["status"], entry["accepted"]) == ("bad_request", 400, False)
    summary = await control.summary()
    assert summary["accepted"] == 0
    assert summary["by_answer"]["bad_request"] == 1


async def test_other_methods_are_405(http: httpx.AsyncClient, control: SandboxControl) -> None:
    response = await http.get("/v1/send/5", headers=AUTH)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert (await control.summary())["by_answer"]["bad_request"] == 1


async def test_duplicates_are_detected(http: httpx.AsyncClient, control: SandboxControl) -> None:
    for msg_id in (201, 202, 201, 201):
        assert is_documented_ok(await post(http, msg_id))

    summary = await control.summary()
    assert summary["accepted"] == 4
    assert summary["unique_accepted"] == 2
    assert summary["duplicates"] == [201]
    assert summary["duplicate_count"] == 1
    assert summary["duplicate_deliveries"] == 2
    entries = await control.entries(msg_id=201)
    assert [entry["accepted"] for entry in entries] == [True, True, True]
    assert entries[0]["at_epoch"] <= entries[1]["at_epoch"] <= entries[2]["at_epoch"]


async def test_ledger_filters_and_accepted_list(
    http: httpx.AsyncClient, control: SandboxControl
) -> None:
    for msg_id in (1, 2, 3):
        await post(http, msg_id)
    await post(http, 4, headers=None)
    await post(http, 5)

    accepted = await control.entries(accepted=True)
    assert [entry["msg_id"] for entry in accepted] == [1, 2, 3, 5]
    assert [e["msg_id"] for e in await control.entries(accepted=False)] == [4]
    assert [e["msg_id"] for e in await control.entries(answer="unauthorized")] == [4]
    page = await control.entries(limit=2, offset=1)
    assert [entry["seq"] for entry in page] == [1, 2]
    assert [msg_id for msg_id, _ in await control.accepted()] == [1, 2, 3, 5]


async def test_reset_empties_the_ledger(http: httpx.AsyncClient, control: SandboxControl) -> None:
    for msg_id in (1, 2, 3):
        await post(http, msg_id)

    assert await control.reset() == 3
    summary = await control.summary()
    assert summary["requests"] == summary["accepted"] == 0
    assert summary["first_at"] is None
    assert await control.entries() == []
    assert await control.accepted() == []


# --- faults ------------------------------------------------------------------------------


async def test_5xx_share_is_honoured_and_replayable_with_a_seed(
    sandbox: SandboxProcess, control: SandboxControl
) -> None:
    await control.set_faults(replace=True, error_5xx=0.3, seed=42)
    ids = range(10_000, 11_000)

    statuses = await send_many(sandbox.base_url, ids, concurrency=1)

    failed = sum(1 for status in statuses if status >= 500)
    assert 240 <= failed <= 360  # 1000 draws at 0.3: sd 14.5
    assert set(statuses) == {200, 500, 502, 503}
    summary = await control.summary()
    assert summary["by_answer"]["5xx"] == failed
    assert summary["accepted"] == 1000 - failed

    # A reset restarts the draws of a fixed seed: the same requests get the same answers.
    await control.reset()
    assert await send_many(sandbox.base_url, ids, concurrency=1) == statuses


async def test_fault_shares_follow_the_documented_order(
    sandbox: SandboxProcess, control: SandboxControl
) -> None:
    await control.set_faults(error_5xx=0.2, error_429=0.2, malformed=0.2, seed=7)
    n = 2000

    await send_many(sandbox.base_url, range(1, n + 1), concurrency=8)

    state = await control.state()
    expected = state["effective_shares"]
    assert expected["429"] == pytest.approx(0.16)
    assert expected["malformed"] == pytest.approx(0.128)
    by_answer = (await control.summary())["by_answer"]
    for kind in ("5xx", "429", "malformed", "ok"):
        share = expected[kind]
        sd = (n * share * (1 - share)) ** 0.5
        assert abs(by_answer[kind] - n * share) <= 4.5 * sd, (kind, by_answer)
    assert (await control.summary())["accepted"] == by_answer["ok"]


async def test_429_carries_retry_after(http: httpx.AsyncClient, control: SandboxControl) -> None:
    await control.set_faults(error_429=1.0, retry_after_s=7)

    response = await post(http, 31)

    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    [entry] = await control.entries(msg_id=31)
    assert (entry["answer"], entry["status"], entry["accepted"]) == ("429", 429, False)
    assert (await control.summary())["accepted"] == 0


@pytest.mark.parametrize("value", ["1e12", "inf", "nan", "-5", "Wed, 21 Oct 2099 07:28:00 GMT"])
async def test_429_can_carry_any_retry_after(
    http: httpx.AsyncClient, control: SandboxControl, value: str
) -> None:
    await control.set_faults(error_429=1.0, retry_after=value)

    response = await post(http, 32)

    assert response.status_code == 429
    assert response.headers["retry-after"] == value


async def test_malformed_200_is_not_accepted(
    http: httpx.AsyncClient, control: SandboxControl
) -> None:
    await control.set_faults(malformed=1.0, seed=3)

    responses = [await post(http, msg_id) for msg_id in range(1, 31)]

    assert {response.status_code for response in responses} == {200}
    assert not any(is_documented_ok(response) for response in responses)
    assert len({response.content for response in responses}) >= 3
    summary = await control.summary()
    assert summary["accepted"] == 0
    assert summary["by_answer"]["malformed"] == 30
    assert summary["by_status"] == {"200": 30}


async def test_hanging_request_never_answers_and_is_recorded(
    sandbox: SandboxProcess, control: SandboxControl
) -> None:
    await control.set_faults(hang=1.0)
    started = time.monotonic()

    async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=2.0) as http:
        with pytest.raises(httpx.ReadTimeout):
            await post(http, 41)

    assert time.monotonic() - started >= 1.9
    [entry] = await control.entries(msg_id=41)
    assert (entry["answer"], entry["status"], entry["accepted"]) == ("hang", 0, False)
    await control.set_faults(hang=0.0)
    async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=2.0) as http:
        assert is_documented_ok(await post(http, 42))


async def test_latency_fixed_and_random(http: httpx.AsyncClient, control: SandboxControl) -> None:
    await control.set_faults(latency_ms=300)
    started = time.monotonic()
    assert is_documented_ok(await post(http, 1))
    assert time.monotonic() - started >= 0.29

    await control.set_faults(latency_ms=0, latency_min_ms=50, latency_max_ms=80)
    for msg_id in (2, 3, 4):
        started = time.monotonic()
        assert is_documented_ok(await post(http, msg_id))
        assert 0.049 <= time.monotonic() - started < 1.0


async def test_faults_change_at_run_time(control: SandboxControl) -> None:
    assert await control.faults() == DEFAULT_FAULTS

    patched = await control.set_faults(error_429=0.5, retry_after_s=3)
    assert patched == {**DEFAULT_FAULTS, "error_429": 0.5, "retry_after_s": 3}
    patched = await control.set_faults(malformed=0.2)
    assert patched == {**DEFAULT_FAULTS, "error_429": 0.5, "retry_after_s": 3, "malformed": 0.2}
    replaced = await control.set_faults(replace=True, hang=0.1)
    assert replaced == {**DEFAULT_FAULTS, "hang": 0.1}
    assert await control.faults() == replaced

    for bad in ({"error_5xx": 1.5}, {"nonsense": 1}, {"latency_min_ms": 10}, {"hang_s": 0}):
        with pytest.raises(httpx.HTTPStatusError) as caught:
            await control.set_faults(**bad)
        assert caught.value.response.status_code == 422
    assert await control.faults() == replaced


# --- outages -----------------------------------------------------------------------------


async def test_refuse_outage_refuses_connections_then_recovers(
    sandbox: SandboxProcess, control: SandboxControl
) -> None:
    async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=2.0) as http:
        assert is_documented_ok(await post(http, 1))  # a kept-alive connection

        info = await control.outage("refuse", seconds=1.5)
        started = time.monotonic()
        assert info["mode"] == "refuse"
        assert info["listening"] is False

        with pytest.raises(httpx.TransportError):
            await post(http, 2)  # the open connection was closed, a new one is refused
        async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=2.0) as fresh:
            with pytest.raises(httpx.ConnectError):
                await post(fresh, 3)
        assert (await control.current_outage())["mode"] == "refuse"

        while True:
            try:
                response = await post(http, 4)
                break
            except httpx.TransportError:
                assert time.monotonic() - started < 5.0, "the sandbox did not listen again"
                await asyncio.sleep(0.05)
    assert is_documented_ok(response)
    assert time.monotonic() - started >= 1.2
    assert (await control.current_outage())["mode"] is None
    summary = await control.summary()
    assert summary["requests"] == summary["accepted"] == 2  # refused ones never arrived


async def test_refuse_outage_until_cleared(
    sandbox: SandboxProcess, control: SandboxControl
) -> None:
    await control.outage("refuse")
    async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=2.0) as http:
        with pytest.raises(httpx.ConnectError):
            await post(http, 1)
        assert (await control.current_outage())["remaining_s"] is None

        cleared = await control.clear_outage()

        assert cleared["mode"] is None
        assert is_documented_ok(await post(http, 2))


async def test_503_outage(http: httpx.AsyncClient, control: SandboxControl) -> None:
    info = await control.outage("503", seconds=30)
    assert 25 < (info["remaining_s"] or 0) <= 30

    response = await post(http, 51)

    assert response.status_code == 503
    [entry] = await control.entries(msg_id=51)
    assert (entry["answer"], entry["status"], entry["accepted"]) == ("outage", 503, False)
    await control.clear_outage()
    assert is_documented_ok(await post(http, 52))
    assert (await control.summary())["by_answer"]["outage"] == 1


# --- settings, process, ceiling ----------------------------------------------------------


async def test_env_and_flags_configure_a_sandbox_without_texts() -> None:
    process = SandboxProcess(
        env={
            "SANDBOX_FAULTS": '{"error_429": 0.25, "seed": 5}',
            "SANDBOX_FAULTS__RETRY_AFTER_S": "9",
        }
    )
    process.start(token="other-token", ledger_text=False, args=("--malformed", "0.1"))
    try:
        async with SandboxControl(process.control_url) as control:
            faults = await control.faults()
            assert faults == {
                **DEFAULT_FAULTS,
                "error_429": 0.25,
                "seed": 5,
                "retry_after_s": 9,
                "malformed": 0.1,
            }
            await control.set_faults(replace=True)
            async with httpx.AsyncClient(base_url=process.base_url, timeout=5.0) as http:
                response = await post(http, 61, headers={"Authorization": "Bearer other-token"})
                assert is_documented_ok(response)
                assert (await post(http, 62)).status_code == 401  # the default token
            [entry] = await control.entries(msg_id=61)
            assert entry["accepted"] is True
            assert entry["phone"] is None
            assert entry["text"] is None
            assert (await control.summary())["ledger_text"] is False
    finally:
        process.stop()


def test_invalid_settings_stop_the_start_with_a_message() -> None:
    process = SandboxProcess(env={"SANDBOX_FAULTS": '{"error_5xx": 2}'})
    with pytest.raises(RuntimeError, match="SANDBOX_FAULTS__ERROR_5XX"):
        process.start()
    assert not process.running()


async def test_ceiling_measurement() -> None:
    result = await measure_ceiling(requests=3000, concurrency=16, warmup=200)

    assert result.non_200 == 0
    assert result.accepted == 3000
    assert result.requests_per_s > 1000
    assert 0 < result.p50_ms <= result.p99_ms
