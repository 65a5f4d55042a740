"""Alert rules as pure functions: parse `metric{k=v} op threshold for 5m`, test conditions, match silences."""

from __future__ import annotations

import hashlib
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
SEVERITIES = ("info", "warning", "critical")

METRIC_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:]*$")
LABEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:]*$")
RULE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_EXPR_RE = re.compile(
    r"""^\s*
    (?P<metric>[^\s{}<>=!]+)\s*
    (?:\{(?P<labels>[^}]*)\}\s*)?
    (?P<op>>=|<=|==|!=|>|<)\s*
    (?P<threshold>\S+)
    (?:\s+for\s+(?P<for>\S+))?
    \s*$""",
    re.VERBOSE,
)
_MAX_FINGERPRINT = 500


class RuleError(ValueError):
    """A rule is invalid; `field` names the offending part and the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Condition:
    """What a rule tests on each series: `metric{labels} op threshold` held `for_s`, optional hysteresis."""

    metric: str
    op: str
    threshold: float
    labels: dict[str, str] = field(default_factory=dict)
    for_s: float = 0.0
    recovery_threshold: float | None = None

    def breached(self, value: float) -> bool:
        return breached(self.op, value, self.threshold)

    def recovered(self, value: float) -> bool:
        return recovered(self.op, value, self.threshold, self.recovery_threshold)

    @property
    def expr(self) -> str:
        return format_expr(self.metric, self.labels, self.op, self.threshold, self.for_s)


def parse_duration(text: str | float | int, field: str = "for") -> float:
    """`30s`, `5m`, `1h30m`, `2d`, `500ms` or a plain number of seconds; never negative."""
    if isinstance(text, bool):
        raise RuleError(field, f"expected a duration like 30s, 5m or 1h, got {text!r}")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        raw = text.strip().lower()
        try:
            seconds = float(raw)
        except ValueError:
            pos = 0
            seconds = 0.0
            for match in _DURATION_PART.finditer(raw):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNIT_S[match.group(2)]
                pos = match.end()
            if pos != len(raw) or not raw:
                raise RuleError(field, f"expected a duration like 30s, 5m or 1h, got {text!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise RuleError(field, f"duration must be zero or more seconds, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest of `90s`, `5m`, `2h`, `1d` that is exact."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _format_number(value: float) -> str:
    return f"{value:g}"


def format_labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def format_expr(metric: str, labels: Mapping[str, str], op: str, threshold: float, for_s: float) -> str:
    text = f"{metric}{format_labels(labels)} {op} {_format_number(threshold)}"
    if for_s:
        text += f" for {format_duration(for_s)}"
    return text


def parse_labels(text: str, field: str = "labels") -> dict[str, str]:
    """`host=web1, mount="/"`: names are identifiers, values bare words or quoted strings."""
    labels: dict[str, str] = {}
    for part in _split_label_pairs(text, field):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise RuleError(field, f"expected name=value, got {part.strip()!r}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif any(c in value for c in " \"'"):
            raise RuleError(field, f"label {name!r}: quote values that contain spaces or quotes")
        labels[name] = value
    return check_labels(labels, field)


def _split_label_pairs(text: str, field: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quote: str | None = None
    for char in text:
        if quote:
            current.append(char)
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
            current.append(char)
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if quote:
        raise RuleError(field, "unterminated quoted label value")
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def check_labels(labels: Mapping[str, object], field: str = "labels") -> dict[str, str]:
    checked: dict[str, str] = {}
    for name, value in labels.items():
        if not isinstance(name, str) or not LABEL_RE.match(name):
            raise RuleError(
                field,
                f"label name {name!r} must start with a letter or '_' "
                "and hold only letters, digits, '_', '.', ':'",
            )
        if not isinstance(value, str):
            raise RuleError(field, f"label {name!r}: value must be a string")
        checked[name] = value
    return checked


def check_metric(metric: str, field: str = "metric") -> str:
    if not isinstance(metric, str) or not METRIC_RE.match(metric) or len(metric) > 255:
        raise RuleError(
            field,
            f"metric name {metric!r} must start with a letter or '_' and hold only "
            "letters, digits, '_', '.', ':' (at most 255)",
        )
    return metric


def check_op(op: str, field: str = "op") -> str:
    if op not in OPS:
        raise RuleError(field, f"operator {op!r} is not one of {' '.join(OPS)}")
    return op


def check_threshold(value: object, field: str = "threshold") -> float:
    if isinstance(value, bool):
        raise RuleError(field, f"expected a number, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RuleError(field, f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise RuleError(field, f"expected a finite number, got {value!r}")
    return number


def check_severity(severity: str, field: str = "severity") -> str:
    if severity not in SEVERITIES:
        raise RuleError(field, f"severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    return severity


def check_rule_name(name: str, field: str = "name") -> str:
    if not isinstance(name, str) or not RULE_NAME_RE.match(name):
        raise RuleError(
            field,
            f"name {name!r} must be 1-128 letters, digits, '_', '.', '-' and start with a letter or digit",
        )
    return name


def check_recovery(
    op: str, threshold: float, recovery: float | None, field: str = "recovery_threshold"
) -> None:
    """A recovery threshold only makes sense for ordering operators, on the safe side of the threshold."""
    if recovery is None:
        return
    if op in ("==", "!="):
        raise RuleError(field, f"a recovery threshold needs one of > >= < <=, not {op!r}")
    if op in (">", ">=") and recovery > threshold:
        raise RuleError(
            field,
            f"must be at or below the threshold {threshold:g} for {op!r} "
            f"(the alert recovers when the value drops below it), got {recovery:g}",
        )
    if op in ("<", "<=") and recovery < threshold:
        raise RuleError(
            field,
            f"must be at or above the threshold {threshold:g} for {op!r} "
            f"(the alert recovers when the value rises above it), got {recovery:g}",
        )


def parse_expr(expr: str, field: str = "expr") -> Condition:
    """Parse `metric{label=value,...} op threshold [for DURATION]`."""
    if not isinstance(expr, str) or not expr.strip():
        raise RuleError(field, "expression is empty; expected e.g. 'host.cpu.percent > 90 for 5m'")
    match = _EXPR_RE.match(expr)
    if match is None:
        raise RuleError(
            field,
            f"cannot parse {expr!r}; expected 'metric{{label=value}} OP NUMBER [for DURATION]' "
            f"with OP one of {' '.join(OPS)}",
        )
    metric = check_metric(match.group("metric"), field)
    labels = parse_labels(match.group("labels") or "", field)
    threshold = check_threshold(match.group("threshold"), field)
    for_s = parse_duration(match.group("for"), field) if match.group("for") else 0.0
    return Condition(metric=metric, op=match.group("op"), threshold=threshold, labels=labels, for_s=for_s)


def breached(op: str, value: float, threshold: float) -> bool:
    return OPS[op](value, threshold)


def recovered(op: str, value: float, threshold: float, recovery: float | None) -> bool:
    """Whether a firing alert resolves: the condition no longer holds, or with hysteresis the value
    crossed the recovery threshold (below it for > and >=, above it for < and <=)."""
    if recovery is None:
        return not breached(op, value, threshold)
    if op in (">", ">="):
        return value < recovery
    if op in ("<", "<="):
        return value > recovery
    return not breached(op, value, threshold)


def fingerprint(rule_id: int, labels: Mapping[str, str]) -> str:
    """Identity of an alert instance: the rule and the series' sorted labels."""
    text = f"{rule_id}:" + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    if len(text) > _MAX_FINGERPRINT:
        text = f"{rule_id}:sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return text


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Every selector label is present in `labels` with the same value."""
    return all(labels.get(k) == v for k, v in selector.items())


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else 0


def summarize(
    metric: str, labels: Mapping[str, str], value: float | None, op: str, threshold: float, for_s: float
) -> str:
    shown = "no data" if value is None else _format_number(round(value, 3))
    text = f"{metric}{format_labels(labels)} = {shown} ({op} {_format_number(threshold)}"
    return text + (f" for {format_duration(for_s)})" if for_s else ")")
