"""Repeated troubles a flood causes (out of descriptors, disk full, connections over the cap) are logged at most
once a minute per kind (issue 11), saying how many were left out; a fake monotonic clock drives it."""

from __future__ import annotations

import logging

import pytest

from host.log_throttle import LogThrottle


def test_one_line_a_minute_per_action_with_the_count_left_out(caplog: pytest.LogCaptureFixture) -> None:
    throttle = LogThrottle(logging.getLogger("flood"), interval_s=60)
    caplog.set_level(logging.INFO, logger="flood")
    logged = [throttle.log(logging.ERROR, "out_of_fds", now, "out of descriptors") for now in range(0, 120, 1)]
    assert logged.count(True) == 2 and logged[0] and logged[60]
    assert throttle.log(logging.ERROR, "disk_full", 61.0, "disk full")  # another kind has its own minute
    records = [(r.action, r.left_out) for r in caplog.records]  # type: ignore[attr-defined]
    assert records == [("out_of_fds", 0), ("out_of_fds", 59), ("disk_full", 0)]
    assert "59 more like it" in caplog.records[1].getMessage()


def test_a_hundred_thousand_repeats_make_a_handful_of_lines(caplog: pytest.LogCaptureFixture) -> None:
    throttle = LogThrottle(logging.getLogger("flood"))
    caplog.set_level(logging.INFO, logger="flood")
    for i in range(100_000):
        throttle.log(logging.WARNING, "connections_over_cap", i / 1000, "over the cap")  # 100 s of a flood
    assert len(caplog.records) == 2
