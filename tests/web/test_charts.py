"""Chart helpers of dashboard pages: the rollup step by range, sparklines, merging series."""

from __future__ import annotations

import datetime as dt
import re

from controltower.web.charts import RANGES, line_options, merge, parse_local, plan_for, rate, sparkline


def test_step_grows_with_the_range() -> None:
    plans = {name: plan_for(span) for name, span in RANGES.items()}
    assert plans["15m"].step_s is None and plans["15m"].live  # raw samples, refreshed live
    assert plans["1h"].step_s == 60 and plans["1h"].live
    assert plans["24h"].step_s == 300 and not plans["24h"].live
    assert plans["7d"].step_s == 2040 and plans["7d"].step_s % 60 == 0
    assert plan_for(30 * 86400).step_s % 3600 == 0  # beyond 7 days: whole hours, read from 1-hour rollups


def test_sparkline_scales_into_its_box() -> None:
    svg = sparkline([0.0, 50.0, 100.0], 100.0, width=100, height=26)
    ys = [float(y) for y in re.findall(r",([\d.]+)", svg)]
    assert ys[0] > ys[1] > ys[2]  # higher values are drawn higher
    assert all(0 <= y <= 26 for y in ys)
    assert "no data yet" in sparkline([1.0])


def test_merge_and_format() -> None:
    assert merge([[(1.0, 2.0), (2.0, 3.0)], [(1.0, 5.0)]], "sum") == [(1.0, 7.0), (2.0, 3.0)]
    assert merge([[(1.0, 2.0)], [(1.0, 5.0)]], "max") == [(1.0, 5.0)]
    assert rate(512) == "512 B/s" and rate(2048) == "2.0 KB/s" and rate(None) == "-"
    options = line_options([("cpu", [(10.0, 1.5)])], "%", 100.0)
    assert options["series"][0]["data"] == [[10000, 1.5]] and options["yAxis"]["max"] == 100.0
    assert "min" not in options["xAxis"]
    windowed = line_options([("cpu", [(10.0, 1.5)])], "%", window=(0.0, 900.0))
    assert (windowed["xAxis"]["min"], windowed["xAxis"]["max"]) == (0, 900_000)


def test_a_datetime_local_value_is_local_time() -> None:
    assert parse_local("2030-01-02T03:04") == dt.datetime(2030, 1, 2, 3, 4).astimezone().timestamp()
    assert parse_local("") is None and parse_local("yesterday") is None
