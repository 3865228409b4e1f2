"""The operator dashboard: a static single page at ``/dashboard`` and the JSON it polls.

Routes:

* ``GET /dashboard`` and ``GET /dashboard/static/{file}``: the page (HTML, JS,
  CSS from ``repo_server/static``). They hold no data and need no token: a
  browser cannot send a bearer token with a navigation, so the page asks for
  one (kept in ``sessionStorage``) when the API answers 401.
* ``GET /api/v1/dashboard``: one consistent snapshot for the overview (read).
* ``GET /api/v1/dashboard/rollouts/{rollout_id}``: one rollout with its failed
  and stalled devices and its history (read); 404 for an unknown id.

Invariants:

* Read-only: nothing here changes the tracker or the repository. The page's
  pause/resume/abort buttons call the rollout routes
  (``POST /api/v1/rollouts/{id}/pause|resume|abort``), which need the
  ``operate`` permission; the snapshot says whether the caller has it, but the
  server, not the page, enforces it.
* Every device-controlled string (ids, error messages, reasons) reaches the
  browser as JSON data and is rendered with ``textContent`` only; the page is
  served with a strict Content-Security-Policy (no inline script or style).
* Work per poll is bounded: full views for at most ``max_rollouts`` rollouts
  (live ones first), at most ``max_device_rows`` rows per device table, and
  one history read per device only the first time it reaches a version (the
  first-adoption time never changes, so it is cached).
* Rollout status JSON from ``staging`` is passed through whole, so fields the
  tracker adds later reach the page without a change here. Stalled devices
  are the tracker's own verdict (``staging.find_stall``), the one that raises
  stall alerts, so the page and the alerts agree.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from repo_server._auth import Principal
from repo_server._context import ServerContext
from repo_server._errors import ApiError
from repo_server._publisher import RepoState
from repo_server._releases import release_catalog
from staging import DeviceRecord, Event, RolloutRecord, classify, find_stall
from tufota_core import (
    ROLLOUTS_ROLE,
    FirmwareInfo,
    InputError,
    TufotaError,
    Version,
    format_time,
    safe_text,
    utcnow,
    wave_index,
)

logger = logging.getLogger(__name__)

# The roles the server re-signs by itself; the rest are signed offline.
ONLINE_ROLES = ("timestamp", "snapshot", ROLLOUTS_ROLE)
FUNNEL = (
    "eligible",
    "checked_in",
    "downloading",
    "installed",
    "succeeded",
    "failed",
    "rolled_back",
    "stalled",
)
"""The per-wave funnel the page draws, in order (``succeeded`` is shown as healthy)."""

_STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class DashboardConfig:
    """Limits and thresholds of the dashboard and of the metrics built on it.

    Attributes:
        poll_seconds: how often the page asks for a new snapshot.
        max_rollouts: rollouts shown in full on the overview (live ones first).
        max_device_rows: most rows of any device table.
        max_chart_points: most points of an adoption curve (evenly thinned).
    """

    poll_seconds: float = 3.0
    max_rollouts: int = 10
    max_device_rows: int = 200
    max_chart_points: int = 400

    def __post_init__(self) -> None:
        if self.poll_seconds <= 0:
            raise InputError("poll_seconds must be positive")
        if min(self.max_rollouts, self.max_device_rows, self.max_chart_points) < 1:
            raise InputError("dashboard limits must be >= 1")


# -- what a device is doing for a rollout ------------------------------------------------


@dataclass(frozen=True)
class DeviceFinding:
    """A device of a rollout that needs an operator's eye: failed, rolled back or stalled."""

    device_id: str
    wave: str
    kind: str  # failed | rolled_back | stalled
    state: str | None
    reason: str
    since: datetime | None
    last_seen: datetime | None
    version: str | None

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "wave": self.wave,
            "kind": self.kind,
            "state": self.state,
            "reason": self.reason,
            "since": None if self.since is None else format_time(self.since),
            "seconds_in_state": (
                None if self.since is None else max(0, int((now - self.since).total_seconds()))
            ),
            "last_seen": None if self.last_seen is None else format_time(self.last_seen),
            "installed_version": self.version,
        }


def wave_states(rollout: RolloutRecord) -> list[str]:
    """Each wave's state: ``done``, ``open`` (the current wave of a live rollout) or ``pending``."""
    states = []
    for index in range(len(rollout.waves)):
        if index < rollout.current_wave or rollout.state == "completed":
            states.append("done")
        elif index == rollout.current_wave:
            states.append("open")
        else:
            states.append("pending")
    return states


def findings(
    rollout: RolloutRecord, devices: Sequence[DeviceRecord], now: datetime
) -> list[DeviceFinding]:
    """Failed, rolled-back and stalled devices of the waves opened so far.

    Stalls are the tracker's own verdict (``staging.find_stall``: download
    stalled, reboot overdue, never checked in, silent), the same that raises
    stall alerts; they are looked for only while the rollout is live.
    """
    waves = list(rollout.waves)
    found: list[DeviceFinding] = []
    for device in devices:
        if device.hardware_id != rollout.hardware_id or device.status == "revoked":
            continue
        index = wave_index(rollout.rollout_id, waves, device.device_id, device.tags)
        if index is None or index > rollout.current_wave:
            continue
        wave = waves[index].name
        kind = classify(rollout, device)
        if kind in ("failed", "rolled_back"):
            # The kept failure's own code and message (a later heartbeat's do not explain it).
            code = device.failed_code or device.error_code
            message = device.failed_message if device.failed_code else device.error_message
            reason = code or kind.replace("_", " ")
            if message:
                # Device-supplied: bidi and control characters shown, not obeyed.
                reason = f"{reason}: {safe_text(message, 1024)}"
            since = device.failed_at
        elif rollout.live and kind != "succeeded":
            stall = find_stall(rollout, index, device, now)
            if stall is None:
                continue
            kind, since = "stalled", stall.since
            reason = f"{stall.kind.replace('_', ' ')}: {stall.text}"
        else:
            continue
        found.append(
            DeviceFinding(
                device.device_id,
                wave,
                kind,
                device.state,
                reason,
                since,
                device.last_seen,
                device.installed_version,
            )
        )
    order = {"failed": 0, "rolled_back": 1, "stalled": 2}
    found.sort(key=lambda f: (order[f.kind], f.since or now, f.device_id))
    return found


# -- the repository side: releases, patch status, role validity ------------------------


def release_catalogue(state: RepoState) -> dict[str, list[FirmwareInfo]]:
    """Every signed release's firmware facts per hardware id, oldest version first."""
    catalog = release_catalog(state)
    return {hw: [r.info for r in releases] for hw, releases in sorted(catalog.releases.items())}


def _newer(installed: str, infos: Sequence[FirmwareInfo]) -> list[FirmwareInfo]:
    try:
        current = Version.parse(installed)
    except InputError:
        return list(infos)
    return [i for i in infos if Version.parse(i.version) > current]


def patch_status(
    devices: Iterable[DeviceRecord], catalogue: Mapping[str, Sequence[FirmwareInfo]], limit: int
) -> dict[str, Any]:
    """Devices exposed to CVEs that a newer signed release fixes, highest CVSS first.

    A device is exposed to CVE c when a release of its hardware newer than its
    installed version lists c in ``fixes``; the CVE's score is the highest
    CVSS among the releases that fix it. Revoked devices are skipped; devices
    that never said what they run are counted as ``unknown``.
    """
    cves: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    unknown = 0
    for device in devices:
        if device.status == "revoked":
            continue
        infos = catalogue.get(device.hardware_id, ())
        if device.installed_version is None:
            unknown += 1
            continue
        missing: dict[str, tuple[float | None, str]] = {}
        for info in _newer(device.installed_version, infos):
            for cve in info.fixes:
                score, fixed_in = missing.get(cve, (None, info.version))
                best = max((s for s in (score, info.cvss) if s is not None), default=None)
                missing[cve] = (best, fixed_in)
        if not missing:
            continue
        scores = [s for s, _ in missing.values() if s is not None]
        top = max(scores) if scores else None
        rows.append(
            {
                "device_id": device.device_id,
                "hardware_id": device.hardware_id,
                "installed_version": device.installed_version,
                "latest_version": infos[-1].version if infos else None,
                "cves": sorted(missing, key=lambda c: (-(missing[c][0] or 0.0), c)),
                "max_cvss": top,
                "last_seen": None if device.last_seen is None else format_time(device.last_seen),
            }
        )
        for cve, (score, fixed_in) in missing.items():
            entry = cves.setdefault(cve, {"cve": cve, "cvss": score, "fixed_in": {}, "devices": 0})
            entry["devices"] += 1
            entry["fixed_in"][device.hardware_id] = fixed_in
            if score is not None and (entry["cvss"] is None or score > entry["cvss"]):
                entry["cvss"] = score
    rows.sort(key=lambda r: (-(r["max_cvss"] or 0.0), r["device_id"]))
    cve_list = sorted(cves.values(), key=lambda c: (-(c["cvss"] or 0.0), c["cve"]))
    return {
        "exposed_devices": len(rows),
        "unknown_devices": unknown,
        "critical_devices": sum(1 for r in rows if (r["max_cvss"] or 0.0) >= 7.0),
        "cves": cve_list,
        "devices": rows[:limit],
        "truncated": len(rows) > limit,
    }


def role_health(ctx: ServerContext, now: datetime) -> list[dict[str, Any]]:
    """Each published role's remaining validity, with a level: ok, warning or critical.

    Online roles are re-signed by the server at half their validity period, so
    one below 40% means the refresh is not happening (warning) and below 10%
    that devices will soon refuse the repository (critical). Offline roles
    warn 30 days and turn critical 7 days before they expire.
    """
    periods = {
        "timestamp": ctx.publisher.expiry.timestamp,
        "snapshot": ctx.publisher.expiry.snapshot,
        ROLLOUTS_ROLE: ctx.publisher.expiry.rollouts,
    }
    result = []
    order = {name: i for i, name in enumerate((*ONLINE_ROLES, "root", "targets"))}
    expiries = ctx.publisher.expiries()
    for role in sorted(expiries, key=lambda r: (order.get(r, len(order)), r)):
        expires = expiries[role]
        left = (expires - now).total_seconds()
        online = role in ONLINE_ROLES
        period = periods.get(role)
        if online and period is not None:
            fraction = left / period.total_seconds()
            level = "critical" if fraction < 0.10 else "warning" if fraction < 0.40 else "ok"
        else:
            level = "critical" if left < 7 * 86400 else "warning" if left < 30 * 86400 else "ok"
        result.append(
            {
                "role": role,
                "online": online,
                "expires": format_time(expires),
                "seconds_left": int(left),
                "period_seconds": None if period is None else int(period.total_seconds()),
                "level": level,
            }
        )
    return result


# -- the snapshot builder ------------------------------------------------------------------


class DashboardData:
    """Builds the JSON the page shows from the tracker and the published repository.

    Thread-safe: FastAPI runs the routes in a thread pool; the adoption cache
    has its own lock.
    """

    def __init__(self, ctx: ServerContext, config: DashboardConfig | None = None) -> None:
        self.ctx = ctx
        self.config = config or DashboardConfig()
        self._adopted: dict[tuple[str, str], datetime] = {}
        self._lock = threading.Lock()

    # -- pieces

    def _adopted_at(self, rollout: RolloutRecord, device: DeviceRecord) -> datetime:
        """When ``device`` first ran ``rollout.version``, never before the rollout started."""
        key = (device.device_id, rollout.version)
        with self._lock:
            cached = self._adopted.get(key)
        if cached is None:
            try:
                history = self.ctx.store.device_history(device.device_id)
            except TufotaError:
                history = []
            cached = next(
                (e.at for e in history if e.version == rollout.version),
                device.last_seen or rollout.created_at,
            )
            with self._lock:
                self._adopted[key] = cached
        return max(cached, rollout.created_at)

    def adoption(
        self, rollout: RolloutRecord, devices: Sequence[DeviceRecord], events: Sequence[Event]
    ) -> dict[str, Any]:
        """The adoption curve: devices on the new version (and failed) over time."""
        targeted = []
        waves = list(rollout.waves)
        for device in devices:
            if device.hardware_id != rollout.hardware_id or device.status == "revoked":
                continue
            if wave_index(rollout.rollout_id, waves, device.device_id, device.tags) is not None:
                targeted.append(device)
        changes: list[tuple[datetime, int, int]] = []
        for device in targeted:
            kind = classify(rollout, device)
            if kind == "succeeded":
                changes.append((self._adopted_at(rollout, device), 1, 0))
            elif kind in ("failed", "rolled_back") and device.failed_at is not None:
                changes.append((max(device.failed_at, rollout.created_at), 0, 1))
        changes.sort()
        points: list[list[Any]] = [[format_time(rollout.created_at), 0, 0]]
        healthy = failed = 0
        for at, ok, bad in changes:
            healthy += ok
            failed += bad
            stamp = format_time(at)
            if points[-1][0] == stamp:
                points[-1] = [stamp, healthy, failed]
            else:
                points.append([stamp, healthy, failed])
        limit = self.config.max_chart_points
        if len(points) > limit:
            step = len(points) / (limit - 1)
            points = [points[int(i * step)] for i in range(limit - 1)] + [points[-1]]
        return {
            "targeted": len(targeted),
            "points": points,
            "marks": [
                {"at": format_time(e.at), "kind": e.kind, "wave": e.wave, "reason": e.reason}
                for e in events
                if e.kind != "started"
            ],
        }

    def funnel(
        self, rollout: RolloutRecord, now: datetime
    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[DeviceFinding], list[Event]]:
        """Staging's status JSON, the funnel rows (each wave, then ``total``), findings, history.

        A wave's ``stalled`` count comes from the tracker when its status has
        one, else from ``findings``.
        """
        status = self.ctx.controller.status(rollout.rollout_id).to_json()
        devices = self.ctx.store.list_devices(rollout.hardware_id)
        events = self.ctx.store.rollout_history(rollout.rollout_id)
        found = findings(rollout, devices, now)
        stalled_by_wave = Counter(f.wave for f in found if f.kind == "stalled")
        rows = []
        for wave in [*status["waves"], status["total"]]:
            row: dict[str, Any] = {k: wave.get(k, 0) for k in (*FUNNEL, "waiting")}
            row.update({k: v for k, v in wave.items() if isinstance(v, int)})
            if not isinstance(wave.get("stalled"), int):
                row["stalled"] = (
                    sum(stalled_by_wave.values())
                    if wave is status["total"]
                    else stalled_by_wave[wave["name"]]
                )
            row["name"] = wave.get("name", "")
            rows.append(row)
        return status, rows, found, events

    def rollout_view(self, rollout: RolloutRecord, now: datetime, detail: bool) -> dict[str, Any]:
        """One rollout: staging's status, funnel, wave states, adoption, failed/stalled devices."""
        status, rows, found, events = self.funnel(rollout, now)
        devices = self.ctx.store.list_devices(rollout.hardware_id)
        view: dict[str, Any] = dict(status)
        view["funnel"] = rows
        view["wave_states"] = wave_states(rollout)
        view["failed_count"] = rows[-1]["failed"] + rows[-1]["rolled_back"]
        view["stalled_count"] = rows[-1]["stalled"]
        view["adoption"] = self.adoption(rollout, devices, events)
        limit = self.config.max_device_rows
        view["findings"] = [f.to_json(now) for f in found[:limit]]
        view["findings_truncated"] = len(found) > limit
        if detail:
            view["history"] = [e.to_json() for e in events]
        return view

    def principal_json(self, principal: Principal) -> dict[str, Any]:
        return {
            "name": principal.name,
            "role": principal.role,
            "may_operate": principal.may("operate"),
        }

    def overview(self, principal: Principal) -> dict[str, Any]:
        """The whole dashboard in one snapshot."""
        now = utcnow()
        rollouts = self.ctx.store.list_rollouts()
        live = [r for r in rollouts if r.live]
        done = [r for r in rollouts if not r.live]
        shown = (live + done)[: self.config.max_rollouts]
        devices = self.ctx.store.list_devices()
        try:
            catalogue = release_catalogue(self.ctx.publisher.state())
            health = role_health(self.ctx, now)
            repo_error = None
        except TufotaError as e:
            logger.warning("dashboard cannot read the repository: %s", e)
            catalogue, health, repo_error = {}, [], str(e)
        versions: dict[str, Counter[str]] = defaultdict(Counter)
        states: Counter[str] = Counter()
        for device in devices:
            if device.status == "revoked":
                continue
            versions[device.hardware_id][device.installed_version or "unknown"] += 1
            states[device.state or "unknown"] += 1
        hardware = []
        for hw in sorted(set(versions) | set(catalogue)):
            infos = catalogue.get(hw, [])
            counts = versions.get(hw, Counter())
            hardware.append(
                {
                    "hardware_id": hw,
                    "latest_version": infos[-1].version if infos else None,
                    "releases": [i.version for i in infos],
                    "devices": sum(counts.values()),
                    "versions": dict(sorted(counts.items(), key=lambda kv: _version_key(kv[0]))),
                }
            )
        return {
            "time": format_time(now),
            "poll_seconds": self.config.poll_seconds,
            "principal": self.principal_json(principal),
            "rollouts": [self.rollout_view(r, now, detail=False) for r in shown],
            "rollout_list": [
                {
                    "rollout_id": r.rollout_id,
                    "hardware_id": r.hardware_id,
                    "version": r.version,
                    "state": r.state,
                    "updated_at": format_time(r.updated_at),
                }
                for r in rollouts
            ],
            "fleet": {
                "devices": sum(1 for d in devices if d.status != "revoked"),
                "by_status": dict(Counter(d.status for d in devices)),
                "by_state": dict(sorted(states.items())),
                "hardware": hardware,
            },
            "alerts": [
                a.to_json()
                for a in self.ctx.store.list_alerts(
                    open_only=True, limit=self.config.max_device_rows
                )
            ],
            "patch": patch_status(devices, catalogue, self.config.max_device_rows),
            "health": health,
            "repository_error": repo_error,
        }


def _version_key(text: str) -> tuple[int, Any]:
    try:
        return (0, Version.parse(text))
    except InputError:
        return (1, text)


# -- routes ------------------------------------------------------------------------------------


def _static(name: str) -> bytes:
    return (resources.files("repo_server") / "static" / name).read_bytes()


def build_router(ctx: ServerContext, config: DashboardConfig | None = None) -> APIRouter:
    """The dashboard page and its JSON API."""
    data = DashboardData(ctx, config)
    router = APIRouter()
    need_read = ctx.require("read")

    @router.get("/dashboard", include_in_schema=False)
    def page() -> Response:
        return Response(
            _static("index.html"), media_type="text/html; charset=utf-8", headers=_SECURITY_HEADERS
        )

    @router.get("/dashboard/", include_in_schema=False)
    def page_slash() -> RedirectResponse:
        return RedirectResponse("/dashboard", status_code=308)

    @router.get("/dashboard/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        media = _STATIC.get(name)
        if media is None:
            raise ApiError(404, "not_found", f"no dashboard file {name!r}")
        return Response(_static(name), media_type=media, headers=_SECURITY_HEADERS)

    @router.get("/api/v1/dashboard", tags=["dashboard"])
    def overview(request: Request) -> dict[str, Any]:
        """Everything the dashboard shows, in one snapshot (viewer)."""
        return data.overview(need_read(request))

    @router.get("/api/v1/dashboard/rollouts/{rollout_id}", tags=["dashboard"])
    def rollout(rollout_id: str, request: Request) -> dict[str, Any]:
        """One rollout with its failed and stalled devices and its history (viewer).

        404 when no rollout has this id.
        """
        principal = need_read(request)
        record = ctx.store.get_rollout(rollout_id)
        return {
            "time": format_time(utcnow()),
            "principal": data.principal_json(principal),
            "rollout": data.rollout_view(record, utcnow(), detail=True),
        }

    return router
