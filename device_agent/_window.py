"""Maintenance windows, as devices read them from ``RolloutDoc.maintenance_window``.

Format: ``DAYS HH:MM-HH:MM UTC`` (``daily``, ``Sat``, ``Mon-Fri``, ``Sat,Sun``);
an end at or before the start runs past midnight. This is the device's copy of
the parser the staging package validates windows with (the agent may not
import ``staging``); it should move to ``tufota_core``.

Invariants: pure (no clock, no I/O); a window that does not parse is a
malformed rollout document (``InputError``), never "always open".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tufota_core import InputError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_MAX_LENGTH = 128


def _day(text: str) -> int:
    try:
        return DAYS.index(text.lower())
    except ValueError:
        raise InputError(
            f"maintenance window: {text!r} is not a day (Mon, Tue, ... Sun or daily)"
        ) from None


def _minutes(text: str) -> int:
    match = _TIME.match(text)
    if match is None:
        raise InputError(f"maintenance window: {text!r} is not a 24-hour time such as 02:00")
    return int(match.group(1)) * 60 + int(match.group(2))


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True)
class MaintenanceWindow:
    """A weekly recurring window in UTC.

    Attributes:
        days: weekday numbers (Monday 0) on which the window starts, sorted.
        start: minutes after midnight UTC.
        end: minutes after midnight UTC; at or before ``start`` means the next day.
    """

    days: tuple[int, ...]
    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> MaintenanceWindow:
        """Parse ``DAYS HH:MM-HH:MM UTC`` (module docstring).

        Raises:
            InputError: the text does not follow the format.
        """
        if len(text) > _MAX_LENGTH:
            raise InputError("maintenance window is too long")
        parts = text.split()
        if len(parts) != 3:
            raise InputError(
                f"maintenance window {text!r} is not like 'Sat 02:00-04:00 UTC' "
                "(DAYS TIME-TIME UTC)"
            )
        days_text, times, zone = parts
        if zone.upper() != "UTC":
            raise InputError(f"maintenance window {text!r}: the time zone must be UTC")
        start_text, sep, end_text = times.partition("-")
        if not sep:
            raise InputError(f"maintenance window {text!r}: times must be HH:MM-HH:MM")
        start, end = _minutes(start_text), _minutes(end_text)
        days: set[int] = set()
        if days_text.lower() == "daily":
            days = set(range(7))
        else:
            for item in days_text.split(","):
                first, dash, last = item.partition("-")
                if not dash:
                    days.add(_day(first))
                    continue
                a, b = _day(first), _day(last)
                while True:
                    days.add(a)
                    if a == b:
                        break
                    a = (a + 1) % 7
        return cls(tuple(sorted(days)), start, end)

    def __post_init__(self) -> None:
        if not self.days or any(not 0 <= d < 7 for d in self.days):
            raise InputError("maintenance window needs at least one weekday")
        if not (0 <= self.start < 1440 and 0 <= self.end < 1440):
            raise InputError("maintenance window times must be within a day")

    @property
    def length(self) -> timedelta:
        """How long each opening lasts."""
        minutes = (self.end - self.start) % 1440 or 1440
        return timedelta(minutes=minutes)

    def contains(self, moment: datetime) -> bool:
        """True when ``moment`` (timezone-aware) falls inside an opening."""
        moment = moment.astimezone(UTC)
        minute = moment.hour * 60 + moment.minute
        for back in (0, 1):
            day = (moment.weekday() - back) % 7
            if day not in self.days:
                continue
            offset = minute + back * 1440 - self.start
            if 0 <= offset < self.length.total_seconds() / 60:
                return True
        return False
