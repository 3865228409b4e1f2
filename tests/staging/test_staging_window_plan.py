"""Maintenance windows and rollout plans: formats, presets, and bad input."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from staging import PRESETS, MaintenanceWindow, RolloutOptions, build_plan, check_window
from tufota_core import FirmwareInfo, InputError

SAT = datetime(2026, 1, 3, tzinfo=UTC)  # a Saturday


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("Sat 02:00-04:00 UTC", "Sat 02:00-04:00 UTC"),
        ("sat,sun 02:00-04:00 utc", "Sat,Sun 02:00-04:00 UTC"),
        ("Mon-Fri 22:00-02:00 UTC", "Mon-Fri 22:00-02:00 UTC"),
        ("Fri-Mon 00:00-00:00 UTC", "Mon,Fri-Sun 00:00-00:00 UTC"),
        ("daily 01:30-03:00 UTC", "daily 01:30-03:00 UTC"),
        ("Mon-Sun 01:30-03:00 UTC", "daily 01:30-03:00 UTC"),
    ],
)
def test_windows_parse_to_a_canonical_form_that_round_trips(text: str, canonical: str) -> None:
    assert check_window(text) == canonical
    assert str(MaintenanceWindow.parse(canonical)) == canonical


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Sat 02:00-04:00", "not like"),
        ("Sat 02:00-04:00 CET", "must be UTC"),
        ("Sat 2:00-04:00 UTC", "24-hour time"),
        ("Sat 02:00-24:00 UTC", "24-hour time"),
        ("Caturday 02:00-04:00 UTC", "is not a day"),
        ("Sat 02:00 UTC", "HH:MM-HH:MM"),
        ("x" * 200, "too long"),
    ],
)
def test_malformed_windows_are_refused(text: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        MaintenanceWindow.parse(text)


def test_a_window_past_midnight_belongs_to_the_day_it_starts_on() -> None:
    window = MaintenanceWindow.parse("Sat 22:00-02:00 UTC")
    assert window.contains(SAT.replace(hour=23))
    assert window.contains(SAT.replace(day=4, hour=1, minute=59))  # Sunday morning
    assert not window.contains(SAT.replace(day=4, hour=2))
    assert not window.contains(SAT.replace(day=4, hour=23))  # Sunday night is not Saturday
    assert not window.contains(SAT.replace(hour=21, minute=59))
    assert window.next_opening(SAT.replace(hour=12)) == SAT.replace(hour=22)
    assert window.next_opening(SAT.replace(day=4, hour=1)) == SAT.replace(hour=22)
    assert window.next_opening(SAT.replace(day=5)) == SAT.replace(day=10, hour=22)


def test_options_keep_only_canonical_windows_and_read_old_json() -> None:
    with pytest.raises(InputError, match="canonical"):
        RolloutOptions(maintenance_window="sat 02:00-04:00 utc")
    old = RolloutOptions.from_json(
        {"success_threshold": 1.0, "failure_threshold": 0.2, "soak_seconds": 0, "min_devices": 0}
    )
    assert old.stall_timeout_seconds == 1200
    assert old.maintenance_window is None
    assert RolloutOptions.from_json(old.to_json()) == old
    with pytest.raises(InputError, match="unknown rollout options"):
        RolloutOptions.from_json({"succes_threshold": 1.0})
    with pytest.raises(InputError, match="whole number"):
        RolloutOptions.from_json({"soak_seconds": 1.5})


CRITICAL = FirmwareInfo("gw-100", "2.0.0", severity="critical", cvss=9.8)
HIGH = FirmwareInfo("gw-100", "2.0.0", severity="high", cvss=8.1)


def test_presets_fill_in_what_is_not_given_and_explicit_options_win() -> None:
    waves, options = build_plan(preset="standard")
    assert [w.percent for w in waves] == [1.0, 10.0, 50.0, 100.0]
    assert (options.success_threshold, options.soak_seconds, options.preset) == (
        0.95,
        3600,
        "standard",
    )
    waves, options = build_plan(
        preset="critical",
        release=CRITICAL,
        waves="lab:tag=lab,100%",
        soak_seconds="2m",
        success_threshold="99%",
        maintenance_window="sat 02:00-04:00 utc",
    )
    assert [w.name for w in waves] == ["lab", "wave-2"]
    assert options.soak_seconds == 120
    assert options.success_threshold == 0.99
    assert options.failure_threshold == PRESETS["critical"].failure_threshold
    assert options.maintenance_window == "Sat 02:00-04:00 UTC"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "give a wave spec"),
        ({"preset": "fast"}, "not one of"),
        ({"preset": "critical", "release": HIGH}, "only for releases signed as critical"),
        ({"preset": "critical"}, "only for releases signed as critical"),
        ({"waves": "canary:10%,5%"}, "cumulative"),
        ({"waves": "canary:ten%"}, "not a percentage"),
        ({"waves": "canary:"}, "is not 'NAME:PCT%'"),
        ({"waves": "100%", "success_threshold": "0%"}, "outside 0-100%"),
        ({"waves": "100%", "failure_threshold": "101%"}, "outside 0-100%"),
        ({"waves": "100%", "soak_seconds": "soon"}, "not like 90s"),
        ({"waves": "100%", "min_devices": -1}, "outside 0-1000000000"),
        ({"waves": "100%", "soak_seconds": "9999999d"}, "longer than the limit of 365d"),
        ({"waves": "100%", "soak_seconds": 1e12}, "longer than the limit of 365d"),
        ({"waves": "100%", "soak_seconds": float("inf")}, "whole number of seconds"),
        ({"waves": "100%", "retry_backoff_seconds": "366d"}, "longer than the limit of 365d"),
        ({"waves": "100%", "retry_failed": 11}, "retry count 11 is outside 0-10"),
        ({"waves": "100%", "poll_interval_seconds": "31d"}, "outside 1 s - 30 days"),
        ({"waves": "100%", "stall_timeout_seconds": "0s"}, "outside 1 s"),
        ({"waves": "100%", "maintenance_window": "weekends"}, "not like"),
        ({"waves": "100%", "speed": 3}, "unknown rollout options"),
    ],
)
def test_bad_plans_are_refused_with_a_specific_error(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        build_plan(**kwargs)  # type: ignore[arg-type]
