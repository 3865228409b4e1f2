"""Rollout progress and gates: a pure function of a rollout, its devices and the time.

Nothing here does I/O; the controller feeds it what the store returned and acts
on the verdict. Rules:

1. The devices of a rollout are the registered, non-revoked devices of its
   hardware id (``pending`` ones count: they poll the same document).
2. A device's wave is ``tufota_core.wave_index`` over the rollout's waves, the
   very function devices evaluate, so the tracker expects exactly the devices
   that will act. Devices in no wave are "not targeted".
3. Each device is in exactly one outcome, first match wins:
   ``succeeded`` (its installed version is the rollout version or a newer
   one: a device that moved on to a later release still counts for the
   rollouts it went through), ``failed`` / ``rolled_back`` (its last counted
   failure was for this version or rollout and came after the latest retry
   generation; only success clears it), ``downloading`` (downloading,
   downloaded), ``installed`` (installing, rebooting, verifying), else
   ``waiting`` (this includes a failed device the rollout is offering the
   release again). ``checked_in`` counts devices seen since the rollout
   started. Failures whose code is in ``staging._model.NOT_COUNTED_CODES``
   (verification and transport failures) are never a device's failure.
4. The gate looks at the waves up to the current one together (waves are
   cumulative). ``failed`` and ``rolled_back`` devices there are *final*:
   they count against the failure threshold and are no longer "still to
   succeed".

   * it *fails* when failures since the rollout last became active reach
     ``failure_threshold`` of the eligible devices (and at least one failed);
   * it *waits for devices to register* while no wave holds an eligible
     device at all (an empty fleet never completes a rollout);
   * it *waits for a retry* while final failures exist and the rollout has
     retries left (``retry_failed``): the next retry generation is due
     ``retry_backoff_seconds`` x 2^generation after the latest failure;
   * it *opens* when succeeded >= ``success_threshold`` x (eligible - final
     failures), at least ``min_devices`` succeeded (all of those when fewer
     are left) and at least one, and the current wave has been open
     ``soak_seconds``. With 8 devices, one rolled back and a 95% threshold the
     last wave completes at 7/8 (7 >= 0.95 x 7), unless the rollback
     already paused it at the failure threshold;
   * a current wave that holds no eligible devices of its own (while earlier
     waves do) opens at once, without soak. Failing wins over opening.

   Devices whose clock disagrees with the server's are counted and named in
   the gate's text, so a rollout never waits for them silently.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from staging._model import DeviceRecord, RolloutOptions, RolloutRecord
from staging._patch import EXPOSURES, ReleaseCatalog, exposure_of
from tufota_core import InputError, Version, format_time, wave_index

OUTCOMES = ("succeeded", "failed", "rolled_back", "downloading", "installed", "waiting")
_DOWNLOADING = ("downloading", "downloaded")
_INSTALLING = ("installing", "rebooting", "verifying")
_EPSILON = 1e-9
MANUAL_COMPLETION = "completed by hand"
"""How the reason of a rollout an operator completed begins (``RolloutController.complete``)."""


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else format_time(moment)


def _at_or_above(installed: str | None, version: str) -> bool:
    if installed is None:
        return False
    if installed == version:
        return True
    try:
        return Version.parse(installed) > Version.parse(version)
    except InputError:
        return False


def classify(rollout: RolloutRecord, device: DeviceRecord) -> str:
    """The device's outcome for this rollout: one of ``OUTCOMES`` (rule 3).

    The one classification every surface uses (gates, dashboard, alerts, CLI).
    """
    if _at_or_above(device.installed_version, rollout.version):
        return "succeeded"
    if (
        device.failed_state is not None
        and (
            device.failed_version == rollout.version
            or device.failed_rollout_id == rollout.rollout_id
        )
        and (
            rollout.retried_at is None
            or (device.failed_at is not None and device.failed_at >= rollout.retried_at)
        )
    ):
        return device.failed_state
    working = device.target_version == rollout.version or device.rollout_id == rollout.rollout_id
    if working and device.state in _DOWNLOADING:
        return "downloading"
    if working and device.state in _INSTALLING:
        return "installed"
    return "waiting"


@dataclass(frozen=True)
class WaveStatus:
    """Counts of one wave (or of the whole rollout when ``name`` is ``total``)."""

    name: str
    eligible: int = 0
    checked_in: int = 0
    downloading: int = 0
    installed: int = 0
    succeeded: int = 0
    failed: int = 0
    rolled_back: int = 0
    waiting: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "eligible": self.eligible,
            "checked_in": self.checked_in,
            "downloading": self.downloading,
            "installed": self.installed,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "rolled_back": self.rolled_back,
            "waiting": self.waiting,
        }


@dataclass(frozen=True)
class Gate:
    """The verdict on a rollout: open the next step, pause it, or wait (and for what)."""

    ready: bool
    failing: bool
    text: str


@dataclass(frozen=True)
class RolloutStatus:
    """Where a rollout stands, per wave and overall; JSON-able for CLI and dashboard."""

    rollout_id: str
    hardware_id: str
    version: str
    target_path: str
    state: str
    current_wave: int
    reason: str
    options: RolloutOptions
    created_at: datetime
    updated_at: datetime
    wave_started_at: datetime
    published: bool
    waves: tuple[WaveStatus, ...]
    total: WaveStatus
    not_targeted: int
    gate: str
    stalls: Mapping[str, int] = field(default_factory=dict)
    wave_opened_at: tuple[datetime, ...] = ()
    security_events: int = 0
    clock_skewed: int = 0
    retry_generation: int = 0
    bytes_fetched: int = 0
    bytes_saved: int = 0
    delta_downloads: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "hardware_id": self.hardware_id,
            "version": self.version,
            "target_path": self.target_path,
            "state": self.state,
            "current_wave": self.current_wave,
            "current_wave_name": self.waves[self.current_wave].name,
            "reason": self.reason,
            "options": self.options.to_json(),
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
            "wave_started_at": format_time(self.wave_started_at),
            "published": self.published,
            "waves": [w.to_json() for w in self.waves],
            "total": self.total.to_json(),
            "not_targeted": self.not_targeted,
            "gate": self.gate,
            "stalls": dict(self.stalls),
            "maintenance_window": self.options.maintenance_window,
            "wave_opened_at": [format_time(t) for t in self.wave_opened_at],
            "security_events": self.security_events,
            "clock_skewed": self.clock_skewed,
            "retry_generation": self.retry_generation,
            "retry_failed": self.options.retry_failed,
            "bytes_fetched": self.bytes_fetched,
            "bytes_saved": self.bytes_saved,
            "delta_downloads": self.delta_downloads,
        }


@dataclass(frozen=True)
class RolloutCounts:
    """What the gate needs, counted by the store (SQL) or by ``count_devices`` (Python).

    Attributes:
        waves: per-wave counts, in wave order.
        recent_failures: per wave, devices whose failure for this rollout
            happened at or after ``failures_since``.
        not_targeted: devices of the hardware id in no wave.
        last_failure: the latest final failure in the open waves (for retry backoff).
        skewed: per wave, devices not yet succeeded whose clock is off by
            more than ``StagingConfig.clock_skew_seconds``.
        security_events: verification failures devices reported for this rollout.
        bytes_fetched: bytes devices received for this rollout's image (delta or full).
        bytes_saved: image bytes they did not have to fetch, thanks to deltas.
        delta_downloads: downloads made by delta.
    """

    waves: tuple[WaveStatus, ...]
    recent_failures: tuple[int, ...]
    not_targeted: int
    last_failure: datetime | None = None
    skewed: tuple[int, ...] = ()
    security_events: int = 0
    bytes_fetched: int = 0
    bytes_saved: int = 0
    delta_downloads: int = 0


def _count(
    name: str, rollout: RolloutRecord, devices: Iterable[DeviceRecord], skew_seconds: float
) -> tuple[WaveStatus, int, datetime | None, int]:
    outcomes: Counter[str] = Counter()
    eligible = checked_in = recent = skewed = 0
    last_failure: datetime | None = None
    for device in devices:
        eligible += 1
        if device.last_seen is not None and device.last_seen >= rollout.created_at:
            checked_in += 1
        outcome = classify(rollout, device)
        outcomes[outcome] += 1
        if outcome in ("failed", "rolled_back") and device.failed_at is not None:
            if device.failed_at >= rollout.failures_since:
                recent += 1
            if last_failure is None or device.failed_at > last_failure:
                last_failure = device.failed_at
        if outcome != "succeeded" and (device.clock_skew or 0) > skew_seconds:
            skewed += 1
    status = WaveStatus(name, eligible, checked_in, **{o: outcomes[o] for o in OUTCOMES})
    return status, recent, last_failure, skewed


def count_devices(
    rollout: RolloutRecord, devices: Iterable[DeviceRecord], *, skew_seconds: float = 300.0
) -> RolloutCounts:
    """Count the rollout's devices per wave in Python (module rules 1-3).

    Devices of other hardware ids and revoked ones are skipped.
    """
    waves = list(rollout.waves)
    members: list[list[DeviceRecord]] = [[] for _ in waves]
    not_targeted = 0
    for device in devices:
        if device.hardware_id != rollout.hardware_id or device.status == "revoked":
            continue
        index = wave_index(rollout.rollout_id, waves, device.device_id, device.tags)
        if index is None:
            not_targeted += 1
        else:
            members[index].append(device)
    counted = [
        _count(w.name, rollout, m, skew_seconds) for w, m in zip(waves, members, strict=True)
    ]
    failures = [c[2] for c in counted[: rollout.current_wave + 1] if c[2] is not None]
    return RolloutCounts(
        waves=tuple(c[0] for c in counted),
        recent_failures=tuple(c[1] for c in counted),
        not_targeted=not_targeted,
        last_failure=max(failures) if failures else None,
        skewed=tuple(c[3] for c in counted),
    )


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def _sum(name: str, waves: Iterable[WaveStatus]) -> WaveStatus:
    total: Counter[str] = Counter()
    for wave in waves:
        for key, value in wave.to_json().items():
            if key != "name":
                total[key] += value
    return WaveStatus(name, **total)


def evaluate(
    rollout: RolloutRecord, devices: Iterable[DeviceRecord], now: datetime
) -> tuple[RolloutStatus, Gate]:
    """Count the rollout's devices per wave and judge its gate (module rules 1-4).

    Args:
        rollout: the rollout.
        devices: devices to consider; other hardware ids and revoked ones are skipped.
        now: the current time, for soak.
    """
    return judge(rollout, count_devices(rollout, devices), now)


def judge(
    rollout: RolloutRecord, counts: RolloutCounts, now: datetime
) -> tuple[RolloutStatus, Gate]:
    """Judge the gate from counts (module rule 4) and build the status."""
    per_wave = counts.waves
    total = _sum("total", per_wave)
    gate = _gate(rollout, counts, now)
    status = RolloutStatus(
        rollout_id=rollout.rollout_id,
        hardware_id=rollout.hardware_id,
        version=rollout.version,
        target_path=rollout.target_path,
        state=rollout.state,
        current_wave=rollout.current_wave,
        reason=rollout.reason,
        options=rollout.options,
        created_at=rollout.created_at,
        updated_at=rollout.updated_at,
        wave_started_at=rollout.wave_started_at,
        published=rollout.published_revision >= rollout.revision,
        waves=per_wave,
        total=total,
        not_targeted=counts.not_targeted,
        gate=gate.text,
        wave_opened_at=rollout.wave_opened_at,
        security_events=counts.security_events,
        clock_skewed=sum(counts.skewed),
        retry_generation=rollout.retry_generation,
        bytes_fetched=counts.bytes_fetched,
        bytes_saved=counts.bytes_saved,
        delta_downloads=counts.delta_downloads,
    )
    return status, gate


def retry_due(rollout: RolloutRecord, counts: RolloutCounts) -> datetime | None:
    """When the next retry generation is due, or None when none is (rule 4)."""
    opts = rollout.options
    if rollout.retry_generation >= opts.retry_failed or counts.last_failure is None:
        return None
    current = rollout.current_wave
    final = sum(w.failed + w.rolled_back for w in counts.waves[: current + 1])
    if not final:
        return None
    delay = opts.retry_backoff_seconds * 2**rollout.retry_generation
    return counts.last_failure + timedelta(seconds=delay)


def _gate(rollout: RolloutRecord, counts: RolloutCounts, now: datetime) -> Gate:
    per_wave = counts.waves
    current = rollout.current_wave
    wave = rollout.waves[current]
    if rollout.state == "completed":
        manual = rollout.reason.startswith(MANUAL_COMPLETION)
        return Gate(
            False, False, rollout.reason if manual else "completed: every wave met its gate"
        )
    if rollout.state in ("paused", "aborted"):
        return Gate(False, False, f"{rollout.state}: {rollout.reason or 'no reason given'}")

    opts = rollout.options
    eligible = sum(per_wave[i].eligible for i in range(current + 1))
    succeeded = sum(per_wave[i].succeeded for i in range(current + 1))
    final = sum(per_wave[i].failed + per_wave[i].rolled_back for i in range(current + 1))
    recent_failures = sum(counts.recent_failures[: current + 1])
    skewed = sum(counts.skewed[: current + 1])
    last = current == len(rollout.waves) - 1
    step = "completion" if last else f"wave '{rollout.waves[current + 1].name}'"
    where = f"wave {current + 1}/{len(rollout.waves)} '{wave.name}'"
    if recent_failures and recent_failures >= opts.failure_threshold * eligible - _EPSILON:
        return Gate(
            False,
            True,
            f"{recent_failures} of {eligible} devices in the open waves failed or rolled back "
            f"({_pct(recent_failures, eligible)}, failure threshold "
            f"{opts.failure_threshold * 100:g}%)",
        )
    if not any(w.eligible for w in per_wave):
        outside = (
            f"; {counts.not_targeted} registered devices are in no wave"
            if counts.not_targeted
            else ""
        )
        return Gate(
            False,
            False,
            f"{where}: waiting for devices to register (no eligible device in any wave{outside})",
        )
    if per_wave[current].eligible == 0:
        return Gate(True, False, f"{where} holds no devices; {step} is due")

    remaining = eligible - final
    needed = max(
        math.ceil(opts.success_threshold * remaining - _EPSILON),
        min(opts.min_devices, remaining),
        1,
    )
    waits: list[str] = []
    due = retry_due(rollout, counts)
    if due is not None:
        waits.append(
            f"retry {rollout.retry_generation + 1}/{opts.retry_failed} of {final} failed "
            f"device{'s' if final != 1 else ''} at {format_time(due)}"
        )
    elif remaining == 0:
        waits.append(
            f"a success, but all {eligible} devices failed "
            f"(abort, or 'rollout complete ID --reason ...')"
        )
    elif succeeded < needed:
        failed_note = f"; {final} failed, not counted" if final else ""
        waits.append(
            f"{needed - succeeded} more success{'es' if needed - succeeded != 1 else ''} "
            f"({succeeded}/{remaining} = "
            f"{_pct(succeeded, remaining)}, needs {needed}{failed_note})"
        )
    soak_end = rollout.wave_started_at + timedelta(seconds=opts.soak_seconds)
    if now < soak_end:
        left = int((soak_end - now).total_seconds())
        waits.append(f"soak until {format_time(soak_end)} ({left} s left)")
    skew_note = ""
    if skewed:
        skew_note = (
            f"; {skewed} device{'s report' if skewed != 1 else ' reports'} a clock that disagrees "
            "with the server's (device clock skew alerts): they may refuse the update"
        )
    if waits:
        return Gate(False, False, f"{where}: {step} waits for {' and '.join(waits)}{skew_note}")
    failed_note = f" ({final} failed, not counted)" if final else ""
    return Gate(
        True,
        False,
        f"{where}: {succeeded}/{remaining} succeeded{failed_note}; gate met, {step} is due"
        f"{skew_note}",
    )


@dataclass(frozen=True)
class DeviceSummary:
    """One device's patch status.

    ``up_to_date`` is None when the latest version of its hardware is not
    known or the device has not said what it runs. ``missing_fixes`` lists
    the CVE ids it lacks, worst first, and ``max_cvss`` their highest score;
    ``exposure`` is the bucket of ``staging._patch`` rule 3.
    """

    device_id: str
    hardware_id: str
    status: str
    installed_version: str | None
    state: str | None
    last_seen: datetime | None
    rollout_id: str | None
    error_code: str | None
    up_to_date: bool | None
    latest_version: str | None = None
    missing_fixes: tuple[str, ...] = ()
    max_cvss: float | None = None
    exposure: str = "unknown"
    tags: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "hardware_id": self.hardware_id,
            "status": self.status,
            "installed_version": self.installed_version,
            "state": self.state,
            "last_seen": _time(self.last_seen),
            "rollout_id": self.rollout_id,
            "error_code": self.error_code,
            "up_to_date": self.up_to_date,
            "latest_version": self.latest_version,
            "missing_fixes": list(self.missing_fixes),
            "max_cvss": self.max_cvss,
            "exposure": self.exposure,
            "tags": list(self.tags),
        }


@dataclass(frozen=True)
class FleetStatus:
    """Versions, states and patch status across the fleet.

    Summary counts skip revoked devices; ``devices`` lists every device.
    ``unknown`` stands for a missing version or a device that never reported.
    ``by_exposure`` counts devices per exposure bucket; ``by_cve`` counts,
    per CVE id still missing somewhere, the devices lacking it (with its CVSS).
    """

    hardware_id: str | None
    devices: tuple[DeviceSummary, ...]
    by_version: Mapping[str, int] = field(default_factory=dict)
    by_state: Mapping[str, int] = field(default_factory=dict)
    by_status: Mapping[str, int] = field(default_factory=dict)
    up_to_date: int = 0
    outdated: int = 0
    unknown: int = 0
    by_exposure: Mapping[str, int] = field(default_factory=dict)
    by_cve: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    latest: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "hardware_id": self.hardware_id,
            "devices": [d.to_json() for d in self.devices],
            "by_version": dict(self.by_version),
            "by_state": dict(self.by_state),
            "by_status": dict(self.by_status),
            "up_to_date": self.up_to_date,
            "outdated": self.outdated,
            "unknown": self.unknown,
            "by_exposure": dict(self.by_exposure),
            "by_cve": {k: dict(v) for k, v in self.by_cve.items()},
            "latest": dict(self.latest),
        }


def _is_current(installed: str | None, latest: str | None) -> bool | None:
    if installed is None or latest is None:
        return None
    return Version.parse(installed) >= Version.parse(latest)


def fleet(
    hardware_id: str | None,
    devices: Iterable[DeviceRecord],
    latest_versions: Mapping[str, str] | None = None,
    catalog: ReleaseCatalog | None = None,
) -> FleetStatus:
    """Summarise devices' versions, states and patch status.

    Args:
        hardware_id: what the summary is about (None: every hardware id).
        devices: the devices.
        latest_versions: newest version per hardware id (taken from
            ``catalog`` when not given).
        catalog: signed releases, for missing fixes and exposure.
    """
    latest = dict(latest_versions or {})
    if catalog is not None:
        for hw in catalog.releases:
            newest = catalog.latest(hw)
            if newest is not None:
                latest.setdefault(hw, newest.info.version)
    summaries: list[DeviceSummary] = []
    by_version: Counter[str] = Counter()
    by_state: Counter[str] = Counter()
    by_status: Counter[str] = Counter()
    by_exposure: Counter[str] = Counter(dict.fromkeys(EXPOSURES, 0))
    by_cve: dict[str, dict[str, Any]] = {}
    verdicts: Counter[bool | None] = Counter()
    for d in devices:
        current = _is_current(d.installed_version, latest.get(d.hardware_id))
        missing = None if catalog is None else catalog.missing(d.hardware_id, d.installed_version)
        scores = [f.cvss for f in missing or () if f.cvss is not None]
        worst = max(scores) if scores else None
        exposure = "unknown" if missing is None else exposure_of(worst, bool(missing))
        summaries.append(
            DeviceSummary(
                d.device_id,
                d.hardware_id,
                d.status,
                d.installed_version,
                d.state,
                d.last_seen,
                d.rollout_id,
                d.error_code,
                current,
                latest_version=latest.get(d.hardware_id),
                missing_fixes=tuple(f.cve for f in missing or ()),
                max_cvss=worst,
                exposure=exposure,
                tags=d.tags,
            )
        )
        by_status[d.status] += 1
        if d.status == "revoked":
            continue
        by_version[d.installed_version or "unknown"] += 1
        by_state[d.state or "unknown"] += 1
        verdicts[current] += 1
        by_exposure[exposure] += 1
        for fix in missing or ():
            entry = by_cve.setdefault(
                fix.cve, {"cvss": fix.cvss, "fixed_in": fix.fixed_in, "devices": 0}
            )
            entry["devices"] += 1
    return FleetStatus(
        hardware_id=hardware_id,
        devices=tuple(summaries),
        by_version=dict(sorted(by_version.items())),
        by_state=dict(sorted(by_state.items())),
        by_status=dict(sorted(by_status.items())),
        up_to_date=verdicts[True],
        outdated=verdicts[False],
        unknown=verdicts[None],
        by_exposure=dict(by_exposure),
        by_cve=dict(sorted(by_cve.items(), key=lambda kv: (-(kv[1]["cvss"] or 0.0), kv[0]))),
        latest=dict(sorted(latest.items())),
    )
