"""UTC timestamps on the wire: RFC 3339 with a ``Z`` suffix, second precision."""

from __future__ import annotations

from datetime import UTC, datetime

from tufota_core._errors import InputError


def utcnow() -> datetime:
    """The current time, timezone-aware UTC, whole seconds."""
    return datetime.now(UTC).replace(microsecond=0)


def format_time(moment: datetime) -> str:
    """``2026-11-25T23:18:45Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """Parse what ``format_time`` writes (any RFC 3339 offset is accepted).

    Raises:
        InputError: ``text`` is not an RFC 3339 time.
    """
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise InputError(f"{text!r} is not an RFC 3339 time") from e
    if moment.tzinfo is None:
        raise InputError(f"{text!r} has no time zone")
    return moment.astimezone(UTC)
