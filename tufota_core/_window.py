"""Maintenance windows: when devices of a rollout may install.

Format (the string devices read from ``RolloutDoc.maintenance_window``)::

    DAYS HH:MM-HH:MM UTC

``DAYS`` is ``daily``, one weekday (``Sat``), a range (``Mon-Fri``, which may
wrap: ``Fri-Mon``) or a comma list of days and ranges (``Sat,Sun``). Day names
are the English three-letter abbreviations, any case. Times are 24-hour UTC;
the zone must be written and must be ``UTC`` so nobody guesses a local time.
When the end is not after the start the window runs past midnight into the
next day (``Sat 22:00-02:00 UTC`` is Saturday 22:00 to Sunday 02:00); a window
with equal start and end lasts the whole day.

Invariants:
* ``MaintenanceWindow.parse(str(w)) == w``; ``str`` is the canonical form
  (days sorted from Monday, runs of three or more days written as ranges,
  seven days written as ``daily``).
* A window belongs to the day it starts on: ``contains`` checks the start day.
* Pure: no clock, no I/O. It lives in the core because both sides read it:
  the controller validates windows, devices obey them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tufota_core._errors import InputError

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
            raise InputError(f"maintenance window {text!r} is not like 'Sat 02:00-04:00 UTC'")
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

    def next_opening(self, moment: datetime) -> datetime:
        """The start of the opening that contains ``moment``, or of the next one."""
        moment = moment.astimezone(UTC).replace(second=0, microsecond=0)
        midnight = moment.replace(hour=0, minute=0)
        for back in range(-1, 8):
            day = midnight + timedelta(days=back)
            if day.weekday() not in self.days:
                continue
            opening = day + timedelta(minutes=self.start)
            if opening + self.length > moment:
                return opening
        raise AssertionError("a weekly window opens within eight days")  # pragma: no cover

    def __str__(self) -> str:
        days = "daily" if len(self.days) == 7 else ",".join(_ranges(self.days))
        return f"{days} {_hhmm(self.start)}-{_hhmm(self.end)} UTC"


def _ranges(days: tuple[int, ...]) -> list[str]:
    """Consecutive runs of weekdays as ``Mon-Fri`` items (no wrap-around)."""
    names = [d.capitalize() for d in DAYS]
    runs: list[list[int]] = []
    for day in days:
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    out = []
    for run in runs:
        if len(run) >= 3:
            out.append(f"{names[run[0]]}-{names[run[-1]]}")
        else:
            out.extend(names[d] for d in run)
    return out


def check_window(text: str | None) -> str | None:
    """Validate a window and return its canonical text (None stays None).

    Raises:
        InputError: the window is malformed.
    """
    if text is None or not text.strip():
        return None
    return str(MaintenanceWindow.parse(text.strip()))
