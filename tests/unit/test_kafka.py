"""Event records without the broker: unknown fields are ignored, `type` selects the schema.

Through the real broker: tests/integration/test_kafka.py."""

from __future__ import annotations

from shared.events import ClientCreated, ClientData, client_event_adapter


def test_unknown_fields_are_ignored_and_type_selects_the_schema() -> None:
    event = ClientCreated(payload=ClientData(id=7, phone="79001234567", operator_code=900))
    record = event.to_record()
    record["added_later"] = True
    record["payload"]["nickname"] = "x"
    parsed = client_event_adapter.validate_python(record)
    assert parsed == event
    assert record["schema_version"] == 1
    assert record["type"] == "client.created"
