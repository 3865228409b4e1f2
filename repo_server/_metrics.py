"""Prometheus metrics at ``GET /metrics``: the tracker read at scrape time, plus ingest counters.

Families (all prefixed ``tufota_``):

=====================================  ==========================================================
``devices``                            registered devices by hardware_id, version, status
``device_states``                      non-revoked devices by hardware_id and last reported state
``rollout_state``                      1 for a rollout's state, 0 for the others (a state set)
``rollout_current_wave``               1-based index of the open wave
``rollout_waves``                      number of waves
``wave_state``                         1 for each wave's state (done, open, pending)
``rollout_eligible_devices``           devices of each wave (cumulative ``wave="total"``)
``rollout_devices``                    devices per rollout, wave and outcome (checked_in,
                                       downloading, installed, succeeded, failed, rolled_back,
                                       waiting, stalled)
``rollout_failed_devices``             failed or rolled back, per rollout
``rollout_stalled_devices``            stalled, per rollout
``rollout_fetched_bytes``              bytes devices fetched for the rollout's image, per rollout
``rollout_saved_bytes``                image bytes not fetched thanks to deltas, per rollout
``rollout_delta_downloads``            downloads made by delta, per rollout
``security_events``                    verification failures devices reported (tampered or
                                       invalid data refused), per hardware_id; never install
                                       failures
``patch_exposed_devices``              devices lacking a fix a newer signed release has
``patch_cve_exposed_devices``          per CVE, with its highest CVSS as a label
``role_expiry_seconds``                seconds until each published role expires (negative:
                                       expired), ``online`` says whether the server re-signs it
``reports_total``                      report requests by result: accepted, replayed, malformed,
                                       refused, error (counter)
``report_ingest_seconds``              time to answer a report (histogram)
``scrape_errors``                      1 for a section this scrape could not read
``replica_info``                       this server's replica name (label ``replica``)
``leader``                             1 when this replica leads (runs the controller)
``leader_info``                        the replica that leads, as it recorded itself
``controller_last_tick_timestamp_...`` when this replica last ran a controller tick
=====================================  ==========================================================

Invariants:

* Gauges are computed by a custom collector at scrape time from the tracker
  and the published repository, so they never drift from what the API shows.
* Each application has its own ``CollectorRegistry`` (nothing global), and a
  section that fails to read is reported through ``tufota_scrape_errors``
  instead of failing the whole scrape.
* Rollouts exported: the live ones and the newest finished one per hardware
  id, so the label set stays bounded as history grows.
* Report counters are fed by ``ReportIngestMiddleware`` from the HTTP status
  of ``POST /api/v1/devices/{id}/reports``; the route itself is untouched.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from repo_server._context import ServerContext
from repo_server._dashboard import (
    ONLINE_ROLES,
    DashboardData,
    patch_status,
    release_catalogue,
    wave_states,
)
from staging import RolloutRecord
from tufota_core import ROLLOUT_STATES, utcnow

logger = logging.getLogger(__name__)

REPORT_RESULTS = ("accepted", "replayed", "malformed", "refused", "error")
_REPORT_PATH = re.compile(r"^/api/v1/devices/[^/]+/reports$")
_OUTCOMES = (
    "checked_in",
    "downloading",
    "installed",
    "succeeded",
    "failed",
    "rolled_back",
    "waiting",
    "stalled",
)


def report_result(status: int) -> str:
    """The ``result`` label for a report answered with HTTP ``status``."""
    if status < 300:
        return "accepted"
    if status == 409:
        return "replayed"
    if status in (400, 413, 422):
        return "malformed"
    if status < 500:
        return "refused"
    return "error"


class ReportIngest:
    """Counters of report requests, in the application's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = PromCounter(
            "tufota_reports",
            "Device report requests by result",
            ["result"],
            registry=registry,
        )
        self.seconds = Histogram(
            "tufota_report_ingest_seconds",
            "Time to verify, apply and answer one device report",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        for result in REPORT_RESULTS:  # every series exists from the first scrape
            self.requests.labels(result)

    def observe(self, status: int, seconds: float) -> None:
        """Count one report answered with ``status`` after ``seconds``."""
        self.requests.labels(report_result(status)).inc()
        self.seconds.observe(seconds)


class ReportIngestMiddleware:
    """Pure ASGI middleware counting ``POST /api/v1/devices/{id}/reports`` by response status."""

    def __init__(self, app: ASGIApp, ingest: ReportIngest) -> None:
        self.app = app
        self.ingest = ingest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not _REPORT_PATH.match(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.ingest.observe(status, time.perf_counter() - started)


class _AppMetrics:
    def __init__(self, ctx: ServerContext) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.ingest = ReportIngest(self.registry)
        self.collector = TrackerCollector(DashboardData(ctx))
        self.registry.register(self.collector)


_BY_CONTEXT: dict[int, _AppMetrics] = {}
_BY_CONTEXT_LOCK = threading.Lock()


def _metrics_for(ctx: ServerContext) -> _AppMetrics:
    with _BY_CONTEXT_LOCK:
        found = _BY_CONTEXT.get(id(ctx))
        if found is None:
            found = _BY_CONTEXT[id(ctx)] = _AppMetrics(ctx)
            weakref.finalize(ctx, _BY_CONTEXT.pop, id(ctx), None)
        return found


def ingest_for(ctx: ServerContext) -> ReportIngest:
    """The report counters of the server built around ``ctx`` (one set per context)."""
    return _metrics_for(ctx).ingest


def registry_for(ctx: ServerContext) -> CollectorRegistry:
    """The Prometheus registry of the server built around ``ctx``."""
    return _metrics_for(ctx).registry


def _exported_rollouts(rollouts: Iterable[RolloutRecord]) -> list[RolloutRecord]:
    chosen: list[RolloutRecord] = []
    finished_seen: set[str] = set()
    for rollout in rollouts:  # newest first
        if rollout.live:
            chosen.append(rollout)
        elif rollout.hardware_id not in finished_seen:
            finished_seen.add(rollout.hardware_id)
            chosen.append(rollout)
    return chosen


class TrackerCollector(Collector):
    """Reads the tracker and the repository at each scrape (see the module table)."""

    def __init__(self, data: DashboardData) -> None:
        self.data = data
        self.ctx = data.ctx

    def collect(self) -> Iterator[Metric]:
        yield from self._replica()
        errors = GaugeMetricFamily(
            "tufota_scrape_errors", "1 for a section this scrape could not read", labels=["section"]
        )
        for section, build in (
            ("devices", self._devices),
            ("rollouts", self._rollouts),
            ("repository", self._repository),
        ):
            try:
                families = list(build())
            except Exception:
                logger.exception("metrics: cannot read %s", section)
                errors.add_metric([section], 1)
                continue
            errors.add_metric([section], 0)
            yield from families
        yield errors

    def _replica(self) -> Iterator[Metric]:
        """Which replica this is, whether it leads, who leads, and its last controller tick."""
        leadership = self.ctx.leadership
        info = GaugeMetricFamily(
            "tufota_replica_info", "This server among the replicas", labels=["replica"]
        )
        info.add_metric([leadership.replica], 1)
        yield info
        leading = GaugeMetricFamily(
            "tufota_leader", "1 when this replica leads (controller, online refresh)"
        )
        leading.add_metric([], 1 if leadership.leading else 0)
        yield leading
        leader = GaugeMetricFamily(
            "tufota_leader_info",
            "The replica that leads, as it recorded itself",
            labels=["replica"],
        )
        name = leadership.leader_name()
        if name is not None:
            leader.add_metric([name], 1)
        yield leader
        if self.ctx.last_tick is not None:
            tick = GaugeMetricFamily(
                "tufota_controller_last_tick_timestamp_seconds",
                "When this replica last ran a controller tick (leader only)",
            )
            tick.add_metric([], self.ctx.last_tick.timestamp())
            yield tick

    def _devices(self) -> Iterator[Metric]:
        devices = self.ctx.store.list_devices()
        by_version: Counter[tuple[str, str, str]] = Counter()
        by_state: Counter[tuple[str, str]] = Counter()
        for d in devices:
            by_version[(d.hardware_id, d.installed_version or "unknown", d.status)] += 1
            if d.status != "revoked":
                by_state[(d.hardware_id, d.state or "unknown")] += 1
        family = GaugeMetricFamily(
            "tufota_devices",
            "Registered devices by hardware line, installed version and registration status",
            labels=["hardware_id", "version", "status"],
        )
        for labels, count in sorted(by_version.items()):
            family.add_metric(list(labels), count)
        yield family
        family = GaugeMetricFamily(
            "tufota_device_states",
            "Non-revoked devices by hardware line and last reported state",
            labels=["hardware_id", "state"],
        )
        for (hardware_id, state), count in sorted(by_state.items()):
            family.add_metric([hardware_id, state], count)
        yield family

    def _rollouts(self) -> Iterator[Metric]:
        now = utcnow()
        label = ["rollout_id", "hardware_id", "version"]
        state = GaugeMetricFamily(
            "tufota_rollout_state", "1 for the rollout's state", labels=[*label, "state"]
        )
        current = GaugeMetricFamily(
            "tufota_rollout_current_wave", "1-based index of the open wave", labels=label
        )
        count = GaugeMetricFamily("tufota_rollout_waves", "Number of waves", labels=label)
        wave_state = GaugeMetricFamily(
            "tufota_wave_state", "1 for each wave's state", labels=["rollout_id", "wave", "state"]
        )
        eligible = GaugeMetricFamily(
            "tufota_rollout_eligible_devices",
            "Devices a wave targets (wave=total: the whole rollout)",
            labels=["rollout_id", "wave"],
        )
        per_outcome = GaugeMetricFamily(
            "tufota_rollout_devices",
            "Devices per rollout, wave and outcome",
            labels=["rollout_id", "wave", "outcome"],
        )
        failed = GaugeMetricFamily(
            "tufota_rollout_failed_devices", "Failed or rolled back devices", labels=label
        )
        stalled = GaugeMetricFamily(
            "tufota_rollout_stalled_devices", "Stalled devices of the open waves", labels=label
        )
        fetched = GaugeMetricFamily(
            "tufota_rollout_fetched_bytes",
            "Bytes devices reported fetching for the rollout's image (deltas and full images)",
            labels=label,
        )
        saved = GaugeMetricFamily(
            "tufota_rollout_saved_bytes",
            "Image bytes devices did not fetch thanks to deltas",
            labels=label,
        )
        by_delta = GaugeMetricFamily(
            "tufota_rollout_delta_downloads", "Downloads made by delta", labels=label
        )
        for rollout in _exported_rollouts(self.ctx.store.list_rollouts()):
            values = [rollout.rollout_id, rollout.hardware_id, rollout.version]
            for name in ROLLOUT_STATES:
                state.add_metric([*values, name], 1 if rollout.state == name else 0)
            current.add_metric(values, rollout.current_wave + 1)
            count.add_metric(values, len(rollout.waves))
            for wave, now_state in zip(rollout.waves, wave_states(rollout), strict=True):
                for name in ("done", "open", "pending"):
                    wave_state.add_metric(
                        [rollout.rollout_id, wave.name, name], 1 if name == now_state else 0
                    )
            status, rows, _found, _events = self.data.funnel(rollout, now)
            fetched.add_metric(values, status.get("bytes_fetched", 0))
            saved.add_metric(values, status.get("bytes_saved", 0))
            by_delta.add_metric(values, status.get("delta_downloads", 0))
            for row in rows:
                eligible.add_metric([rollout.rollout_id, row["name"]], row["eligible"])
                for name in _OUTCOMES:
                    per_outcome.add_metric([rollout.rollout_id, row["name"], name], row[name])
            failed.add_metric(values, rows[-1]["failed"] + rows[-1]["rolled_back"])
            stalled.add_metric(values, rows[-1]["stalled"])
        yield from (state, current, count, wave_state, eligible, per_outcome, failed, stalled)
        yield from (fetched, saved, by_delta)
        security = GaugeMetricFamily(
            "tufota_security_events",
            "Verification failures devices reported (refused tampered or invalid data)",
            labels=["hardware_id"],
        )
        for entry in self.ctx.store.security_summary():
            security.add_metric([entry["hardware_id"]], entry["events"])
        yield security

    def _repository(self) -> Iterator[Metric]:
        now = utcnow()
        expiry = GaugeMetricFamily(
            "tufota_role_expiry_seconds",
            "Seconds until the published role expires (negative: expired)",
            labels=["role", "online"],
        )
        for role, when in sorted(self.ctx.publisher.expiries().items()):
            online = "true" if role in ONLINE_ROLES else "false"
            expiry.add_metric([role, online], (when - now).total_seconds())
        yield expiry
        catalogue = release_catalogue(self.ctx.publisher.state())
        patch: dict[str, Any] = patch_status(self.ctx.store.list_devices(), catalogue, limit=1)
        exposed = GaugeMetricFamily(
            "tufota_patch_exposed_devices",
            "Devices lacking a CVE fix that a newer signed release has (min_cvss: 0 or 7)",
            labels=["min_cvss"],
        )
        exposed.add_metric(["0"], patch["exposed_devices"])
        exposed.add_metric(["7"], patch["critical_devices"])
        yield exposed
        per_cve = GaugeMetricFamily(
            "tufota_patch_cve_exposed_devices",
            "Devices exposed to each CVE that a newer signed release fixes",
            labels=["cve", "cvss"],
        )
        for cve in patch["cves"]:
            score = "" if cve["cvss"] is None else f"{cve['cvss']:.1f}"
            per_cve.add_metric([cve["cve"], score], cve["devices"])
        yield per_cve


def build_router(ctx: ServerContext) -> APIRouter:
    """``GET /metrics`` in the Prometheus text format (viewer token, or loopback by default)."""
    registry = registry_for(ctx)
    router = APIRouter()

    @router.get("/metrics", tags=["server"], dependencies=[Depends(ctx.require("read"))])
    def metrics() -> Response:
        """Prometheus metrics (see ``repo_server._metrics``)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
