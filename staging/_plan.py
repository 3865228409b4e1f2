"""Rollout plans: presets, operator-friendly durations and percentages, validation.

Presets (``docs/rollouts.md`` states the same table):

============  ==========================  =======  =======  =====  ======  =====
preset        waves                       success  failure  soak   min     stall
============  ==========================  =======  =======  =====  ======  =====
standard      canary:1%,10%,50%,100%      95%      5%       1h     10      20m
critical      canary:5%,50%,100%          90%      10%      10m    3       10m
============  ==========================  =======  =======  =====  ======  =====

``critical`` trades caution for speed and is accepted only for a release
signed as critical (``severity`` ``critical`` or CVSS >= 9.0). Any option
given explicitly overrides the preset's value.

Invariant: ``build_plan`` either returns waves and options that
``TrackerStore.create_rollout`` accepts, or raises ``InputError`` naming the
offending input; it has no side effects.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from staging._config import MAX_DURATION_SECONDS
from staging._model import RolloutOptions
from tufota_core import FirmwareInfo, InputError, Wave, check_window, parse_wave_spec

_DURATION = re.compile(r"^(\d{1,15})([smhd]?)$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | int | float, *, maximum: int = MAX_DURATION_SECONDS) -> int:
    """``30m`` -> 1800; a number is seconds.

    Args:
        text: ``90s``, ``30m``, ``2h``, ``1d`` or a whole number of seconds.
        maximum: the largest accepted value in seconds (365 days unless given),
            checked before any date arithmetic can overflow.

    Raises:
        InputError: not like 90s, 30m, 2h or 1d, negative, or above ``maximum``.
    """
    if isinstance(text, bool):
        raise InputError("a duration is like 90s, 30m, 2h or 1d")
    if isinstance(text, int | float):
        if isinstance(text, float) and not math.isfinite(text):
            raise InputError(f"duration {text} must be a whole number of seconds >= 0")
        if text < 0 or int(text) != text:
            raise InputError(f"duration {text} must be a whole number of seconds >= 0")
        if text > maximum:
            raise InputError(f"duration {text:g} s is longer than the limit of {_human(maximum)}")
        seconds = int(text)
    else:
        match = _DURATION.match(text.strip())
        if match is None:
            raise InputError(f"duration {text!r} is not like 90s, 30m, 2h or 1d")
        seconds = int(match.group(1)) * _SECONDS[match.group(2)]
    if seconds > maximum:
        raise InputError(f"duration {text!r} is longer than the limit of {_human(maximum)}")
    return seconds


def _human(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_fraction(text: str | int | float) -> float:
    """``95%`` or ``0.95`` -> 0.95.

    Raises:
        InputError: not a percentage, or outside (0, 100%].
    """
    if isinstance(text, bool):
        raise InputError("a percentage is like 95%")
    try:
        if isinstance(text, int | float):
            value = float(text)
        else:
            value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise InputError(f"{text!r} is not a percentage such as 95%") from None
    if not 0.0 < value <= 1.0:
        raise InputError(f"{text!r} is outside 0-100% (it must be above 0)")
    return value


@dataclass(frozen=True)
class Preset:
    """A named starting point for a rollout plan."""

    name: str
    waves: str
    success_threshold: float
    failure_threshold: float
    soak_seconds: int
    min_devices: int
    stall_timeout_seconds: int
    critical_only: bool = False


PRESETS = {
    "standard": Preset("standard", "canary:1%,10%,50%,100%", 0.95, 0.05, 3600, 10, 1200),
    "critical": Preset("critical", "canary:5%,50%,100%", 0.90, 0.10, 600, 3, 600, True),
}

_OPTION_NAMES = (
    "success_threshold",
    "failure_threshold",
    "soak_seconds",
    "min_devices",
    "stall_timeout_seconds",
    "reboot_timeout_seconds",
    "poll_interval_seconds",
    "silent_polls",
    "retry_failed",
    "retry_backoff_seconds",
)


def is_critical(info: FirmwareInfo) -> bool:
    """True for a release signed as critical: severity critical or CVSS >= 9.0."""
    return info.severity == "critical" or (info.cvss is not None and info.cvss >= 9.0)


def build_plan(
    *,
    waves: str | None = None,
    preset: str | None = None,
    release: FirmwareInfo | None = None,
    maintenance_window: str | None = None,
    **overrides: Any,
) -> tuple[list[Wave], RolloutOptions]:
    """Waves and options from a preset, a wave spec and explicit overrides.

    Args:
        waves: a wave spec (``tufota_core.parse_wave_spec``); overrides the preset's.
        preset: ``standard`` or ``critical``; None uses only what is given.
        release: the release rolled out (checked against ``critical``).
        maintenance_window: ``DAYS HH:MM-HH:MM UTC`` (``staging._window``).
        **overrides: ``RolloutOptions`` fields; None values are ignored.

    Raises:
        InputError: unknown preset or option, no waves, a malformed value, or
            the critical preset for a release not signed as critical.
    """
    unknown = set(overrides) - set(_OPTION_NAMES)
    if unknown:
        raise InputError(f"unknown rollout options: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    spec = waves
    if preset is not None:
        chosen = PRESETS.get(preset)
        if chosen is None:
            raise InputError(f"preset {preset!r} is not one of {', '.join(PRESETS)}")
        if chosen.critical_only and (release is None or not is_critical(release)):
            what = (
                f"{release.version} is severity {release.severity}"
                + (f", CVSS {release.cvss}" if release.cvss is not None else "")
                if release
                else "the release is unknown"
            )
            raise InputError(
                f"preset {preset} is only for releases signed as critical "
                f"(severity critical or CVSS >= 9.0); {what}"
            )
        spec = spec or chosen.waves
        values = {
            "success_threshold": chosen.success_threshold,
            "failure_threshold": chosen.failure_threshold,
            "soak_seconds": chosen.soak_seconds,
            "min_devices": chosen.min_devices,
            "stall_timeout_seconds": chosen.stall_timeout_seconds,
            "preset": chosen.name,
        }
    if not spec:
        raise InputError("give a wave spec (e.g. 'canary:tag=canary,10%,100%') or a preset")
    wave_list = parse_wave_spec(spec)
    for name, value in overrides.items():
        if value is None:
            continue
        if name in ("success_threshold", "failure_threshold"):
            values[name] = parse_fraction(value)
        elif name.endswith("_seconds"):
            values[name] = parse_duration(value)
        else:
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{name.replace('_', ' ')} must be a whole number")
            values[name] = value
    values["maintenance_window"] = check_window(maintenance_window)
    return wave_list, RolloutOptions(**values)
