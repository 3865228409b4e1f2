"""The signed rollout document and the cohort function both sides share.

A rollout document (target ``rollouts/<hardware_id>.json``, signed by the
online ``rollouts`` role) tells devices which firmware target is being rolled
out, in which waves, and how far the rollout has got.

Invariants:
* Waves are cumulative: a device eligible in wave k stays eligible in every
  later wave, because percentages must not decrease.
* ``cohort_bucket`` is a pure function of (rollout id, device id), so the
  device and the tracker agree on who is in a wave without talking.
* A device is eligible only while the state is ``active`` or ``completed`` and
  its wave index is at most ``current_wave``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tufota_core._errors import InputError
from tufota_core._names import (
    check_device_id,
    check_hardware_id,
    check_tag,
    firmware_target_path,
)
from tufota_core._window import check_window

ROLLOUT_STATES = ("active", "paused", "aborted", "completed")
# States in which devices of an open wave may install the release.
OFFERING_STATES = ("active", "completed")
BUCKETS = 10_000
SCHEMA = "tufota.rollout/1"
_WAVE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
MAX_WAVES = 32
MAX_RETRY_GENERATION = 1000


@dataclass(frozen=True)
class Wave:
    """One wave: a cumulative percentage of the fleet and/or listed devices or tags."""

    name: str
    percent: float = 0.0
    devices: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _WAVE_NAME.match(self.name):
            raise InputError(f"wave name {self.name!r} is invalid")
        if not 0.0 <= self.percent <= 100.0:
            raise InputError(f"wave {self.name}: percentage {self.percent} is outside 0-100")
        for device in self.devices:
            check_device_id(device)
        for tag in self.tags:
            check_tag(tag)
        if self.percent == 0.0 and not self.devices and not self.tags:
            raise InputError(f"wave {self.name} selects no devices")

    def selects(self, bucket: int, device_id: str, tags: Iterable[str]) -> bool:
        """True when this wave alone includes the device."""
        if bucket < round(self.percent * BUCKETS / 100):
            return True
        if device_id in self.devices:
            return True
        return any(tag in self.tags for tag in tags)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "percent": self.percent,
            "devices": list(self.devices),
            "tags": list(self.tags),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Wave:
        return cls(
            name=str(data["name"]),
            percent=float(data.get("percent", 0.0)),
            devices=tuple(str(d) for d in data.get("devices", [])),
            tags=tuple(str(t) for t in data.get("tags", [])),
        )


def parse_wave_spec(spec: str) -> list[Wave]:
    """Parse a wave list such as ``canary:tag=canary,pilot:devices=a,b,10%,100%``.

    Waves are separated by ``,`` or ``;``. Each is ``[NAME:]PCT%``,
    ``[NAME:]tag=T1+T2`` or ``[NAME:]devices=D1,D2`` (a bare word after a
    ``devices=`` wave continues its device list). Unnamed waves are called
    ``wave-N``.

    Raises:
        InputError: the spec is empty, malformed, or percentages decrease.
    """
    tokens = [t.strip() for t in re.split(r"[,;]", spec) if t.strip()]
    if not tokens:
        raise InputError("wave spec is empty: give e.g. 'canary:10%,100%'")
    raw: list[dict[str, Any]] = []
    for token in tokens:
        if ":" not in token and "%" not in token and "=" not in token:
            if raw and raw[-1]["devices"]:
                raw[-1]["devices"].append(token)
                continue
            raise InputError(f"wave spec: {token!r} is not 'NAME:PCT%', 'tag=T' or 'devices=D'")
        name, _, body = token.rpartition(":")
        wave: dict[str, Any] = {
            "name": name or f"wave-{len(raw) + 1}",
            "percent": 0.0,
            "devices": [],
            "tags": [],
        }
        if body.endswith("%"):
            try:
                wave["percent"] = float(body[:-1])
            except ValueError:
                raise InputError(f"wave spec: {body!r} is not a percentage") from None
        elif body.startswith("tag="):
            wave["tags"] = [t for t in body[4:].split("+") if t]
        elif body.startswith("devices="):
            wave["devices"] = [d for d in body[8:].split("+") if d]
        else:
            raise InputError(f"wave spec: {token!r} is not 'NAME:PCT%', 'tag=T' or 'devices=D'")
        raw.append(wave)
    waves = [Wave(w["name"], w["percent"], tuple(w["devices"]), tuple(w["tags"])) for w in raw]
    validate_waves(waves)
    return waves


def validate_waves(waves: list[Wave]) -> None:
    """Check the rules every wave list obeys.

    Raises:
        InputError: no waves, too many, duplicate names, or decreasing percentages.
    """
    if not waves:
        raise InputError("a rollout needs at least one wave")
    if len(waves) > MAX_WAVES:
        raise InputError(f"a rollout has at most {MAX_WAVES} waves")
    names = [w.name for w in waves]
    if len(set(names)) != len(names):
        raise InputError("wave names must be unique")
    highest = 0.0
    for wave in waves:
        if 0 < wave.percent < highest:
            raise InputError(
                f"wave {wave.name}: {wave.percent}% is below an earlier wave's {highest}%; "
                "percentages are cumulative"
            )
        highest = max(highest, wave.percent)


def cohort_bucket(rollout_id: str, device_id: str) -> int:
    """``sha256(rollout_id ":" device_id) mod 10000``."""
    digest = hashlib.sha256(f"{rollout_id}:{device_id}".encode()).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def wave_index(
    rollout_id: str, waves: list[Wave], device_id: str, tags: Iterable[str]
) -> int | None:
    """Index of the first wave that includes the device, or None when none does."""
    bucket = cohort_bucket(rollout_id, device_id)
    tag_list = list(tags)
    for index, wave in enumerate(waves):
        if wave.selects(bucket, device_id, tag_list):
            return index
    return None


@dataclass(frozen=True)
class RolloutDoc:
    """The content of ``rollouts/<hardware_id>.json``."""

    rollout_id: str
    hardware_id: str
    version: str
    target_path: str
    waves: tuple[Wave, ...]
    current_wave: int
    state: str
    maintenance_window: str | None = None
    updated: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    # Re-offer generation: the server raises it to offer the release again to
    # devices that failed or rolled back in this rollout. A device retries
    # when it is above the generation in force when it failed. Written only
    # when above 0, so documents without retries are unchanged.
    retry: int = 0

    def __post_init__(self) -> None:
        check_hardware_id(self.hardware_id)
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", self.rollout_id):
            raise InputError(f"rollout id {self.rollout_id!r} is invalid")
        parts = self.target_path.split("/")
        if len(parts) != 4 or parts[1] != self.hardware_id or parts[2] != self.version:
            raise InputError(
                f"rollout target {self.target_path!r} does not match its hardware and version"
            )
        firmware_target_path(parts[1], parts[2], parts[3])
        validate_waves(list(self.waves))
        if not 0 <= self.current_wave < len(self.waves):
            raise InputError(f"current wave {self.current_wave} is out of range")
        if self.state not in ROLLOUT_STATES:
            raise InputError(f"rollout state {self.state!r} is not one of {ROLLOUT_STATES}")
        check_window(self.maintenance_window)
        if isinstance(self.retry, bool) or not isinstance(self.retry, int):
            raise InputError("rollout retry generation must be an integer")
        if not 0 <= self.retry <= MAX_RETRY_GENERATION:
            raise InputError(f"rollout retry generation {self.retry} is outside 0-1000")

    def eligible_wave(self, device_id: str, tags: Iterable[str]) -> int | None:
        """The device's wave index when it may install now, else None.

        A completed rollout stays open to every wave: devices that were offline
        when the last gate was met still catch up. Paused and aborted ones offer nothing.
        """
        if self.state not in OFFERING_STATES:
            return None
        index = wave_index(self.rollout_id, list(self.waves), device_id, tags)
        if index is None or index > self.current_wave:
            return None
        return index

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = dict(self.extra)
        data.update(
            {
                "schema": SCHEMA,
                "rollout_id": self.rollout_id,
                "hardware_id": self.hardware_id,
                "version": self.version,
                "target_path": self.target_path,
                "waves": [w.to_json() for w in self.waves],
                "current_wave": self.current_wave,
                "state": self.state,
                "maintenance_window": self.maintenance_window,
                "updated": self.updated,
            }
        )
        if self.retry:
            data["retry"] = self.retry
        return data

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RolloutDoc:
        """Parse a rollout document.

        Raises:
            InputError: not JSON, wrong schema, or a field is malformed.
        """
        try:
            obj = json.loads(data)
            if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
                raise InputError(f"rollout document is not schema {SCHEMA}")
            known = {
                "schema",
                "rollout_id",
                "hardware_id",
                "version",
                "target_path",
                "waves",
                "current_wave",
                "state",
                "maintenance_window",
                "updated",
                "retry",
            }
            window = obj.get("maintenance_window")
            return cls(
                rollout_id=str(obj["rollout_id"]),
                hardware_id=str(obj["hardware_id"]),
                version=str(obj["version"]),
                target_path=str(obj["target_path"]),
                waves=tuple(Wave.from_json(w) for w in obj["waves"]),
                current_wave=int(obj["current_wave"]),
                state=str(obj["state"]),
                maintenance_window=None if window is None else str(window),
                updated=str(obj.get("updated", "")),
                extra={k: v for k, v in obj.items() if k not in known},
                retry=obj.get("retry", 0),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"rollout document is malformed: {e}") from e
