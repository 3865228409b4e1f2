"""The agent's persisted state machine (``state_dir/agent.json``) and its report outbox.

State file invariants:
* Written only whole, atomically (``_fs``); a torn write is impossible, so
  after any crash the file holds the last completed transition.
* ``next_seq`` only grows. A report's seq is taken from ``next_seq`` and the
  outbox file is written *before* the state that records the transition (with
  ``next_seq + 1``); on start-up ``next_seq`` is raised above the highest seq
  in the outbox. So a crash between the two writes can repeat a report under
  a new seq (at-least-once) but never loses one and never reuses a seq.
* ``reported`` and ``abandoned`` keep at most ``max_remembered_rollouts``
  rollouts (oldest forgotten first), so the file stays small.

Outbox invariants (``state_dir/outbox/<seq>.json``, one signed envelope each):
* Delivered strictly in seq order; a report is deleted only after the server
  acknowledged it (2xx), said it already has it (409), or refused it as
  malformed for good (400/422). 401/403, 5xx and network errors stop the flush
  and keep the report.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from device_agent._fs import atomic_write_json, fsync_dir, read_json
from device_agent._http import Delivery, ReportSender
from tufota_core import DEVICE_STATES, InputError, RepositoryError, Version

logger = logging.getLogger(__name__)

STATE_SCHEMA = "tufota.agent-state/1"
_OUTBOX_NAME = re.compile(r"^(\d{1,18})\.json$")


@dataclass(frozen=True)
class AgentState:
    """One persisted snapshot of the update state machine.

    Attributes:
        state: One of tufota_core.DEVICE_STATES.
        rollout_id: The rollout being (or last) acted on.
        target_version: The version being (or last) installed.
        target_path: Its TUF target path.
        target_sha256: SHA-256 of the verified image.
        next_seq: The seq the next report gets.
        pending_error: Why a rollback is under way (set before rolling back).
        reported: Error codes already reported, per rollout id ("" = no rollout).
        abandoned: Rollout id -> version that rolled back or failed to install;
            not retried for that rollout until the server raises the document's
            ``retry`` generation above the one in ``abandoned_retry``.
        abandoned_retry: Rollout id -> the document's retry generation the
            abandoned attempt came from.
        target_retry: The retry generation of the document the current attempt
            came from.
        newest_seen: The newest version this device installed or was offered by
            a verified rollout; it only grows (a floor while the installed
            version is unknown, so a stolen online key cannot offer an older one).
        last_failure: Why the last rollback or failed install happened
            (``rollout_id``, ``version``, ``code``, ``message``); heartbeats about
            that rollout repeat it, so the server keeps showing the real cause.
    """

    state: str = "idle"
    rollout_id: str | None = None
    target_version: str | None = None
    target_path: str | None = None
    target_sha256: str | None = None
    next_seq: int = 1
    pending_error: str | None = None
    reported: dict[str, list[str]] = field(default_factory=dict)
    abandoned: dict[str, str] = field(default_factory=dict)
    abandoned_retry: dict[str, int] = field(default_factory=dict)
    target_retry: int = 0
    newest_seen: str | None = None
    last_failure: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"schema": STATE_SCHEMA, **asdict(self)}

    @classmethod
    def from_json(cls, data: Any) -> AgentState:
        """Parse the state file.

        Raises:
            RepositoryError: the content is not an agent state.
        """
        if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
            raise RepositoryError("agent state file has the wrong schema")
        try:
            state = cls(
                state=str(data["state"]),
                rollout_id=data.get("rollout_id"),
                target_version=data.get("target_version"),
                target_path=data.get("target_path"),
                target_sha256=data.get("target_sha256"),
                next_seq=int(data["next_seq"]),
                pending_error=data.get("pending_error"),
                reported={str(k): [str(c) for c in v] for k, v in data.get("reported", {}).items()},
                abandoned={str(k): str(v) for k, v in data.get("abandoned", {}).items()},
                abandoned_retry={
                    str(k): int(v) for k, v in data.get("abandoned_retry", {}).items()
                },
                target_retry=int(data.get("target_retry", 0)),
                newest_seen=_optional_version(data.get("newest_seen")),
                last_failure=_failure(data.get("last_failure")),
            )
        except (KeyError, TypeError, ValueError, AttributeError, InputError) as e:
            raise RepositoryError(f"agent state file is malformed: {e}") from e
        if state.state not in DEVICE_STATES or state.next_seq < 1:
            raise RepositoryError("agent state file holds an invalid state or seq")
        return state

    def remember_report(self, rollout_id: str | None, code: str, keep: int) -> AgentState:
        """A copy that records ``code`` as reported for ``rollout_id``."""
        reported = {k: list(v) for k, v in self.reported.items()}
        key = rollout_id or ""
        codes = reported.pop(key, [])
        if code not in codes:
            codes.append(code)
        reported[key] = codes
        return replace(self, reported=_keep_last(reported, keep))

    def already_reported(self, rollout_id: str | None, code: str) -> bool:
        return code in self.reported.get(rollout_id or "", [])

    def abandon(self, rollout_id: str, version: str, keep: int) -> AgentState:
        """A copy that does not retry ``version`` for ``rollout_id`` in this retry generation."""
        abandoned = dict(self.abandoned)
        abandoned.pop(rollout_id, None)
        abandoned[rollout_id] = version
        generations = dict(self.abandoned_retry)
        generations.pop(rollout_id, None)
        generations[rollout_id] = self.target_retry
        return replace(
            self,
            abandoned=_keep_last(abandoned, keep),
            abandoned_retry=_keep_last(generations, keep),
        )

    def abandoned_version(self, rollout_id: str, retry: int) -> str | None:
        """The version not to retry in ``rollout_id`` at retry generation ``retry``, if any."""
        if retry > self.abandoned_retry.get(rollout_id, 0):
            return None  # the server offers it again
        return self.abandoned.get(rollout_id)

    def forgive(self, rollout_id: str) -> AgentState:
        """A copy that forgets the failures of ``rollout_id`` (a retry generation starts)."""
        failure = self.last_failure
        return replace(
            self,
            abandoned={k: v for k, v in self.abandoned.items() if k != rollout_id},
            abandoned_retry={k: v for k, v in self.abandoned_retry.items() if k != rollout_id},
            reported={k: v for k, v in self.reported.items() if k != rollout_id},
            last_failure=None if failure and failure["rollout_id"] == rollout_id else failure,
        )


def _optional_version(value: Any) -> str | None:
    if value is None:
        return None
    Version.parse(str(value))
    return str(value)


def _failure(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError("last_failure must be an object")
    return {str(k): str(v) for k, v in value.items()}


def seen(current: str | None, version: str | None) -> str | None:
    """The newer of ``current`` and ``version`` (either may be None)."""
    if version is None:
        return current
    if current is None or Version.parse(version) > Version.parse(current):
        return version
    return current


def _keep_last(mapping: dict[str, Any], keep: int) -> dict[str, Any]:
    items = list(mapping.items())[-keep:]
    return dict(items)


class StateStore:
    """Loads and saves ``agent.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> AgentState:
        """The persisted state, or a fresh one when there is none.

        Raises:
            RepositoryError: the file exists but is corrupt.
        """
        try:
            return AgentState.from_json(read_json(self.path))
        except FileNotFoundError:
            return AgentState()

    def save(self, state: AgentState) -> None:
        atomic_write_json(self.path, state.to_json(), mode=0o600)


@dataclass(frozen=True)
class FlushResult:
    """What one outbox flush achieved."""

    delivered: int = 0
    dropped: int = 0
    remaining: int = 0
    unauthorized: bool = False
    error: str = ""


class Outbox:
    """Signed reports waiting for the server, one file per seq."""

    def __init__(self, directory: Path, max_queued: int) -> None:
        self.dir = directory
        self._max = max_queued

    def seqs(self) -> list[int]:
        """Queued seqs, ascending."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := _OUTBOX_NAME.match(n)))

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:012d}.json"

    def highest_seq(self) -> int:
        seqs = self.seqs()
        return seqs[-1] if seqs else 0

    def put(self, seq: int, envelope: dict[str, Any]) -> None:
        """Queue ``envelope`` under ``seq``; beyond the cap, drop the oldest reports."""
        atomic_write_json(self._path(seq), envelope, mode=0o600)
        seqs = self.seqs()
        for old in seqs[: max(0, len(seqs) - self._max)]:
            logger.warning("outbox is full; dropping undelivered report %d", old)
            self._remove(old)

    def read(self, seq: int) -> dict[str, Any] | None:
        try:
            data = read_json(self._path(seq))
        except (FileNotFoundError, RepositoryError):
            return None
        return data if isinstance(data, dict) else None

    def _drop_trailing(self, superseded: Callable[[dict[str, Any]], bool]) -> None:
        seqs = self.seqs()
        if not seqs:
            return
        envelope = self.read(seqs[-1])
        report = envelope.get("report") if envelope else None
        if isinstance(report, dict) and superseded(report):
            self._remove(seqs[-1])

    def drop_trailing_heartbeat(self) -> None:
        """Remove the newest queued report if it is an idle heartbeat (a newer one replaces it)."""
        self._drop_trailing(lambda r: r.get("state") == "idle")

    def drop_trailing_progress(self) -> None:
        """Remove the newest queued report if it is a download progress report."""
        self._drop_trailing(
            lambda r: (
                r.get("state") == "downloading"
                and str(r.get("message", "")).endswith("% downloaded")
            )
        )

    def _remove(self, seq: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(seq))
        fsync_dir(self.dir)

    def flush(self, sender: ReportSender, limit: int, deadline: float | None = None) -> FlushResult:
        """Deliver queued reports in seq order until one must wait or ``deadline`` passes.

        ``deadline`` is a ``time.monotonic()`` instant. Never raises for network
        or server failures; they end the flush and the reports stay queued.
        """
        delivered = dropped = 0
        error = ""
        unauthorized = False
        for seq in self.seqs()[:limit]:
            if deadline is not None and time.monotonic() >= deadline:
                error = "flush deadline reached"
                break
            envelope = self.read(seq)
            if envelope is None:
                logger.warning("outbox report %d is unreadable; dropping it", seq)
                self._remove(seq)
                dropped += 1
                continue
            outcome, detail = sender.send(envelope, deadline)
            if outcome in (Delivery.ACCEPTED, Delivery.DUPLICATE):
                logger.debug("report %d delivered (%s)", seq, detail)
                self._remove(seq)
                delivered += 1
            elif outcome is Delivery.REJECTED:
                logger.error("server refused report %d as malformed (%s); dropping it", seq, detail)
                self._remove(seq)
                dropped += 1
            else:
                unauthorized = outcome is Delivery.UNAUTHORIZED
                if unauthorized:
                    logger.error("server does not accept this device (%s); keeping reports", detail)
                else:
                    logger.info("report server unavailable (%s); will retry", detail)
                error = detail
                break
        return FlushResult(delivered, dropped, len(self.seqs()), unauthorized, error)
