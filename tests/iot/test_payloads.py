"""Payload parsing: telemetry, attributes and responses, and the reasons bad ones are refused."""

from __future__ import annotations

import pytest

from controltower.iot.payloads import Rejected, load_json, parse_attributes, parse_response, parse_telemetry

NOW = 1_700_000_000.0


def test_single_reading_splits_numbers_from_other_values() -> None:
    [reading] = parse_telemetry(
        {"ts": 1_700_000_100, "values": {"temp": 21.5, "on": True, "mode": "eco", "cfg": {"a": 1}}}, NOW
    )
    assert reading.ts == 1_700_000_100.0
    assert reading.numbers == {"temp": 21.5, "on": 1.0}
    assert reading.others == {"mode": "eco", "cfg": {"a": 1}}


def test_list_of_readings_and_iso_and_missing_ts() -> None:
    readings = parse_telemetry([{"ts": "2024-01-01T00:00:00Z", "values": {"a": 1}}, {"values": {"a": 2}}], NOW)
    assert [r.ts for r in readings] == [1704067200.0, NOW]


@pytest.mark.parametrize(
    ("data", "kind", "field"),
    [
        ({"values": {"t": 1}, "extra": 1}, "invalid", "body.extra"),
        ({"ts": 1_700_000_000_000, "values": {"t": 1}}, "invalid", "body.ts"),
        ({"ts": "yesterday", "values": {"t": 1}}, "invalid", "body.ts"),
        ({"ts": "1900-01-01T00:00:00Z", "values": {"t": 1}}, "invalid", "body.ts"),  # before the epoch
        ({"ts": "9999-01-01T00:00:00Z", "values": {"t": 1}}, "invalid", "body.ts"),  # past what series keep
        ({"values": [1, 2]}, "invalid", "body.values"),
        ({"values": {"bad-key": 1}}, "invalid", "body.values.bad-key"),
        ([{"values": {"t": 1}}, "x"], "invalid", "1:"),
        ([], "invalid", "body"),
        ("just a string", "invalid", "body"),
    ],
)
def test_bad_telemetry_names_the_field(data: object, kind: str, field: str) -> None:
    with pytest.raises(Rejected) as info:
        parse_telemetry(data, NOW)
    assert info.value.kind == kind
    assert info.value.reason.startswith(field)


def test_malformed_json_and_non_finite_numbers_are_refused() -> None:
    with pytest.raises(Rejected) as info:
        load_json(b'{"values": ')
    assert info.value.kind == "malformed_json"
    with pytest.raises(Rejected) as info:
        load_json(b'{"values": {"t": NaN}}')
    assert info.value.kind == "malformed_json"


def test_attributes_and_responses() -> None:
    assert parse_attributes({"fw": "1.2", "cfg": {"x": [1]}}) == {"fw": "1.2", "cfg": {"x": [1]}}
    with pytest.raises(Rejected):
        parse_attributes([1])
    ok = parse_response({"result": {"x": 1}})
    assert ok.succeeded and ok.result == {"x": 1}
    failed = parse_response({"status": "failed", "error": "no camera"})
    assert not failed.succeeded and failed.error == "no camera"
    with pytest.raises(Rejected) as info:
        parse_response({"status": "maybe"})
    assert info.value.reason.startswith("body.status")
