"""The reconciliation's arithmetic: the residual accounts for events in flight, and only a
residual seen twice is confirmed.

A corrupted counter corrected on the running pipeline: tests/e2e/test_reconcile.py."""

from __future__ import annotations

from services.reporter.reconcile import Snapshot, confirmed


def test_the_residual_accounts_for_events_in_flight() -> None:
    snapshot = Snapshot(
        truth={(1, "sent"): 10, (1, "queued"): 5},
        counters={(1, "sent"): 8, (1, "queued"): 7, (1, "failed"): 2},
        # Two queued -> sent changes not applied yet: they explain sent and queued.
        in_flight={(1, "sent"): 2, (1, "queued"): -2},
    )
    assert snapshot.residual() == {(1, "failed"): -2}
    assert confirmed({(1, "failed"): -2}, {(1, "failed"): -2, (2, "sent"): 1}) == {
        (1, "failed"): -2
    }
    assert confirmed({(1, "failed"): -1}, {(1, "failed"): -2}) == {}
