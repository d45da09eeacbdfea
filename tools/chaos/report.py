"""The soak's figures, from the gateway's ledger and the soak's own workload.

A delivery is an entry the sandbox accepted (answered 200 `{"code": 0}`), mapped to
(mailing, client) by its phone (the soak made every client's phone) and its text (each
mailing has its own texts), not by the service's ids or tables. The service's tables are
read only for what they are judged on: the status recorded for each message and the
reporter's counters.

Definitions:

* expected: (mailing, client) pairs the workload's rule says must be delivered
  (`tools/chaos/workload.py`);
* lost: expected pairs never accepted by the gateway;
* delivered, not expected: pairs accepted though the rule says nothing is due to them;
* delivered twice: pairs accepted more than once. "In flight at a kill" are those where
  every repeat is explained by a dispatcher `kill -9` at `k`: the earlier acceptance `a`
  in `[k - W, k]` and the next one after `k`, with `W = PROVIDER_TIMEOUT_S + 1 s` (a
  request started before the kill and answered, whose outcome the killed process had
  not recorded yet). "In flight at a gateway cut" are those where every repeat is
  explained by a kill or by the gateway closing its connections at `o` (a `refuse`
  outage): the earlier acceptance in `[o - W, o + 1 s]` (the soak notes `o` a moment
  before the sandbox closes its sockets) and the next one after `o`. The gateway took
  that request and never answered it: the dispatcher saw a dropped connection, an
  ambiguous outcome, and retried with the same msgId, which a de-duplicating gateway
  drops (`PROVIDER_DEDUPLICATES=true`; with `false` the message is `failed` as an
  unknown outcome instead). Every other repeat is outside the allowed windows;
* sent after stop: acceptances at or after the mailing's stop time;
* outside the window: acceptances at an instant `shared/windows.py` says is outside
  the client's local window;
* old text after the edit: acceptances of the edited mailing with its first text for a
  client whose window opened only after the edit landed;
* status not `sent` / `sent` not delivered: the message's recorded status against the
  ledger (the statistics must say what happened);
* counters: the reporter's `mailing_status_count` against `COUNT(*)` per mailing and
  status, zero counts left out.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from shared.windows import is_allowed

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from services.sandbox.client import LedgerEntry
    from tools.chaos.workload import ClientSpec, MailingSpec, Workload


@dataclass
class DatabaseView:
    """What the service recorded, read once everything has drained (or timed out)."""

    statuses: dict[tuple[int, int], str]  # (mailing id, client id) -> status
    counts: dict[tuple[int, str], int]  # COUNT(*) per (mailing id, status)
    counters: dict[tuple[int, str], int]  # mailing_status_count, zero left out
    unpublished_outbox: int


@dataclass
class Figures:
    messages_expected: int = 0
    delivered: int = 0
    lost: int = 0
    lost_pending: int = 0
    unexpected: int = 0
    ambiguous_after_edit: int = 0
    twice_total: int = 0
    twice_in_kill_window: int = 0
    twice_at_gateway_cut: int = 0
    twice_outside_window: int = 0
    extra_deliveries: int = 0
    sent_after_stop: int = 0
    outside_window: int = 0
    old_text_after_edit: int = 0
    accepted_not_recorded_sent: int = 0
    recorded_sent_not_accepted: int = 0
    counter_cells_wrong: int = 0
    counter_difference: int = 0
    counters_exact: bool = True
    unpublished_outbox: int = 0
    unknown_ledger_entries: int = 0
    drained: bool = False
    seconds_to_drain: float | None = None
    kill_window_s: float = 0.0
    by_mailing: dict[str, dict[str, Any]] = field(default_factory=dict)
    counter_mismatches: list[dict[str, Any]] = field(default_factory=list)
    twice_examples: list[dict[str, Any]] = field(default_factory=list)
    error_log_lines: dict[str, int] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def misses(self) -> list[str]:
        """The targets missed, as short sentences (empty: every target met)."""
        checks = [
            (self.lost == 0, f"lost {self.lost} (target 0)"),
            (
                self.twice_outside_window == 0,
                f"delivered twice outside the allowed windows {self.twice_outside_window} "
                "(target 0)",
            ),
            (self.sent_after_stop == 0, f"sent after stop {self.sent_after_stop} (target 0)"),
            (self.outside_window == 0, f"sent outside the window {self.outside_window}"),
            (self.unexpected == 0, f"delivered, not expected {self.unexpected} (target 0)"),
            (self.old_text_after_edit == 0, f"old text after the edit {self.old_text_after_edit}"),
            (
                self.accepted_not_recorded_sent == 0,
                f"accepted but status not sent {self.accepted_not_recorded_sent} (target 0)",
            ),
            (
                self.recorded_sent_not_accepted == 0,
                f"status sent but never accepted {self.recorded_sent_not_accepted} (target 0)",
            ),
            (self.counters_exact, f"counters wrong in {self.counter_cells_wrong} cells"),
            (self.unpublished_outbox == 0, f"outbox not empty: {self.unpublished_outbox}"),
            (self.drained, "did not drain before the deadline"),
            (self.unknown_ledger_entries == 0, f"unknown ledger entries {self.unknown_ledger}"),
        ]
        return [message for ok, message in checks if not ok]

    @property
    def unknown_ledger(self) -> int:
        return self.unknown_ledger_entries

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["targets_missed"] = self.misses()
        data["ok"] = not data["targets_missed"]
        return data


# The soak notes a gateway cut's time a moment before the sandbox closes its sockets.
CUT_SLACK_S = 1.0


def _explained(
    times: list[float], kills: list[float], window: float, cuts: Sequence[float] = ()
) -> bool:
    """Whether every repeat follows an acceptance in flight at a dispatcher kill (or,
    with `cuts`, at a kill or when the gateway cut its connections)."""
    for earlier, later in itertools.pairwise(times):
        at_kill = any(earlier <= k <= earlier + window and later > k for k in kills)
        at_cut = any(o - window <= earlier <= o + CUT_SLACK_S and later > o for o in cuts)
        if not (at_kill or at_cut):
            return False
    return True


def analyse(
    workload: Workload,
    ledger: list[LedgerEntry],
    db: DatabaseView,
    dispatcher_kills: list[float],
    kill_window_s: float,
    gateway_cuts: Sequence[float] = (),
) -> Figures:
    figures = Figures(kill_window_s=kill_window_s, unpublished_outbox=db.unpublished_outbox)
    by_phone: dict[int, ClientSpec] = {int(c.phone): c for c in workload.clients}
    by_text: dict[str, tuple[MailingSpec, int]] = {}
    for mailing in workload.mailings:
        for version, text in enumerate(mailing.texts, start=1):
            by_text[text] = (mailing, version)
    expected, ambiguous = workload.expectations()
    figures.messages_expected = len(expected)
    figures.ambiguous_after_edit = len(ambiguous)

    accepted: dict[tuple[int, int], list[float]] = defaultdict(list)
    stats: dict[str, dict[str, Any]] = {
        m.key: {"id": m.id, "expected": 0, "delivered": 0, "lost": 0, "twice": 0, "late": 0}
        for m in workload.mailings
    }
    for entry in ledger:
        client = by_phone.get(entry["phone"] or -1)
        found = by_text.get(entry["text"] or "")
        if client is None or found is None:
            figures.unknown_ledger_entries += 1
            continue
        mailing, version = found
        assert mailing.id is not None
        assert client.id is not None
        at = float(entry["at_epoch"])
        accepted[(mailing.id, client.id)].append(at)
        moment = datetime.fromtimestamp(at, UTC)
        zone = ZoneInfo(client.zone)
        if moment >= mailing.stop:
            figures.sent_after_stop += 1
            stats[mailing.key]["late"] += 1
        if not is_allowed(moment, mailing.window, zone):
            figures.outside_window += 1
        if (
            version == 1
            and mailing.edit_text is not None
            and mailing.edited_at is not None
            and mailing.opens_for(client) > mailing.edited_at
        ):
            figures.old_text_after_edit += 1

    by_id = {m.id: m for m in workload.mailings}
    for pair in expected:
        stats[by_id[pair[0]].key]["expected"] += 1
        if pair not in accepted:
            figures.lost += 1
            stats[by_id[pair[0]].key]["lost"] += 1
            if db.statuses.get(pair) in {"scheduled", "queued", "sending", "retrying"}:
                figures.lost_pending += 1
    for pair, times in accepted.items():
        times.sort()
        key = by_id[pair[0]].key
        figures.delivered += 1
        stats[key]["delivered"] += 1
        if pair not in expected and pair not in ambiguous:
            figures.unexpected += 1
        if db.statuses.get(pair) != "sent":
            figures.accepted_not_recorded_sent += 1
        if len(times) > 1:
            figures.twice_total += 1
            figures.extra_deliveries += len(times) - 1
            stats[key]["twice"] += 1
            if _explained(times, dispatcher_kills, kill_window_s):
                figures.twice_in_kill_window += 1
            elif _explained(times, dispatcher_kills, kill_window_s, gateway_cuts):
                figures.twice_at_gateway_cut += 1
            elif len(figures.twice_examples) < 10:
                figures.twice_examples.append(
                    {"mailing_id": pair[0], "client_id": pair[1], "accepted_at": times}
                )
    figures.twice_outside_window = (
        figures.twice_total - figures.twice_in_kill_window - figures.twice_at_gateway_cut
    )
    figures.recorded_sent_not_accepted = sum(
        1 for pair, status in db.statuses.items() if status == "sent" and pair not in accepted
    )

    for mailing in workload.mailings:
        mailing_stats = stats[mailing.key]
        mailing_stats["statuses"] = {
            status: count for (mid, status), count in db.counts.items() if mid == mailing.id
        }
        mailing_stats["counters"] = {
            status: count for (mid, status), count in db.counters.items() if mid == mailing.id
        }
    figures.by_mailing = stats
    for cell in sorted(set(db.counts) | set(db.counters)):
        actual, counter = db.counts.get(cell, 0), db.counters.get(cell, 0)
        if actual != counter:
            figures.counter_mismatches.append(
                {"mailing_id": cell[0], "status": cell[1], "count": actual, "counter": counter}
            )
            figures.counter_difference += abs(actual - counter)
    figures.counter_cells_wrong = len(figures.counter_mismatches)
    figures.counters_exact = not figures.counter_mismatches
    return figures


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def render(figures: Figures) -> str:
    """The one table the soak prints."""
    f = figures
    drain = (
        f"{f.seconds_to_drain:.1f}"
        if f.drained and f.seconds_to_drain is not None
        else "not drained"
    )
    counters = (
        "exact"
        if f.counters_exact
        else f"{f.counter_cells_wrong} cells wrong (sum |diff| {f.counter_difference})"
    )
    rows: list[tuple[str, str, str]] = [
        ("messages expected", str(f.messages_expected), ""),
        ("delivered (distinct)", str(f.delivered), ""),
        ("lost", f"{f.lost} ({f.lost_pending} still pending)", _mark(f.lost == 0)),
        ("delivered, not expected", str(f.unexpected), _mark(f.unexpected == 0)),
        ("delivered twice", f"{f.twice_total} (+{f.extra_deliveries} sends)", ""),
        (
            f"  in flight at a kill (W={f.kill_window_s:g}s)",
            str(f.twice_in_kill_window),
            "allowed",
        ),
        (
            "  in flight at a gateway cut (same msgId)",
            str(f.twice_at_gateway_cut),
            "allowed",
        ),
        (
            "  outside those windows",
            str(f.twice_outside_window),
            _mark(f.twice_outside_window == 0),
        ),
        ("sent after stop", str(f.sent_after_stop), _mark(f.sent_after_stop == 0)),
        ("sent outside the window", str(f.outside_window), _mark(f.outside_window == 0)),
        ("old text after the edit", str(f.old_text_after_edit), _mark(f.old_text_after_edit == 0)),
        (
            "accepted, status not sent",
            str(f.accepted_not_recorded_sent),
            _mark(f.accepted_not_recorded_sent == 0),
        ),
        (
            "status sent, never accepted",
            str(f.recorded_sent_not_accepted),
            _mark(f.recorded_sent_not_accepted == 0),
        ),
        ("counters vs COUNT(*)", counters, _mark(f.counters_exact)),
        ("outbox unpublished", str(f.unpublished_outbox), _mark(f.unpublished_outbox == 0)),
        ("seconds to drain after last fault", drain, _mark(f.drained)),
    ]
    if f.unknown_ledger_entries:
        rows.append(("unknown ledger entries", str(f.unknown_ledger_entries), "MISSED"))
    width = max(len(label) for label, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    lines = [
        f"{label:<{width}}  {value:>{value_width}}  {mark}".rstrip() for label, value, mark in rows
    ]
    lines.append("")
    lines.append(
        f"{'mailing':<10} {'expected':>8} {'delivered':>9} {'lost':>5} {'twice':>5} "
        f"{'late':>5}  statuses (COUNT(*))"
    )
    for key, s in f.by_mailing.items():
        statuses = " ".join(f"{k}={v}" for k, v in sorted(s.get("statuses", {}).items()))
        lines.append(
            f"{key:<10} {s['expected']:>8} {s['delivered']:>9} {s['lost']:>5} {s['twice']:>5} "
            f"{s['late']:>5}  {statuses}"
        )
    for mismatch in f.counter_mismatches[:12]:
        lines.append(
            f"  counter mailing {mismatch['mailing_id']} {mismatch['status']}: "
            f"{mismatch['counter']} vs COUNT(*) {mismatch['count']}"
        )
    if f.faults:
        lines.append(
            "faults (accepted sends within 5 s): "
            + ", ".join(
                f"{fault['kind']} {fault['target']} "
                f"{datetime.fromtimestamp(fault['started_at'], UTC):%H:%M:%S} "
                f"({fault.get('accepted_around', '?')})"
                for fault in f.faults
            )
        )
    if f.error_log_lines:
        lines.append(
            "ERROR log lines: "
            + ", ".join(f"{name} {count}" for name, count in f.error_log_lines.items())
        )
    misses = f.misses()
    lines.append("targets: " + ("all met" if not misses else "MISSED: " + "; ".join(misses)))
    return "\n".join(lines)


def write_json(path: Path, figures: Figures) -> None:
    path.write_text(json.dumps(figures.as_json(), indent=2, default=str) + "\n")
