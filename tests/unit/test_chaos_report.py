"""The chaos soak's judge (`tools/chaos/report.py`) on a made-up ledger: each fault it
must catch is caught and counted in the right row, and the workload's rule for who
expects what follows the windows, stop times and the edit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tools.chaos.report import DatabaseView, analyse, render
from tools.chaos.workload import ClientSpec, MailingSpec, Workload, plan_mailings, window_opening_at

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def entry(phone: str, text: str, at: datetime) -> Any:
    return {"msg_id": 1, "phone": int(phone), "text": text, "at_epoch": at.timestamp()}


def test_each_fault_lands_in_its_row() -> None:
    plain = MailingSpec("plain", "plain text", T0, T0 + timedelta(hours=1), ["a"], id=1)
    windowed = MailingSpec(
        "windowed",
        "windowed text",
        T0,
        T0 + timedelta(hours=1),
        ["b"],
        window=window_opening_at(T0 + timedelta(minutes=30)),
        id=2,
    )
    clients = [
        ClientSpec(0, "79000000001", "UTC", ["a"], id=11),
        ClientSpec(1, "79000000002", "UTC", ["a"], id=12),
        ClientSpec(2, "79000000003", "UTC", ["a"], id=13),
        ClientSpec(3, "79000000004", "Europe/Moscow", ["b"], id=14),
        ClientSpec(4, "79000000005", "UTC", ["a"], id=15),
        ClientSpec(5, "79000000006", "Africa/Johannesburg", ["b"], id=16),
    ]
    workload = Workload(clients, [plain, windowed], T0, 600, 1)
    kill = T0 + timedelta(minutes=5)
    ledger = [
        # client 11: accepted 1 s before a dispatcher kill and again after: allowed
        entry("79000000001", "plain text", kill - timedelta(seconds=1)),
        entry("79000000001", "plain text", kill + timedelta(seconds=20)),
        # client 12: twice, 100 s apart around the kill: not allowed
        entry("79000000002", "plain text", kill - timedelta(seconds=100)),
        entry("79000000002", "plain text", kill + timedelta(seconds=20)),
        # client 14 (Moscow, window opens at T0+30min): before the window, after stop
        entry("79000000004", "windowed text", T0 + timedelta(minutes=10)),
        entry("79000000004", "windowed text", T0 + timedelta(minutes=61)),
        # client 16: its window opens after stop, it expects nothing
        entry("79000000006", "windowed text", T0 + timedelta(minutes=40)),
        # nobody's phone
        entry("79999999999", "plain text", T0),
    ]
    db = DatabaseView(
        statuses={
            (1, 11): "sent",
            (1, 12): "sent",
            (1, 13): "queued",
            (2, 14): "expired",
            (1, 15): "sent",
            (2, 16): "sent",
        },
        counts={(1, "sent"): 3, (1, "queued"): 1, (2, "expired"): 1, (2, "sent"): 1},
        counters={(1, "sent"): 3, (2, "expired"): 1, (2, "sent"): 1},
        unpublished_outbox=2,
    )
    figures = analyse(workload, ledger, db, [kill.timestamp()], 2.5)

    assert figures.messages_expected == 5  # 11, 12, 13, 15 and 14; not 16
    assert figures.delivered == 4
    assert (figures.lost, figures.lost_pending) == (2, 1)  # 13 (queued) and 15
    assert (figures.twice_total, figures.twice_in_kill_window) == (3, 1)
    assert figures.twice_outside_window == 2
    assert figures.sent_after_stop == 1
    assert figures.outside_window == 2  # 14 at T0+10min, 16 at T0+40min
    assert figures.unexpected == 1  # 16
    assert figures.accepted_not_recorded_sent == 1  # 14 recorded expired
    assert figures.recorded_sent_not_accepted == 1  # 15
    assert figures.counter_mismatches == [
        {"mailing_id": 1, "status": "queued", "count": 1, "counter": 0}
    ]
    assert not figures.counters_exact
    assert figures.unknown_ledger_entries == 1
    figures.drained = True
    table = render(figures)
    assert "lost" in table
    assert "MISSED" in table
    assert len(figures.misses()) == 10


def test_a_request_the_gateway_cut_off_is_its_own_allowed_row() -> None:
    """The gateway took a request and closed the connection before answering (a
    `refuse` outage): the dispatcher retries it with the same msgId. Counted apart from
    the kills, allowed only right at the cut."""
    plain = MailingSpec("plain", "plain text", T0, T0 + timedelta(hours=1), ["a"], id=1)
    clients = [ClientSpec(i, f"7900000000{i}", "UTC", ["a"], id=10 + i) for i in range(1, 4)]
    workload = Workload(clients, [plain], T0, 600, 1)
    cut = T0 + timedelta(minutes=5)
    ledger = [
        # 11: in flight as the gateway cut its connections (noted just before), re-sent
        entry("79000000001", "plain text", cut + timedelta(seconds=0.3)),
        entry("79000000001", "plain text", cut + timedelta(seconds=40)),
        # 12: accepted 30 s before the cut: no request is in flight that long
        entry("79000000002", "plain text", cut - timedelta(seconds=30)),
        entry("79000000002", "plain text", cut + timedelta(seconds=40)),
        # 13: once
        entry("79000000003", "plain text", cut),
    ]
    db = DatabaseView(
        statuses={(1, 11): "sent", (1, 12): "sent", (1, 13): "sent"},
        counts={(1, "sent"): 3},
        counters={(1, "sent"): 3},
        unpublished_outbox=0,
    )
    figures = analyse(workload, ledger, db, [], 2.5, gateway_cuts=[cut.timestamp()])

    assert figures.twice_total == 2
    assert (figures.twice_in_kill_window, figures.twice_at_gateway_cut) == (0, 1)
    assert figures.twice_outside_window == 1
    assert "in flight at a gateway cut" in render(figures)


def test_the_edit_rule() -> None:
    mailings = plan_mailings(600, 7, T0)
    edited = mailings[2]
    assert edited.edit_at is not None
    assert edited.window is not None
    # Dubai's window is open from the start, Moscow's opens after the edit
    dubai = ClientSpec(0, "79000000001", "Asia/Dubai", ["c", "ckeep"], id=1)
    moscow_kept = ClientSpec(1, "79000000002", "Europe/Moscow", ["c", "ckeep"], id=2)
    moscow_dropped = ClientSpec(2, "79000000003", "Europe/Moscow", ["c"], id=3)
    tokyo = ClientSpec(3, "79000000004", "Asia/Tokyo", ["c", "ckeep"], id=4)
    for index, mailing in enumerate(mailings, start=1):
        mailing.id = index
    assert edited.opens_for(dubai) == T0
    assert edited.edit_at < edited.opens_for(moscow_kept) < edited.stop
    assert edited.opens_for(tokyo) > edited.stop
    workload = Workload([dubai, moscow_kept, moscow_dropped, tokyo], mailings, T0, 600, 7)

    edited.edited_at = edited.edit_at + timedelta(seconds=5)
    expected, ambiguous = workload.expectations()
    assert {pair for pair in expected if pair[0] == edited.id} == {(3, 1), (3, 2)}
    assert ambiguous == set()

    # a PUT held up past the opening: the dropped client may or may not have had it
    edited.edited_at = edited.opens_for(moscow_dropped) + timedelta(seconds=1)
    _, ambiguous = workload.expectations()
    assert ambiguous == {(3, 3)}
