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
* The gates themselves are decided by the pure ``staging._progress.evaluate``.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from staging._config import StagingConfig
from staging._model import Event, RolloutOptions, RolloutRecord
from staging._progress import FleetStatus, RolloutStatus, evaluate, fleet
from staging._store import TrackerStore
from tufota_core import (
    ConflictError,
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
    """

    def __init__(
        self,
        store: TrackerStore,
        publisher: RolloutPublisher | None,
        clock: Callable[[], datetime] = utcnow,
        config: StagingConfig | None = None,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._clock = clock
        self._config = config or StagingConfig()

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

        Raises:
            NotFoundError: no such rollout.
            ConflictError: the rollout is not active, or changed meanwhile.
            TufotaError: publishing failed (the pause is recorded; ``tick`` retries).
        """
        return self._manual(
            "pause", rollout_id, ("active",), "paused", "paused", reason or "paused by hand"
        )

    def resume(self, rollout_id: str, reason: str = "") -> RolloutDoc:
        """Make a paused rollout active again at the same wave.

        Failures reported before the resume no longer count towards the
        failure threshold; new ones do.

        Raises:
            NotFoundError: no such rollout.
            ConflictError: the rollout is not paused, or changed meanwhile.
            TufotaError: publishing failed (the resume is recorded; ``tick`` retries).
        """
        return self._manual(
            "resume", rollout_id, ("paused",), "active", "resumed", reason or "resumed by hand"
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
                "it completes when that wave meets its gate"
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
        return self._publish(changed)

    # -- the loop ------------------------------------------------------------------

    def tick(self) -> list[Event]:
        """Judge every active rollout's gate once, act on it, and publish what is pending.

        An active rollout pauses when its failure gate trips, moves to its next
        wave when its success gate opens, and completes when its last wave's
        gate opens. Several waves may open in one tick when the newly opened
        waves hold no devices of their own (see ``staging._progress``), at most
        ``StagingConfig.max_steps_per_tick``. A rollout changed concurrently by
        another process is skipped until the next tick. Publishing failures
        are logged and retried on the next tick.

        Returns:
            The rollout events this tick recorded, in order.
        """
        events: list[Event] = []
        for rollout in self._store.list_rollouts():
            if rollout.state == "active":
                try:
                    events.extend(self._step(rollout))
                except ConflictError as e:
                    logger.debug("rollout %s skipped this tick: %s", rollout.rollout_id, e)
            if self._publisher is not None:
                latest = rollout
                if rollout.state == "active":  # this tick may have changed it
                    latest = self._store.get_rollout(rollout.rollout_id)
                if latest.published_revision < latest.revision:
                    try:
                        self._publish(latest)
                    except TufotaError as e:
                        logger.warning(
                            "publishing rollout %s failed, retrying next tick: %s",
                            rollout.rollout_id,
                            e,
                        )
        return events

    def _step(self, rollout: RolloutRecord) -> list[Event]:
        devices = self._store.list_devices(rollout.hardware_id)
        events: list[Event] = []
        for _ in range(self._config.max_steps_per_tick):
            if rollout.state != "active":
                break
            now = self._clock()
            _, gate = evaluate(rollout, devices, now)
            if gate.failing:
                state, kind, wave = "paused", "paused", rollout.current_wave
            elif not gate.ready:
                break
            elif rollout.current_wave + 1 == len(rollout.waves):
                state, kind, wave = "completed", "completed", rollout.current_wave
            else:
                state, kind, wave = "active", "wave_advanced", rollout.current_wave + 1
            rollout, event = self._store.update_rollout_state(
                rollout.rollout_id,
                expected_revision=rollout.revision,
                state=state,
                current_wave=wave,
                kind=kind,
                reason=gate.text,
                at=now,
            )
            self._log(rollout, kind, gate.text)
            events.append(event)
        return events

    # -- reading -------------------------------------------------------------------

    def status(self, rollout_id: str) -> RolloutStatus:
        """Per-wave counts, overall counts and what the gate waits for.

        Raises:
            NotFoundError: no such rollout.
        """
        rollout = self._store.get_rollout(rollout_id)
        devices = self._store.list_devices(rollout.hardware_id)
        status, _ = evaluate(rollout, devices, self._clock())
        return status

    def fleet_status(
        self,
        hardware_id: str | None = None,
        latest_versions: Mapping[str, str] | None = None,
    ) -> FleetStatus:
        """Every device's version, state and last contact, with summary counts.

        Args:
            hardware_id: only this product line; all when None.
            latest_versions: newest released version per hardware id; devices
                below it count as outdated.

        Raises:
            InputError: a version in ``latest_versions`` is not semantic.
        """
        if latest_versions:
            for version in latest_versions.values():
                Version.parse(version)
        return fleet(hardware_id, self._store.list_devices(hardware_id), latest_versions)

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
            updated=format_time(record.updated_at),
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
