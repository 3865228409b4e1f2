"""The rollout controller: starts rollouts, moves them through their waves, publishes them.

Invariants:
* The store is the source of truth. Every change is committed first (one
  transaction, with its reason as an ``Event``), then the rollout document is
  published. A rollout whose latest revision is not yet published (publisher
  down, or a CLI process running without one) is published by the next
  ``tick`` of any controller that has a publisher.
* A published document is always the rollout's latest revision once
  publishing settles: after publishing, the controller marks the revision
  published only if it is still the latest, and otherwise publishes again.
* Changes are compare-and-set on the rollout's revision, so the server's
  ``tick`` and an operator's ``pause`` in another process never overwrite each
  other; the loser sees ``ConflictError`` (``tick`` just skips that rollout).
* Transitions: active -> paused | aborted | completed, and active -> active at
  the next wave; paused -> active | aborted. ``aborted`` and ``completed`` are
  final. Anything else raises ``ConflictError`` and changes nothing.
* The gates themselves are decided by the pure ``staging._progress.judge`` over
  counts the store aggregates (SQL in ``SqliteTrackerStore``), so a tick costs
  one indexed scan per live rollout, not a Python loop over every device.
* Monitors (paused rollouts, the four stall findings, online metadata close to
  expiry, unpatched CVSS >= 7 fixes) only *state* which alerts should be open;
  the store de-duplicates by key, so each condition alerts once and resolves
  once. A failing monitor or sink is logged and never stops the tick.
* Each tick ends by delivering due notifications (``deliver``); a sink that
  fails is skipped for the rest of that round and retried with backoff.
* Watchdog (a stolen online key can change pace): every tick the documents
  devices would read (``published``, verified like a device) are compared
  with what the tracker would publish for each hardware id's newest settled
  rollout; any difference opens one critical ``rollout_diverged`` alert
  ("rollout document diverged: online key compromise?") and the controller
  refuses to sign anything for that hardware id until an operator resolves
  it (``resolve_alert``, which then re-publishes the tracker's document).
  Device reports that contradict the tracker (installing outside the open
  waves, starting after a pause or abort, a release no rollout offered) open
  the same kind of alert, one per device; they are looked for with the
  fleet-wide monitors (every ``fleet_check_seconds``), as they scan devices.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Protocol

from staging._alerts import STALL_KINDS, Alert, AlertDraft, AlertSettings, SinkSpec
from staging._config import StagingConfig
from staging._model import Event, RolloutOptions, RolloutRecord
from staging._patch import ReleaseCatalog
from staging._progress import MANUAL_COMPLETION, FleetStatus, RolloutStatus, fleet, judge, retry_due
from staging._sinks import AlertSink, LogSink, build_sink
from staging._stalls import find_stall
from staging._store import TrackerStore
from tufota_core import (
    ConflictError,
    InputError,
    RolloutDoc,
    TufotaError,
    Version,
    Wave,
    check_hardware_id,
    format_time,
    utcnow,
    validate_waves,
)

logger = logging.getLogger(__name__)

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_PUBLISH_ATTEMPTS = 3
ONLINE_ROLES = ("timestamp", "snapshot", "rollouts")
_FINAL = ("aborted", "completed")
_DIVERGED = "diverged:"
_COMPARED = (
    "rollout_id",
    "version",
    "target_path",
    "waves",
    "current_wave",
    "state",
    "maintenance_window",
    "retry",
)


def _doc_differences(expected: RolloutDoc | None, found: RolloutDoc | str | None) -> list[str]:
    """What differs between the tracker's document and the published one, in words."""
    if isinstance(found, str):
        return [found]
    if expected is None and found is None:
        return []
    if expected is None:
        assert found is not None
        return [f"published rollout {found.rollout_id} ({found.state}) the tracker does not know"]
    if found is None:
        return [f"rollout {expected.rollout_id} is not published"]
    differences = []
    for name in _COMPARED:
        want, got = getattr(expected, name), getattr(found, name)
        if want != got:
            if name == "waves":
                differences.append("waves differ")
            elif name == "current_wave":
                differences.append(f"current wave {got + 1}, tracker {want + 1}")
            else:
                differences.append(f"{name.replace('_', ' ')} {got!r}, tracker {want!r}")
    return differences


@dataclass
class TickReport:
    """What one ``tick`` did, for logs, the CLI and tests."""

    events: list[Event] = field(default_factory=list)
    opened: list[Alert] = field(default_factory=list)
    resolved: list[Alert] = field(default_factory=list)
    delivered: int = 0
    failed_deliveries: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "events": [e.to_json() for e in self.events],
            "alerts_opened": [a.to_json() for a in self.opened],
            "alerts_resolved": [a.to_json() for a in self.resolved],
            "notifications_delivered": self.delivered,
            "notifications_failed": self.failed_deliveries,
            "errors": list(self.errors),
        }


class RolloutPublisher(Protocol):
    """Publishes a rollout document where devices read it."""

    def publish_rollout(self, doc: RolloutDoc) -> None:
        """Sign ``doc`` with the online ``rollouts`` key and publish it atomically.

        Publishing the same document twice must be harmless.

        Raises:
            TufotaError: publishing failed; the previous document stays in place.
        """


def new_rollout_id(hardware_id: str, version: str) -> str:
    """``<hardware_id>-<version>-<8 hex>``, made safe and at most 64 characters."""
    base = _ID_UNSAFE.sub("_", f"{hardware_id}-{version}")[:55]
    return f"{base}-{secrets.token_hex(4)}"


class RolloutController:
    """Drives rollouts: ``start``, periodic ``tick``, and the operator's manual steps.

    Args:
        store: where rollouts, devices and history live.
        publisher: publishes rollout documents; None records changes only and
            leaves publishing to a controller that has one (e.g. the CLI
            pausing a rollout that the server's controller then publishes).
        clock: the current time (timezone-aware UTC); patch it in tests.
        config: limits; ``StagingConfig()`` when None.
        sink_factory: builds a sink from its stored spec (tests inject fakes).
        expiries: when each published role expires (``Publisher.expiries``);
            None disables the metadata-expiry monitor.
        releases: the signed release catalog; None disables the patch monitor.
        published: the rollout documents devices would read, per hardware id
            (a document, or why it does not verify); None disables the
            document watchdog.
    """

    def __init__(
        self,
        store: TrackerStore,
        publisher: RolloutPublisher | None,
        clock: Callable[[], datetime] = utcnow,
        config: StagingConfig | None = None,
        *,
        sink_factory: Callable[[SinkSpec], AlertSink] = build_sink,
        expiries: Callable[[], Mapping[str, datetime]] | None = None,
        releases: Callable[[], ReleaseCatalog] | None = None,
        published: Callable[[], Mapping[str, RolloutDoc | str]] | None = None,
    ) -> None:
        self._store = store
        self._published = published
        self._publisher = publisher
        self._clock = clock
        self._config = config or StagingConfig()
        self._sink_factory = sink_factory
        self._expiries = expiries
        self._releases = releases
        self._sinks: dict[SinkSpec, AlertSink] = {}
        self._fleet_checked: datetime | None = None
        self.last_tick = TickReport()

    def now(self) -> datetime:
        """The controller's clock (timezone-aware UTC)."""
        return self._clock()

    @property
    def store(self) -> TrackerStore:
        """The tracker store this controller drives."""
        return self._store

    def attach_repository(
        self,
        *,
        expiries: Callable[[], Mapping[str, datetime]] | None = None,
        releases: Callable[[], ReleaseCatalog] | None = None,
        published: Callable[[], Mapping[str, RolloutDoc | str]] | None = None,
    ) -> None:
        """Give the fleet-wide monitors their sources (the server does this at start)."""
        if expiries is not None:
            self._expiries = expiries
        if releases is not None:
            self._releases = releases
        if published is not None:
            self._published = published

    # -- operator actions --------------------------------------------------------

    def start(
        self,
        hardware_id: str,
        version: str,
        target_path: str,
        waves: Sequence[Wave],
        options: RolloutOptions | None = None,
        *,
        reason: str = "",
    ) -> RolloutDoc:
        """Create a rollout at its first wave, active, and publish it.

        Raises:
            InputError: a bad hardware id, version, target path or wave list.
            ConflictError: the hardware id already has an active or paused rollout.
            TufotaError: publishing failed (the rollout is recorded; ``tick``
                retries publishing).
        """
        check_hardware_id(hardware_id)
        Version.parse(version)
        validate_waves(list(waves))
        self._refuse_if_diverged(hardware_id)
        opts = options or RolloutOptions()
        rollout = self._store.create_rollout(
            new_rollout_id(hardware_id, version),
            hardware_id,
            version,
            target_path,
            waves,
            opts,
            at=self._clock(),
            reason=reason,
        )
        logger.info(
            "rollout %s started: %s %s in %d waves (first: %s)",
            rollout.rollout_id,
            hardware_id,
            version,
            len(rollout.waves),
            rollout.waves[0].name,
        )
        return self._publish(rollout)

    def pause(self, rollout_id: str, reason: str) -> RolloutDoc:
        """Stop devices from starting the update; those mid-install finish.

        Idempotent: pausing a paused rollout changes nothing and returns its document.

        Raises:
            NotFoundError: no such rollout.
            ConflictError: the rollout completed or was aborted, or changed meanwhile.
            TufotaError: publishing failed (the pause is recorded; ``tick`` retries).
        """
        current = self._store.get_rollout(rollout_id)
        if current.state == "paused":
            return self.doc_for(current)
        return self._manual(
            "pause",
            rollout_id,
            ("active",),
            "paused",
            "paused",
            reason or "paused by hand",
            rollout=current,
        )

    def resume(self, rollout_id: str, reason: str = "") -> RolloutDoc:
        """Make a paused rollout active again at the same wave.

        Failures reported before the resume no longer count towards the
        failure threshold; new ones do. Idempotent: resuming an active
        rollout changes nothing and returns its document.

        Raises:
            NotFoundError: no such rollout.
            ConflictError: the rollout completed or was aborted, or changed meanwhile.
            TufotaError: publishing failed (the resume is recorded; ``tick`` retries).
        """
        current = self._store.get_rollout(rollout_id)
        if current.state == "active":
            return self.doc_for(current)
        return self._manual(
            "resume",
            rollout_id,
            ("paused",),
            "active",
            "resumed",
            reason or "resumed by hand",
            rollout=current,
        )

    def complete(self, rollout_id: str, reason: str) -> RolloutDoc:
        """End a rollout at its last wave as completed although some devices did not succeed.

        For known stragglers (failed, offline or retired devices): the reason
        is required and kept in the history as ``completed by hand: REASON``.
        Like any completed rollout, the document keeps offering the release
        to every wave.

        Raises:
            InputError: no reason given.
            NotFoundError: no such rollout.
            ConflictError: the rollout is not active or paused, is not at its
                last wave (advance first), or changed meanwhile.
            TufotaError: publishing failed (the change is recorded; ``tick`` retries).
        """
        if not reason.strip():
            raise InputError("completing a rollout by hand needs a reason (--reason)")
        current = self._store.get_rollout(rollout_id)
        last = len(current.waves) - 1
        if current.live and current.current_wave != last:
            raise ConflictError(
                f"rollout {rollout_id} is at wave {current.current_wave + 1}/{len(current.waves)}; "
                f"complete needs its last wave '{current.waves[-1].name}' open (advance first)"
            )
        return self._manual(
            "complete",
            rollout_id,
            ("active", "paused"),
            "completed",
            "completed",
            f"{MANUAL_COMPLETION}: {reason.strip()}",
            rollout=current,
        )

    def abort(self, rollout_id: str, reason: str) -> RolloutDoc:
        """End an active or paused rollout for good; devices stop updating.

        Raises:
            NotFoundError: no such rollout.
            ConflictError: the rollout already completed or was aborted, or changed meanwhile.
            TufotaError: publishing failed (the abort is recorded; ``tick`` retries).
        """
        return self._manual(
            "abort",
            rollout_id,
            ("active", "paused"),
            "aborted",
            "aborted",
            reason or "aborted by hand",
        )

    def advance(self, rollout_id: str, reason: str = "") -> RolloutDoc:
        """Open the next wave now, whatever its gate says.

        Raises:
            NotFoundError: no such rollout.
            ConflictError: the rollout is not active, is at its last wave, or changed meanwhile.
            TufotaError: publishing failed (the change is recorded; ``tick`` retries).
        """
        rollout = self._store.get_rollout(rollout_id)
        last = len(rollout.waves) - 1
        if rollout.state == "active" and rollout.current_wave == last:
            raise ConflictError(
                f"rollout {rollout_id} is at its last wave '{rollout.waves[-1].name}'; "
                "it completes when that wave meets its gate, or by hand with "
                f"'tufota rollout complete {rollout_id} --reason ...'"
            )
        return self._manual(
            "advance",
            rollout_id,
            ("active",),
            "active",
            "wave_advanced",
            reason or "advanced by hand",
            rollout=rollout,
            wave=min(rollout.current_wave + 1, last),
        )

    def _manual(
        self,
        action: str,
        rollout_id: str,
        allowed: tuple[str, ...],
        state: str,
        kind: str,
        reason: str,
        *,
        rollout: RolloutRecord | None = None,
        wave: int | None = None,
    ) -> RolloutDoc:
        current = rollout or self._store.get_rollout(rollout_id)
        if current.state not in allowed:
            raise ConflictError(
                f"cannot {action} rollout {rollout_id}: it is {current.state}; "
                f"{action} needs a rollout that is {' or '.join(allowed)}"
            )
        self._refuse_if_diverged(current.hardware_id)
        changed, _ = self._store.update_rollout_state(
            rollout_id,
            expected_revision=current.revision,
            state=state,
            current_wave=current.current_wave if wave is None else wave,
            kind=kind,
            reason=reason,
            at=self._clock(),
        )
        self._log(changed, kind, reason)
        self._guard("rollout alerts", lambda: self._watch_rollout(changed, self._clock()))
        doc = self._publish(changed)
        self._guard("alert delivery", self.deliver)
        return doc

    # -- the loop ------------------------------------------------------------------

    def tick(self) -> list[Event]:
        """Judge every active rollout's gate once, act on it, watch, alert, publish.

        An active rollout pauses when its failure gate trips, moves to its next
        wave when its success gate opens, and completes when its last wave's
        gate opens. Several waves may open in one tick when the newly opened
        waves hold no devices of their own (see ``staging._progress``), at most
        ``StagingConfig.max_steps_per_tick``. A rollout changed concurrently by
        another process is skipped until the next tick. Publishing failures
        are logged and retried on the next tick. Then the monitors run and due
        alert notifications are delivered; ``last_tick`` tells what happened.

        Returns:
            The rollout events this tick recorded, in order.
        """
        report = TickReport()
        self.last_tick = report
        with_alerts = {a.rollout_id for a in self._store.list_alerts(open_only=True)}
        watched: dict[str, RolloutRecord] = {}
        for rollout in self._store.list_rollouts():
            if rollout.state == "active":
                try:
                    report.events.extend(self._step(rollout))
                except ConflictError as e:
                    logger.debug("rollout %s skipped this tick: %s", rollout.rollout_id, e)
            latest = rollout
            if rollout.state == "active":  # this tick may have changed it
                latest = self._store.get_rollout(rollout.rollout_id)
            if (
                self._publisher is not None
                and latest.published_revision < latest.revision
                and self._diverged(latest.hardware_id) is None
            ):
                try:
                    self._publish(latest)
                except TufotaError as e:
                    logger.warning(
                        "publishing rollout %s failed, retrying next tick: %s",
                        rollout.rollout_id,
                        e,
                    )
            if latest.live or latest.rollout_id in with_alerts:
                self._watch_guarded(latest)
            watched.setdefault(latest.hardware_id, latest)  # newest first: each hw's newest
        now = self._clock()
        due = self._fleet_checked is None or now - self._fleet_checked >= timedelta(
            seconds=self._config.fleet_check_seconds
        )
        self._guard("security event check", lambda: self._watch_security(now))
        self._guard("rollout document watchdog", lambda: self._watch_published(now))
        if due:
            self._fleet_checked = now
            self._guard("metadata expiry check", lambda: self._watch_expiry(now))
            self._guard("patch status check", lambda: self._watch_patches(now))
            self._guard("device clock check", lambda: self._watch_clocks(now))
            # Scans of the devices' own reports: with the fleet checks, not every tick.
            for newest in watched.values():
                self._guard(
                    f"device reports of rollout {newest.rollout_id}",
                    partial(self._watch_devices, newest),
                )
        self._guard("alert delivery", self.deliver)
        return report.events

    def _watch_guarded(self, rollout: RolloutRecord) -> None:
        now = self._clock()
        self._guard(
            f"watching rollout {rollout.rollout_id}", lambda: self._watch_rollout(rollout, now)
        )

    def _guard(self, what: str, work: Callable[[], object]) -> None:
        """Run one monitor; log its failure and go on (a monitor never stops the tick)."""
        try:
            work()
        except TufotaError as e:
            logger.warning("%s failed: %s", what, e)
            self.last_tick.errors.append(f"{what}: {e}")

    def _settings(self) -> AlertSettings:
        return self._store.get_alert_settings()

    def _sync(
        self,
        scope: str,
        drafts: list[AlertDraft],
        now: datetime,
        resolution: str,
        resolve_missing: bool = True,
    ) -> None:
        opened, resolved = self._store.sync_alerts(
            scope,
            drafts,
            at=now,
            sinks=self._settings().sinks,
            resolution=resolution,
            resolve_missing=resolve_missing,
        )
        self.last_tick.opened.extend(opened)
        self.last_tick.resolved.extend(resolved)
        for alert in opened:
            logger.info("alert opened: [%s] %s", alert.kind, alert.summary)
        for alert in resolved:
            logger.info("alert resolved: [%s] %s (%s)", alert.kind, alert.summary, resolution)

    # -- monitors ----------------------------------------------------------------------

    def _watch_rollout(self, rollout: RolloutRecord, now: datetime) -> None:
        """Alerts of one rollout: paused, and one stall finding per device."""
        rid = rollout.rollout_id
        paused_scope = f"rollout:{rid}:paused"
        stall_scope = f"rollout:{rid}:stall:"
        if rollout.state in _FINAL:
            self._sync(paused_scope, [], now, f"rollout {rollout.state}")
            self._sync(stall_scope, [], now, f"rollout {rollout.state}")
            return
        paused: list[AlertDraft] = []
        if rollout.state == "paused":
            at_wave = rollout.waves[rollout.current_wave]
            paused.append(
                AlertDraft(
                    key=paused_scope,
                    kind="rollout_paused",
                    severity="critical",
                    summary=(
                        f"rollout {rid} ({rollout.hardware_id} {rollout.version}) paused at "
                        f"wave {rollout.current_wave + 1}/{len(rollout.waves)} '{at_wave.name}': "
                        f"{rollout.reason}"
                    ),
                    hardware_id=rollout.hardware_id,
                    rollout_id=rid,
                    details={
                        "reason": rollout.reason,
                        "wave": rollout.current_wave,
                        "wave_name": at_wave.name,
                        "version": rollout.version,
                    },
                )
            )
        self._sync(paused_scope, paused, now, f"rollout {rollout.state}: {rollout.reason}")
        candidates = self._store.stall_candidates(rollout, now)
        complete = len(candidates) < self._config.max_findings_per_rollout
        drafts = []
        for wave, device in candidates:
            finding = find_stall(rollout, wave, device, now)
            if finding is None:
                continue
            drafts.append(
                AlertDraft(
                    key=f"{stall_scope}{device.device_id}",
                    kind=finding.kind,
                    severity="warning",
                    summary=finding.text,
                    hardware_id=rollout.hardware_id,
                    rollout_id=rid,
                    device_id=device.device_id,
                    details={
                        "wave": wave,
                        "wave_name": rollout.waves[wave].name,
                        "since": format_time(finding.since),
                        "state": device.state,
                        "last_seen": None
                        if device.last_seen is None
                        else format_time(device.last_seen),
                        "bytes_done": device.bytes_done,
                        "bytes_total": device.bytes_total,
                        "version": rollout.version,
                    },
                )
            )
        self._sync(stall_scope, drafts, now, "the device reported progress again", complete)

    def _diverged(self, hardware_id: str) -> Alert | None:
        """The open document-divergence alert of ``hardware_id``, if any."""
        for alert in self._store.list_alerts(open_only=True, kinds=["rollout_diverged"]):
            if alert.key == f"{_DIVERGED}{hardware_id}":
                return alert
        return None

    def _refuse_if_diverged(self, hardware_id: str) -> None:
        alert = self._diverged(hardware_id)
        if alert is not None:
            raise ConflictError(
                f"refusing to sign for {hardware_id}: its published rollout document diverged "
                f"from the tracker (alert {alert.alert_id}); rotate the online keys, then "
                f"'tufota alert resolve {alert.alert_id}' re-publishes the tracker's document"
            )

    def resolve_alert(self, alert_id: int, reason: str) -> Alert:
        """Resolve an alert by hand; a resolved document divergence re-publishes the tracker's.

        Raises:
            NotFoundError: no such alert.
            ConflictError: the alert is already resolved.
        """
        alert = self._store.resolve_alert(
            alert_id,
            at=self._clock(),
            resolution=reason,
            sinks=self._settings().sinks,
        )
        if alert.kind == "rollout_diverged" and alert.key == f"{_DIVERGED}{alert.hardware_id}":
            newest = self._store.list_rollouts(alert.hardware_id)
            if newest:
                # The next tick signs the tracker's view again, over the forged document.
                self._store.mark_unpublished(newest[0].rollout_id)
        return alert

    def _watch_published(self, now: datetime) -> None:
        """``rollout_diverged`` when a published document is not what the tracker would publish."""
        if self._published is None:
            return
        newest: dict[str, RolloutRecord] = {}
        for record in self._store.list_rollouts():  # newest first
            newest.setdefault(record.hardware_id, record)
        # Read after the tracker: a change another process makes meanwhile shows
        # up as a new revision below, not as a divergence.
        published = self._published()
        drafts = []
        for hw in sorted(set(newest) | set(published)):
            rollout = newest.get(hw)
            found = published.get(hw)
            if rollout is not None and rollout.published_revision < rollout.revision:
                continue  # our own change is on its way; compare once it settled
            expected = None if rollout is None else self.doc_for(rollout)
            differences = _doc_differences(expected, found)
            if not differences:
                continue
            now_newest = self._store.list_rollouts(hw)
            if (rollout is None) != (not now_newest) or (
                rollout is not None
                and (now_newest[0].rollout_id, now_newest[0].revision)
                != (rollout.rollout_id, rollout.revision)
            ):
                continue  # changed (and maybe published) while we read: judge next tick
            drafts.append(
                AlertDraft(
                    key=f"{_DIVERGED}{hw}",
                    kind="rollout_diverged",
                    severity="critical",
                    summary=(
                        f"rollout document diverged: online key compromise? The published "
                        f"rollouts/{hw}.json differs from the tracker ({'; '.join(differences)})"
                    ),
                    hardware_id=hw,
                    rollout_id=None if rollout is None else rollout.rollout_id,
                    details={
                        "source": "document",
                        "differences": differences,
                        "published": found
                        if isinstance(found, str) or found is None
                        else found.to_json(),
                        "expected": None if expected is None else expected.to_json(),
                    },
                )
            )
        self._sync(_DIVERGED, drafts, now, "resolved", resolve_missing=False)

    def _watch_devices(self, rollout: RolloutRecord) -> None:
        """``rollout_diverged`` per device whose reports contradict the tracker."""
        now = self._clock()
        found = self._store.unexpected_installs(rollout, self._config.max_findings_per_rollout)
        drafts = [
            AlertDraft(
                key=f"{_DIVERGED}{rollout.hardware_id}:device:{device.device_id}",
                kind="rollout_diverged",
                severity="critical",
                summary=f"rollout document diverged: online key compromise? {text}",
                hardware_id=rollout.hardware_id,
                rollout_id=rollout.rollout_id,
                device_id=device.device_id,
                details={
                    "source": "device",
                    "state": device.state,
                    "target_version": device.target_version,
                    "installed_version": device.installed_version,
                    "reported_rollout": device.rollout_id,
                },
            )
            for text, device in found
        ]
        if drafts:
            self._sync(
                f"{_DIVERGED}{rollout.hardware_id}:device:",
                drafts,
                now,
                "resolved",
                resolve_missing=False,
            )

    def _watch_security(self, now: datetime) -> None:
        """``verification_failed`` per hardware id whose devices refused data.

        Open until an operator resolves it; it opens again only for security
        events newer than the resolved alert's (``details.last_event_id``).
        """
        summary = self._store.security_summary()
        if not summary:
            return
        newest: dict[str, Alert] = {}
        for alert in self._store.list_alerts(kinds=["verification_failed"]):
            newest.setdefault(alert.key, alert)
        drafts = []
        for entry in summary:
            hw = entry["hardware_id"]
            key = f"security:{hw}"
            prior = newest.get(key)
            if (
                prior is not None
                and not prior.open
                and int(prior.details.get("last_event_id", 0)) >= entry["last_event_id"]
            ):
                continue
            n = entry["devices"]
            rollouts = entry["rollouts"]
            drafts.append(
                AlertDraft(
                    key=key,
                    kind="verification_failed",
                    severity="critical",
                    summary=(
                        f"{n} {hw} device{'s' if n != 1 else ''} refused data that failed "
                        f"verification ({', '.join(entry['codes'])}; {entry['events']} "
                        f"event{'s' if entry['events'] != 1 else ''}, latest {entry['last_at']}): "
                        "tampering on the network path or a mirror? Not counted as install "
                        "failures"
                    ),
                    hardware_id=hw,
                    rollout_id=rollouts[-1] if len(rollouts) == 1 else None,
                    details=entry,
                )
            )
        self._sync("security:", drafts, now, "resolved", resolve_missing=False)

    def _watch_clocks(self, now: datetime) -> None:
        """``device_clock_skew`` per device whose report time disagrees with our clock."""
        threshold = self._config.clock_skew_seconds
        cap = self._config.max_findings_per_rollout
        devices = self._store.skewed_devices(threshold, cap)
        drafts = []
        for device in devices:
            skew = device.clock_skew or 0
            drafts.append(
                AlertDraft(
                    key=f"clock:{device.device_id}",
                    kind="device_clock_skew",
                    severity="warning",
                    summary=(
                        f"device clock skew: {device.device_id} reports a clock "
                        f"{abs(skew)} s {'ahead of' if skew > 0 else 'behind'} the server's "
                        f"(limit {threshold:g} s); it may refuse valid metadata as expired "
                        "and not update: fix its time source (NTP/RTC)"
                    ),
                    hardware_id=device.hardware_id,
                    device_id=device.device_id,
                    details={"clock_skew_seconds": skew, "threshold_seconds": threshold},
                )
            )
        self._sync(
            "clock:",
            drafts,
            now,
            "the device's clock agrees with the server's again",
            len(devices) < cap,
        )

    def _watch_expiry(self, now: datetime) -> None:
        """``metadata_expiring`` for each online role expiring within the margin."""
        if self._expiries is None:
            return
        margin = timedelta(seconds=self._settings().expiry_margin_seconds)
        drafts = []
        for role, expires in sorted(self._expiries().items()):
            if role not in ONLINE_ROLES or expires - now > margin:
                continue
            expired = expires <= now
            drafts.append(
                AlertDraft(
                    key=f"expiry:{role}",
                    kind="metadata_expiring",
                    severity="critical" if expired else "warning",
                    summary=(
                        f"online {role} metadata {'expired' if expired else 'expires'} at "
                        f"{format_time(expires)}; devices refuse updates once it has expired "
                        "(is the server's online refresh running?)"
                    ),
                    details={"role": role, "expires": format_time(expires)},
                )
            )
        self._sync("expiry:", drafts, now, "re-signed")

    def _watch_patches(self, now: datetime) -> None:
        """``unpatched_vulnerability`` per (hardware id, CVE) past its grace time."""
        if self._releases is None:
            return
        settings = self._settings()
        catalog = self._releases()
        grace = timedelta(seconds=settings.patch_grace_seconds)
        counts = self._store.version_counts()
        drafts = []
        for hw in sorted(catalog.releases):
            versions = {v: n for (h, v), n in counts.items() if h == hw and v is not None}
            for fix in catalog.fixes(hw):
                if fix.cvss is None or fix.cvss < settings.patch_min_cvss:
                    continue
                if fix.released_at is None or fix.released_at + grace > now:
                    continue
                fixed = Version.parse(fix.fixed_in)
                lacking = [v for v in versions if Version.parse(v) < fixed]
                total = sum(versions[v] for v in lacking)
                if not total:
                    continue
                sample = self._store.devices_on_versions(hw, lacking, 20)
                age = (now - fix.released_at).days
                drafts.append(
                    AlertDraft(
                        key=f"patch:{hw}:{fix.cve}",
                        kind="unpatched_vulnerability",
                        severity="critical" if fix.cvss >= 9.0 else "warning",
                        summary=(
                            f"{total} {hw} device{'s' if total != 1 else ''} still lack "
                            f"{fix.cve} (CVSS {fix.cvss:.1f}), fixed in {fix.fixed_in} "
                            f"released {age} day{'s' if age != 1 else ''} ago"
                        ),
                        hardware_id=hw,
                        details={
                            "cve": fix.cve,
                            "cvss": fix.cvss,
                            "fixed_in": fix.fixed_in,
                            "released": format_time(fix.released_at),
                            "devices": total,
                            "by_version": {v: versions[v] for v in sorted(lacking)},
                            "sample": sample,
                        },
                    )
                )
        self._sync("patch:", drafts, now, "every device has the fix (or was revoked)")

    # -- delivery --------------------------------------------------------------------------

    def deliver(self) -> tuple[int, int]:
        """Send due notifications to their sinks.

        A sink that fails is skipped for the rest of this round; each failed
        notification is retried with exponential backoff up to
        ``StagingConfig.notification_attempts`` tries, then given up and logged.

        Returns:
            (delivered, failed) counts of this round.
        """
        now = self._clock()
        specs = {s.name: s for s in self._settings().sinks}
        broken: set[str] = set()
        delivered = failed = 0
        for note in self._store.due_notifications(now, self._config.notifications_per_tick):
            if note.sink in broken:
                self._store.finish_notification(
                    note.notification_id, at=now, error="sink failing", retry_at=now
                )
                continue
            try:
                self._sink(note.sink, specs).send(note)
            except TufotaError as e:
                failed += 1
                broken.add(note.sink)
                attempts = note.attempts + 1
                retry = None
                if attempts < self._config.notification_attempts:
                    delay = min(
                        3600.0, self._config.notification_backoff_seconds * 2 ** (attempts - 1)
                    )
                    retry = now + timedelta(seconds=delay)
                    logger.warning("alert sink %s failed (try %d): %s", note.sink, attempts, e)
                else:
                    logger.error(
                        "alert %d notification to %s given up after %d tries: %s",
                        note.alert.alert_id,
                        note.sink,
                        attempts,
                        e,
                    )
                self._store.finish_notification(
                    note.notification_id, at=now, error=str(e) or type(e).__name__, retry_at=retry
                )
                continue
            delivered += 1
            self._store.finish_notification(note.notification_id, at=now)
        self.last_tick.delivered += delivered
        self.last_tick.failed_deliveries += failed
        return delivered, failed

    def _sink(self, name: str, specs: Mapping[str, SinkSpec]) -> AlertSink:
        if name == "log":
            return LogSink()
        spec = specs.get(name)
        if spec is None:
            raise ConflictError(f"alert sink {name} is no longer configured")
        sink = self._sinks.get(spec)
        if sink is None:
            sink = self._sink_factory(spec)
            self._sinks[spec] = sink
        return sink

    def _step(self, rollout: RolloutRecord) -> list[Event]:
        counts = self._store.rollout_counts(rollout)
        events: list[Event] = []
        for _ in range(self._config.max_steps_per_tick):
            if rollout.state != "active":
                break
            now = self._clock()
            _, gate = judge(rollout, counts, now)
            due = None if gate.failing else retry_due(rollout, counts)
            if due is not None and due <= now:
                generation = rollout.retry_generation + 1
                text = (
                    f"retry {generation}/{rollout.options.retry_failed}: offering "
                    f"{rollout.version} again to the devices that failed"
                )
                rollout, event = self._store.update_rollout_state(
                    rollout.rollout_id,
                    expected_revision=rollout.revision,
                    state="active",
                    current_wave=rollout.current_wave,
                    kind="retried",
                    reason=text,
                    at=now,
                    retry=True,
                )
                logger.info("rollout %s: %s", rollout.rollout_id, text)
                events.append(event)
                counts = self._store.rollout_counts(rollout)
                continue
            if gate.failing:
                state, kind, next_wave = "paused", "paused", rollout.current_wave
            elif not gate.ready:
                break
            elif rollout.current_wave + 1 == len(rollout.waves):
                state, kind, next_wave = "completed", "completed", rollout.current_wave
            else:
                state, kind, next_wave = "active", "wave_advanced", rollout.current_wave + 1
            rollout, event = self._store.update_rollout_state(
                rollout.rollout_id,
                expected_revision=rollout.revision,
                state=state,
                current_wave=next_wave,
                kind=kind,
                reason=gate.text,
                at=now,
            )
            self._log(rollout, kind, gate.text)
            events.append(event)
            if kind in ("paused", "completed"):
                self._guard("rollout alerts", partial(self._watch_rollout, rollout, now))
        return events

    # -- reading -------------------------------------------------------------------

    def status(self, rollout_id: str) -> RolloutStatus:
        """Per-wave counts, overall counts and what the gate waits for.

        Raises:
            NotFoundError: no such rollout.
        """
        rollout = self._store.get_rollout(rollout_id)
        status, _ = judge(rollout, self._store.rollout_counts(rollout), self._clock())
        stalls = dict.fromkeys(STALL_KINDS, 0)
        for alert in self._store.list_alerts(open_only=True, rollout_id=rollout_id):
            if alert.kind in stalls:
                stalls[alert.kind] += 1
        return replace(status, stalls=stalls)

    def fleet_status(
        self,
        hardware_id: str | None = None,
        latest_versions: Mapping[str, str] | None = None,
        catalog: ReleaseCatalog | None = None,
    ) -> FleetStatus:
        """Every device's version, state, last contact and patch status, with summaries.

        Args:
            hardware_id: only this product line; all when None.
            latest_versions: newest released version per hardware id; devices
                below it count as outdated.
            catalog: signed releases, for missing fixes and exposure (the
                controller's release source when None and one is attached).

        Raises:
            InputError: a version in ``latest_versions`` is not semantic.
        """
        if latest_versions:
            for version in latest_versions.values():
                Version.parse(version)
        if catalog is None and self._releases is not None:
            catalog = self._releases()
        devices = self._store.list_devices(hardware_id)
        return fleet(hardware_id, devices, latest_versions, catalog)

    def doc_for(self, rollout: RolloutRecord | str) -> RolloutDoc:
        """The rollout document for a rollout (or rollout id) as the store has it now.

        Raises:
            NotFoundError: no rollout has this id.
        """
        record = self._store.get_rollout(rollout) if isinstance(rollout, str) else rollout
        return RolloutDoc(
            rollout_id=record.rollout_id,
            hardware_id=record.hardware_id,
            version=record.version,
            target_path=record.target_path,
            waves=record.waves,
            current_wave=record.current_wave,
            state=record.state,
            maintenance_window=record.options.maintenance_window,
            updated=format_time(record.updated_at),
            retry=record.retry_generation,
        )

    # -- helpers -------------------------------------------------------------------

    def _publish(self, rollout: RolloutRecord) -> RolloutDoc:
        """Publish the rollout's latest revision; see the module invariants."""
        doc = self.doc_for(rollout)
        if self._publisher is None:
            return doc
        for _ in range(_PUBLISH_ATTEMPTS):
            self._publisher.publish_rollout(doc)
            if self._store.mark_published(rollout.rollout_id, rollout.revision):
                break
            rollout = self._store.get_rollout(rollout.rollout_id)
            doc = self.doc_for(rollout)
        return doc

    @staticmethod
    def _log(rollout: RolloutRecord, kind: str, reason: str) -> None:
        wave = rollout.waves[rollout.current_wave].name
        if kind == "wave_advanced":
            logger.info(
                "rollout %s advanced to wave %d/%d '%s': %s",
                rollout.rollout_id,
                rollout.current_wave + 1,
                len(rollout.waves),
                wave,
                reason,
            )
        else:
            logger.info("rollout %s %s at wave '%s': %s", rollout.rollout_id, kind, wave, reason)
