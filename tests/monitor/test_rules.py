"""Rule expressions: parsing, durations, conditions with hysteresis, fingerprints."""

from __future__ import annotations

import pytest

from controltower.monitor.rules import (
    Condition,
    RuleError,
    check_recovery,
    fingerprint,
    format_duration,
    labels_match,
    parse_duration,
    parse_expr,
    recovered,
)


@pytest.mark.parametrize(
    ("expr", "metric", "labels", "op", "threshold", "for_s"),
    [
        ("host.cpu.percent > 90 for 5m", "host.cpu.percent", {}, ">", 90.0, 300.0),
        ("host.disk.percent > 90", "host.disk.percent", {}, ">", 90.0, 0.0),
        ("check.up == 0 for 30s", "check.up", {}, "==", 0.0, 30.0),
        ("host.up == 0", "host.up", {}, "==", 0.0, 0.0),
        ("host.cpu.percent>=75.5", "host.cpu.percent", {}, ">=", 75.5, 0.0),
        ("x < -1e3 for 1h30m", "x", {}, "<", -1000.0, 5400.0),
        ("x <= 0.5 for 2d", "x", {}, "<=", 0.5, 172800.0),
        ("x != 1 for 90", "x", {}, "!=", 1.0, 90.0),
        ("check.latency_ms{check=web} > 500 for 1m", "check.latency_ms", {"check": "web"}, ">", 500.0, 60.0),
        (
            'host.disk.percent{host="web 1", mount="/"} > 95',
            "host.disk.percent",
            {"host": "web 1", "mount": "/"},
            ">",
            95.0,
            0.0,
        ),
        ("  m{a=1,b=two}  ==  3  ", "m", {"a": "1", "b": "two"}, "==", 3.0, 0.0),
        ("m{} > 1", "m", {}, ">", 1.0, 0.0),
    ],
)
def test_parse_expr_accepts(expr, metric, labels, op, threshold, for_s):
    cond = parse_expr(expr)
    got = (cond.metric, cond.labels, cond.op, cond.threshold, cond.for_s)
    assert got == (metric, labels, op, threshold, for_s)


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("", "empty"),
        ("host.cpu.percent", "cannot parse"),
        ("host.cpu.percent >> 90", "cannot parse"),
        ("host.cpu.percent =~ 90", "cannot parse"),
        ("host.cpu.percent > ninety", "expected a number"),
        ("host.cpu.percent > nan", "finite"),
        ("host.cpu.percent > 90 for ever", "duration"),
        ("host.cpu.percent > 90 for -5m", "duration"),
        ("host.cpu.percent > 90 during 5m", "cannot parse"),
        ("9host > 1", "metric name"),
        ("host-cpu > 1", "metric name"),
        ("m{host} > 1", "name=value"),
        ("m{1x=a} > 1", "label name"),
        ('m{a="x} > 1', "unterminated"),
    ],
)
def test_parse_expr_rejects_naming_the_field(expr, problem):
    with pytest.raises(RuleError) as info:
        parse_expr(expr)
    assert info.value.field == "expr"
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1w", 604800),
        ("500ms", 0.5),
        ("0", 0),
        ("15", 15),
        (42, 42),
        (1.5, 1.5),
        ("2.5m", 150),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "m5", "5m3", "-1", "1h-5m", True])
def test_parse_duration_rejects(text):
    with pytest.raises(RuleError) as info:
        parse_duration(text, "for_s")
    assert info.value.field == "for_s"


def test_format_duration_round_trips():
    for seconds in (0.5, 30, 90, 300, 3600, 5400, 86400):
        assert parse_duration(format_duration(seconds)) == seconds


def test_expr_round_trips_through_the_canonical_form():
    cond = parse_expr('host.disk.percent{mount="/",host=web1} > 90 for 5m')
    assert cond.expr == 'host.disk.percent{host="web1",mount="/"} > 90 for 5m'
    assert parse_expr(cond.expr) == cond


def test_breach_and_plain_recovery():
    cond = Condition(metric="m", op=">", threshold=90)
    assert cond.breached(90.1) and not cond.breached(90)
    assert cond.recovered(90) and not cond.recovered(95)


def test_hysteresis_for_upper_and_lower_bounds():
    upper = Condition(metric="m", op=">", threshold=90, recovery_threshold=80)
    assert not upper.recovered(85)  # below the firing threshold, not yet below the recovery one
    assert not upper.recovered(80)
    assert upper.recovered(79.9)
    lower = Condition(metric="m", op="<", threshold=10, recovery_threshold=20)
    assert not lower.recovered(15)
    assert lower.recovered(20.5)
    assert recovered("==", 1, 0, None) and not recovered("==", 0, 0, None)


@pytest.mark.parametrize(
    ("op", "threshold", "recovery", "problem"),
    [
        (">", 90, 95, "at or below"),
        (">=", 90, 90.5, "at or below"),
        ("<", 10, 5, "at or above"),
        ("==", 0, 1, "needs one of"),
        ("!=", 0, 1, "needs one of"),
    ],
)
def test_recovery_threshold_must_be_on_the_safe_side(op, threshold, recovery, problem):
    with pytest.raises(RuleError) as info:
        check_recovery(op, threshold, recovery)
    assert info.value.field == "recovery_threshold"
    assert problem in info.value.message


def test_fingerprint_ignores_label_order_and_separates_rules():
    assert fingerprint(1, {"a": "1", "b": "2"}) == fingerprint(1, {"b": "2", "a": "1"}) == "1:a=1,b=2"
    assert fingerprint(2, {"a": "1"}) != fingerprint(1, {"a": "1"})
    long = fingerprint(1, {"k": "v" * 1000})
    assert long.startswith("1:sha256:") and len(long) < 512


def test_labels_match_is_a_subset_test():
    assert labels_match({}, {"host": "a"})
    assert labels_match({"host": "a"}, {"host": "a", "mount": "/"})
    assert not labels_match({"host": "a"}, {"host": "b"})
    assert not labels_match({"host": "a"}, {})
