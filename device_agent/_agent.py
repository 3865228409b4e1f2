"""The orchestrator: one crash-safe update cycle, and the poll loop around it.

A cycle (``Agent.run_once``) does, in order:
 1. finish a pending boot: boot the try-slot, health-check, commit or roll back;
 2. flush the report outbox;
 3. TUF refresh, read the rollout document, decide (``_decide``);
 4. download the firmware target, verified by ngclient;
 5. install it into the inactive slot and persist ``rebooting``;
 6. flush the outbox again.
The next cycle (the agent's next start, after the device rebooted) completes
step 1.

Invariants:
* Every transition is persisted (``_state``) before the side effect it
  licenses is relied on, and every side effect is idempotent or detectable on
  restart: an interrupted ``installing`` is resumed from the installer's own
  boot control (install complete -> ``rebooting``; incomplete -> start over),
  so a killed agent never installs the same image twice and never leaves the
  committed slot unbootable (the installer never writes it).
* ``succeeded`` is reported only after the new image booted, passed the
  health check and was committed. A pending image is tried at most
  ``max_boot_attempts`` times; then the previous image is back.
* A version that rolled back (or failed to install) is not retried within
  the same rollout until the server raises the signed document's ``retry``
  generation above the one the failed attempt came from; a downgrade is never
  installed. Each failure code is reported once per rollout and retry
  generation; later cycles send idle heartbeats that repeat the failure.
* Unverified bytes never reach a slot: the installer only sees files that
  ngclient verified against signed metadata.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import requests
from securesystemslib.signer import Signer
from tqdm import tqdm
from tuf.api.metadata import TargetFile

from device_agent._bundle import (
    Bundle,
    check_bundle_firmware,
    default_target,
    is_archive,
    open_archive,
    read_bundle,
)
from device_agent._config import AgentConfig
from device_agent._decide import IDLE, DevicePolicy, check_firmware, decide
from device_agent._delta import NOT_TRIED, delta_message, fetch_via_delta
from device_agent._download import ByteSource, Downloader, FileSource, HttpSource
from device_agent._errors import (
    BOOT_ATTEMPTS_EXHAUSTED,
    INSTALL_FAILED,
    REPORTED_TRANSPORT_CODES,
    WRONG_HARDWARE,
    coded,
)
from device_agent._http import FileFetcher, HttpFetcher, ReportSender, make_session
from device_agent._identity import load_device_signer
from device_agent._installer import Installer, make_installer, run_health_check
from device_agent._pace import DataBudget
from device_agent._state import AgentState, FlushResult, Outbox, StateStore, seen
from device_agent._tufclient import TufClient
from tufota_core import (
    ConflictError,
    InstallError,
    Report,
    RolloutDoc,
    TransportError,
    TufotaError,
    VerificationError,
    format_time,
    sign_report,
    utcnow,
)

logger = logging.getLogger(__name__)

_MAX_MESSAGE = 1000

# What a cycle did (CycleResult.action).
ACTION_IDLE = "idle"  # nothing to install
ACTION_REFUSED = "refused"  # the verified facts forbid installing (code says why)
ACTION_UNREACHABLE = "unreachable"  # the repository could not be reached
ACTION_FAILED = "failed"  # download or install failed (code says why)
ACTION_REBOOTING = "rebooting"  # installed; the next start boots it
ACTION_SUCCEEDED = "succeeded"  # booted, healthy, committed
ACTION_ROLLED_BACK = "rolled_back"  # boot or health check failed; previous image active


@dataclass(frozen=True)
class CycleResult:
    """The outcome of one ``Agent.run_once``.

    Attributes:
        state: The agent state after the cycle (tufota_core.DEVICE_STATES).
        action: What the cycle did; one of the ``ACTION_*`` names.
        installed_version: The committed version after the cycle.
        target_version: The version a rollout offered, if any.
        rollout_id: The rollout acted on, if any.
        error_code: The specific code when the action is a failure or refusal.
        message: A one-line explanation.
        reports_pending: Reports still in the outbox.
        backoff: True when the server was unreachable or refused the device;
            the poll loop waits longer.
    """

    state: str
    action: str
    installed_version: str | None
    target_version: str | None = None
    rollout_id: str | None = None
    error_code: str | None = None
    message: str = ""
    reports_pending: int = 0
    backoff: bool = False

    @property
    def reboot_pending(self) -> bool:
        """True when an image is installed and waits for the next start to boot it."""
        return self.state == "rebooting"


def _about(doc: RolloutDoc | None) -> tuple[str | None, str | None]:
    return (doc.rollout_id, doc.version) if doc else (None, None)


def _failure(state: AgentState, code: str | None, message: str) -> dict[str, str]:
    return {
        "rollout_id": state.rollout_id or "",
        "version": state.target_version or "",
        "code": code or INSTALL_FAILED,
        "message": message[:300],
    }


class Agent:
    """Drives the update state machine for one device configuration."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        installer: Installer | None = None,
        signer: Signer | None = None,
        session: requests.Session | None = None,
    ) -> None:
        """Prepare an agent; nothing is read from the network or key files yet.

        Args:
            config: The loaded ``agent.toml``.
            installer: Overrides the installer ``config`` selects.
            signer: Overrides the device key from ``config``.
            session: Overrides the HTTP session metadata and firmware are fetched
                with (TLS settings from ``config``); reports use their own
                bounded connection (``_http.ReportSender``).
        """
        self.config = config
        self.installer = installer or make_installer(config)
        self._store = StateStore(config.state_dir / "agent.json")
        self._outbox = Outbox(config.state_dir / "outbox", config.limits.max_queued_reports)
        self._signer = signer
        self._session = session or make_session(config)
        self._sender = ReportSender(config)
        self._state = AgentState()
        self._queued = 0
        self._unauthorized = False
        self._offline = False
        # Set when a delivery failed this cycle: later flushes of the cycle are
        # skipped, so a hostile or dead report path costs one deadline per cycle.
        self._channel_down = False

    def close(self) -> None:
        """Release the HTTP session."""
        self._session.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """State file, installer status and outbox size, JSON-able.

        Raises:
            RepositoryError: the state or boot-control file is corrupt.
            InputError: the slots are not initialised.
        """
        state = self._store.load()
        return {
            "device_id": self.config.device_id,
            "hardware_id": self.config.hardware_id,
            "installed_version": self.installer.installed_version(),
            "pending_version": self.installer.pending_version(),
            "agent": state.to_json(),
            "installer": self.installer.status(),
            "reports_pending": len(self._outbox.seqs()),
        }

    def run_once(self) -> CycleResult:
        """One update cycle (see the module docstring).

        Failures a device reports (verification, download, install, health)
        are handled here and come back in the result; only local problems
        (missing keys, corrupt state, uninitialised slots) raise.

        Raises:
            InputError: configuration, key or slot files are missing or invalid.
            RepositoryError: the local state or boot-control file is corrupt.
        """
        self.config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._queued = 0
        self._unauthorized = False
        self._channel_down = False
        self._offline = False
        self._load_state()
        boot_result = self._finish_pending_boot()
        self._flush()
        result = self._check_for_update()
        if boot_result is not None and result.action in (ACTION_IDLE, ACTION_UNREACHABLE):
            result = replace(boot_result, backoff=result.backoff)
        self._flush()
        return replace(
            result,
            reports_pending=len(self._outbox.seqs()),
            backoff=result.backoff or self._unauthorized,
        )

    # -- state and reports -------------------------------------------------------

    def _load_state(self) -> None:
        state = self._store.load()
        highest = self._outbox.highest_seq()
        if state.next_seq <= highest:
            # A report was queued but the state recording it was not saved.
            state = replace(state, next_seq=highest + 1)
            self._store.save(state)
        self._state = state

    def _get_signer(self) -> Signer:
        if self._signer is None:
            self._signer = load_device_signer(self.config.key_path, self.config.public_key_path)
        return self._signer

    def _transition(
        self,
        new_state: str | None = None,
        *,
        report: str | None = None,
        error_code: str | None = None,
        message: str = "",
        bytes_done: int = 0,
        bytes_total: int = 0,
        bytes_fetched: int = 0,
        delta_from: str | None = None,
        about: tuple[str | None, str | None] | None = None,
        **changes: Any,
    ) -> None:
        """Persist a transition; queue its report first (see ``_state`` on seq safety).

        The report names the state's rollout and target version unless
        ``about`` gives another (rollout id, version) pair.
        """
        state = replace(self._state, **changes)
        if new_state is not None:
            state = replace(state, state=new_state)
        if report is not None:
            rollout_id, target_version = about or (state.rollout_id, state.target_version)
            seq = state.next_seq
            signed = Report(
                device_id=self.config.device_id,
                hardware_id=self.config.hardware_id,
                seq=seq,
                state=report,
                installed_version=self.installer.installed_version(),
                target_version=target_version,
                rollout_id=rollout_id,
                error_code=error_code,
                message=message[:_MAX_MESSAGE],
                bytes_done=bytes_done,
                bytes_total=bytes_total,
                time=format_time(utcnow()),
                bytes_fetched=bytes_fetched,
                delta_from=delta_from,
            )
            envelope = sign_report(signed, self._get_signer())
            if report == "idle":
                self._outbox.drop_trailing_heartbeat()
            self._outbox.put(seq, envelope)
            state = replace(state, next_seq=seq + 1)
            self._queued += 1
        self._store.save(state)
        self._state = state

    def _flush(self) -> FlushResult:
        """Deliver what the outbox holds, within ``flush_deadline``; never blocks a cycle long.

        After a failed delivery the rest of the cycle does not try again: the
        reports stay queued for the next cycle.
        """
        if self._offline or self._channel_down:
            return FlushResult(remaining=len(self._outbox.seqs()))
        limits = self.config.limits
        deadline = time.monotonic() + limits.flush_deadline
        result = self._outbox.flush(self._sender, limits.max_reports_per_flush, deadline)
        self._unauthorized = self._unauthorized or result.unauthorized
        if result.error:
            self._channel_down = True
        return result

    def _result(self, action: str, **fields: Any) -> CycleResult:
        fields.setdefault("rollout_id", self._state.rollout_id)
        fields.setdefault("target_version", self._state.target_version)
        return CycleResult(
            state=self._state.state,
            action=action,
            installed_version=self.installer.installed_version(),
            **fields,
        )

    def _heartbeat(self, doc: RolloutDoc | None, reason: str, code: str | None = None) -> None:
        """Queue an idle report, unless this cycle already told the server something.

        About a rollout whose release rolled back or failed to install here, the
        heartbeat repeats that failure's code and message (the rollout being
        paused since is secondary), so the server keeps showing the real cause.
        """
        logger.debug("idle: %s", reason)
        failure = self._state.last_failure
        if code is None and doc is not None and failure and failure["rollout_id"] == doc.rollout_id:
            code = failure["code"]
            reason = f"{failure['version']} failed here: {failure['message']} ({reason})"
        if not self._queued:
            self._transition(
                "idle", report="idle", message=reason, error_code=code, about=_about(doc)
            )

    # -- step 1: finish a pending boot ------------------------------------------------

    def _finish_pending_boot(self) -> CycleResult | None:
        state = self._state
        if state.state == "installing":
            if state.target_version and self.installer.pending_version() == state.target_version:
                logger.info("install of %s completed before a restart", state.target_version)
                self._transition("rebooting", report="rebooting")
            else:
                logger.warning("install of %s was interrupted; starting over", state.target_version)
                self._transition("idle")
                return None
        if self._state.state not in ("rebooting", "verifying"):
            return None
        target = self._state.target_version
        pending = self.installer.pending_version()
        if pending is None:
            if target is not None and self.installer.installed_version() == target:
                return self._succeeded()  # committed just before a restart
            code = self._state.pending_error or INSTALL_FAILED
            return self._rolled_back(code, f"{target} is no longer pending")
        if pending != target:
            return self._roll_back(INSTALL_FAILED, f"pending image is {pending}, expected {target}")
        if self._state.pending_error:
            return self._roll_back(self._state.pending_error, f"{target} failed before a restart")
        try:
            boot = self.installer.boot(self.config.max_boot_attempts)
        except InstallError as e:
            return self._roll_back(e.code, str(e))
        if boot.fell_back:
            return self._rolled_back(
                BOOT_ATTEMPTS_EXHAUSTED,
                f"{target} did not pass its health check in {self.config.max_boot_attempts} boots",
            )
        self._transition("verifying", report="verifying", message=f"boot attempt {boot.attempt}")
        try:
            run_health_check(self.config, target, {"TUFOTA_BOOT_ATTEMPT": str(boot.attempt)})
        except InstallError as e:
            return self._roll_back(e.code, str(e))
        self.installer.commit()
        return self._succeeded()

    def _succeeded(self) -> CycleResult:
        self._transition("succeeded", report="succeeded", pending_error=None)
        logger.info("update to %s succeeded", self._state.target_version)
        return self._result(ACTION_SUCCEEDED)

    def _roll_back(self, code: str, message: str) -> CycleResult:
        # Record why before acting, so a crash mid-rollback reports the right cause.
        self._transition(pending_error=code)
        self.installer.rollback()
        return self._rolled_back(code, message)

    def _rolled_back(self, code: str, message: str) -> CycleResult:
        state = self._state
        if state.rollout_id and state.target_version:
            state = state.abandon(
                state.rollout_id, state.target_version, self.config.limits.max_remembered_rollouts
            )
            state = replace(state, last_failure=_failure(state, code, message))
        self._state = state
        self._transition(
            "rolled_back",
            report="rolled_back",
            error_code=code,
            message=message,
            pending_error=None,
        )
        logger.warning("update to %s rolled back (%s): %s", state.target_version, code, message)
        return self._result(ACTION_ROLLED_BACK, error_code=code, message=message)

    # -- steps 3 to 5 --------------------------------------------------------------

    def _check_for_update(self) -> CycleResult:
        fetcher = HttpFetcher(self._session, self.config.limits)
        try:
            client = TufClient(self.config, fetcher)
            client.refresh()
            doc = client.rollout_doc()
        except TransportError as e:
            logger.info("repository unreachable: %s", e)
            if e.code in REPORTED_TRANSPORT_CODES:
                self._refuse(None, e)
            return self._result(ACTION_UNREACHABLE, error_code=e.code, message=str(e), backoff=True)
        except VerificationError as e:
            return self._refuse(None, e)
        if "" in self._state.reported:
            # Metadata verifies again; report the next metadata failure afresh.
            self._state = replace(
                self._state, reported={k: v for k, v in self._state.reported.items() if k}
            )
        installed = self.installer.installed_version()
        self._note_seen(installed)
        if doc is None:
            client.clean_downloads()
            self._heartbeat(None, "no rollout for this hardware")
            return self._result(ACTION_IDLE, message="no rollout for this hardware")
        config = self.config
        try:
            decision = decide(
                doc,
                device_id=config.device_id,
                hardware_id=config.hardware_id,
                tags=config.tags,
                installed_version=installed,
                abandoned_version=self._state.abandoned_version(doc.rollout_id, doc.retry),
                policy=DevicePolicy(
                    config.maintenance_window, config.min_version, self._state.newest_seen
                ),
            )
        except VerificationError as e:
            return self._refuse(doc, e)
        self._note_signed_release(client, doc)
        if decision.action == IDLE:
            client.clean_downloads()
            self._heartbeat(doc, decision.reason, decision.code)
            return self._result(
                ACTION_IDLE,
                message=decision.reason,
                rollout_id=doc.rollout_id,
                target_version=doc.version,
                error_code=decision.code,
            )
        if doc.rollout_id in self._state.abandoned:
            logger.info(
                "rollout %s offers %s again (retry %d)", doc.rollout_id, doc.version, doc.retry
            )
            self._state = self._state.forgive(doc.rollout_id)
        logger.info("update available: %s", decision.reason)
        return self._update(client, doc)

    def _note_signed_release(self, client: TufClient, doc: RolloutDoc) -> None:
        """Raise the newest-seen floor to a release any rollout document named.

        Whatever the document's state (a paused or aborted rollout's release
        still exists), but only once the offline product-line key is found to
        sign that firmware: a document forged with the online key alone cannot
        poison the floor with a version that was never released.
        """
        try:
            info = client.firmware_target(doc.target_path)
        except (TransportError, VerificationError):
            return
        custom = info.custom if isinstance(info.custom, dict) else {}
        if custom.get("version") == doc.version:
            self._note_seen(doc.version)

    def _note_seen(self, version: str | None) -> None:
        """Raise the persisted newest-seen version to ``version`` (never lowers it)."""
        newest = seen(self._state.newest_seen, version)
        if newest != self._state.newest_seen:
            self._state = replace(self._state, newest_seen=newest)
            self._store.save(self._state)

    def _refuse(
        self, doc: RolloutDoc | None, error: TufotaError, *, keep_state: bool = False
    ) -> CycleResult:
        """Report ``error`` as ``failed`` once per rollout and code; heartbeat afterwards.

        With ``keep_state`` (a download that will resume) the report is sent but
        the persisted state stays ``downloading``.
        """
        rollout = doc.rollout_id if doc else None
        fields: dict[str, Any] = {"error_code": error.code, "message": str(error)}
        if doc is not None:
            fields.update(rollout_id=doc.rollout_id, target_version=doc.version)
        # A resumable failure (disk_full) that follows this cycle's "downloading"
        # report is sent again, so the server's last view of the device is the failure.
        repeat = keep_state and self._queued
        if self._state.already_reported(rollout, error.code) and not repeat:
            logger.debug("still refusing (%s): %s", error.code, error)
            self._heartbeat(doc, f"refusing: {error}")
        else:
            logger.warning("refusing update (%s): %s", error.code, error)
            self._state = self._state.remember_report(
                rollout, error.code, self.config.limits.max_remembered_rollouts
            )
            changes: dict[str, Any] = {}
            if doc is not None:  # no install is in flight after step 1
                changes = {
                    "rollout_id": doc.rollout_id,
                    "target_version": doc.version,
                    "target_path": doc.target_path,
                }
            self._transition(
                None if keep_state else "failed",
                report="failed",
                error_code=error.code,
                message=str(error),
                about=_about(doc),
                **({} if keep_state else changes),
            )
        return self._result(ACTION_REFUSED, **fields)

    def _update(self, client: TufClient, doc: RolloutDoc) -> CycleResult:
        limits = self.config.limits
        try:
            info = client.firmware_target(doc.target_path)
            check_firmware(doc, info.custom, info.length, limits.max_firmware_bytes)
        except TransportError as e:
            if e.code in REPORTED_TRANSPORT_CODES:
                self._refuse(doc, e)
            return self._result(ACTION_UNREACHABLE, error_code=e.code, message=str(e), backoff=True)
        except VerificationError as e:
            return self._refuse(doc, e)
        return self._download_and_install(
            client,
            info,
            doc.version,
            rollout_id=doc.rollout_id,
            doc=doc,
            source=HttpSource(self._session, limits),
        )

    def _downloader(self, source: ByteSource, total: int) -> tuple[Downloader, Callable[[], None]]:
        """A downloader whose progress goes to a terminal bar and/or to progress reports."""
        config = self.config
        budget = None
        if config.data_budget:
            budget = DataBudget(
                config.state_dir / "budget.json",
                config.data_budget,
                config.budget_period,
                config.limits.budget_save_bytes,
            )
        bar = progress_bar(total, sys.stderr) if config.progress == "auto" else None
        step = config.progress_step
        next_report = [0]
        last_report = [time.monotonic()]
        # At least once per poll interval too: the server calls a device silent
        # after a few poll intervals without news.
        heartbeat = min(config.heartbeat_interval, config.poll_interval)

        def progress(done: int, size: int) -> None:
            if bar is not None:
                bar.update(done - bar.n)
            if not size or done >= size:
                return
            now = time.monotonic()
            stepped = step and done * 100 >= next_report[0] * size
            # A heartbeat at least every heartbeat_interval, so a slow download
            # never looks silent to the server.
            if stepped or now - last_report[0] >= heartbeat:
                percent = done * 100 // size
                if next_report[0] or not stepped:  # "downloading" already said 0 %
                    self._progress_report(done, size, f"{percent}% downloaded")
                    last_report[0] = now
                if step:
                    next_report[0] = (percent // step + 1) * step

        def close() -> None:
            if bar is not None:
                bar.close()

        downloader = Downloader(
            source, config.limits, rate_limit=config.rate_limit, budget=budget, progress=progress
        )
        return downloader, close

    def _progress_report(self, done: int, total: int, message: str) -> None:
        """Queue a progress report (replacing an undelivered one) and try to deliver it."""
        self._outbox.drop_trailing_progress()
        self._transition(report="downloading", bytes_done=done, bytes_total=total, message=message)
        if not self._offline:
            self._flush()

    def _download_and_install(
        self,
        client: TufClient,
        info: TargetFile,
        version: str,
        *,
        rollout_id: str | None,
        doc: RolloutDoc | None,
        source: ByteSource,
    ) -> CycleResult:
        limits = self.config.limits
        sha256 = info.hashes.get("sha256") or next(iter(info.hashes.values()))
        dest = self.installer.download_path(sha256, client.download_dir)
        partial = dest.with_name(dest.name + ".part")
        resumed = partial.stat().st_size if partial.exists() else 0
        self._transition(
            "downloading",
            report="downloading",
            bytes_done=resumed,
            bytes_total=info.length,
            message=f"resuming at byte {resumed}" if resumed else "",
            rollout_id=rollout_id,
            target_version=version,
            target_path=info.path,
            target_sha256=None,
            pending_error=None,
            target_retry=doc.retry if doc is not None else 0,
        )
        self._flush()  # the server sees "downloading" now, not at the first progress step
        downloader, close = self._downloader(source, info.length)
        delta = NOT_TRIED
        try:
            result = None
            if isinstance(source, HttpSource):
                # A signed delta from the active slot when there is one; any refusal
                # falls back to the full image below, in the same cycle.
                result, delta = fetch_via_delta(
                    client,
                    downloader,
                    hardware_id=self.config.hardware_id,
                    installed_version=self.installer.installed_version(),
                    active_image=self.installer.active_image(),
                    result=info,
                    dest=dest,
                )
            if result is None:
                result = client.download(info, dest, downloader)
        except TransportError as e:
            logger.info("download interrupted (%s): %s", e.code, e)
            if e.code in REPORTED_TRANSPORT_CODES:
                self._refuse(doc, e, keep_state=True)
            return self._result(ACTION_UNREACHABLE, error_code=e.code, message=str(e), backoff=True)
        except VerificationError as e:
            client.clean_downloads()
            return self._refuse(doc, e)
        except InstallError as e:  # disk_full: the partial stays for the next attempt
            logger.error("download stopped (%s): %s", e.code, e)
            self._refuse(doc, e, keep_state=True)
            return self._result(ACTION_FAILED, error_code=e.code, message=str(e), backoff=True)
        finally:
            close()
        logger.info(
            "downloaded %s: %d bytes fetched%s",
            info.path,
            result.fetched,
            f", resumed at {result.resumed_from}" if result.resumed_from else "",
        )
        fetched = result.fetched + (0 if delta.used else delta.fetched)
        self._transition(
            "downloaded",
            report="downloaded",
            bytes_done=info.length,
            bytes_total=info.length,
            bytes_fetched=fetched,
            delta_from=delta.source_version if delta.used else None,
            message=delta_message(delta, fetched, info.length),
            target_sha256=result.sha256,
        )
        self._transition("installing", report="installing")
        try:
            self.installer.install(result.path, version, result.sha256)
        except InstallError as e:
            logger.error("install of %s failed: %s", version, e)
            if rollout_id is not None:
                self._state = self._state.abandon(
                    rollout_id, version, limits.max_remembered_rollouts
                )
                self._state = replace(
                    self._state, last_failure=_failure(self._state, e.code, str(e))
                )
            self._transition("failed", report="failed", error_code=e.code, message=str(e))
            return self._result(ACTION_FAILED, error_code=e.code, message=str(e))
        self._transition("rebooting", report="rebooting")
        client.clean_downloads()
        logger.info("installed %s; it boots on the next start", version)
        return self._result(ACTION_REBOOTING, message=f"{version} installed; reboot pending")

    # -- offline bundles -------------------------------------------------------------

    def install_bundle(self, path: Path) -> CycleResult:
        """Install the firmware in an offline bundle, verified against the trusted root.

        ``path`` is an archive (``.tar.gz``/``.tgz``/``.tar`` from ``tufota release
        export``), unpacked into a temporary directory under ``state_dir`` first,
        or a directory copy of the repository's public tree (``_bundle``).

        The bundle's metadata goes through the same ngclient checks and the
        same metadata cache as online updates (so a bundle older than what the
        device already trusts is a rollback), and the firmware through the same
        hardware and version rules (never a version <= the installed one).
        Reports are queued, not sent; the next online cycle delivers them.

        Raises:
            InputError: the path is not a bundle (an upload bundle for the server
                included); a local file is missing.
            RepositoryError: the local state or boot-control file is corrupt.
        """
        self.config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._offline = True
        self._queued = 0
        self._load_state()
        if self._state.state in ("installing", "rebooting", "verifying"):
            raise ConflictError(
                f"an update to {self._state.target_version} is in progress ({self._state.state}); "
                "run the agent to finish it first"
            )
        if is_archive(path):
            with open_archive(path, self.config.state_dir / "bundles", self.config.limits) as b:
                return self._install_from(b, path)
        return self._install_from(read_bundle(path), path)

    def _install_from(self, bundle: Bundle, origin: Path) -> CycleResult:
        parts = (bundle.target_path or "").split("/")
        if len(parts) == 4 and parts[1] != self.config.hardware_id:
            # Said before any metadata is read; the signed target is checked below anyway.
            return self._refuse(
                None,
                coded(
                    VerificationError(
                        f"bundle {origin} is for hardware {parts[1]}, "
                        f"this device is {self.config.hardware_id}"
                    ),
                    WRONG_HARDWARE,
                ),
            )
        fetcher = FileFetcher(self.config.limits.chunk_size)
        try:
            client = TufClient(self.config, fetcher, base_url=bundle.base_url)
            client.refresh()
            target_path = bundle.target_path or default_target(
                client.rollout_doc(), self.config.hardware_id
            )
            info = client.firmware_target(target_path)
            firmware = check_bundle_firmware(
                target_path,
                info.custom,
                info.length,
                hardware_id=self.config.hardware_id,
                installed_version=self.installer.installed_version(),
                max_bytes=self.config.limits.max_firmware_bytes,
            )
        except (TransportError, VerificationError) as e:
            return self._refuse(None, e)
        logger.info("installing %s from bundle %s", firmware.version, origin)
        return self._download_and_install(
            client,
            info,
            firmware.version,
            rollout_id=None,
            doc=None,
            source=FileSource(self.config.limits.download_chunk_size),
        )


_FALLBACK_SIZE = os.terminal_size((80, 24))


def progress_bar(total: int, stream: Any) -> tqdm[Any] | None:
    """A tqdm bar on ``stream`` when it is a terminal, else None.

    Serial consoles often report a 0x0 size, on which tqdm draws nothing (it
    takes the 0 rows as "no room for any bar"): the bar then gets a fixed
    80x24 terminal.
    """
    try:
        if not stream.isatty():
            return None
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="firmware",
        file=stream,
        ncols=size.columns if size.columns > 0 else _FALLBACK_SIZE.columns,
        nrows=size.lines if size.lines > 0 else _FALLBACK_SIZE.lines,
    )


def run_agent_loop(
    config: AgentConfig,
    *,
    once: bool = False,
    stop: threading.Event | None = None,
    on_cycle: Callable[[CycleResult], None] | None = None,
) -> CycleResult:
    """Run cycles until ``stop`` is set (or one cycle when ``once``).

    Between cycles the loop waits ``poll.interval`` +- ``poll.jitter``; while
    the server is unreachable or refuses the device the wait doubles up to
    ``max_backoff_factor`` times the interval. After a cycle that installed an
    image the next cycle starts at once: with the A/B simulator, that cycle is
    the "reboot" that boots and health-checks the new image. The first cycle
    runs as soon as the loop starts.

    A cycle that raises (a local problem: a full disk, a corrupt state file,
    a missing key) is logged and retried with backoff; the loop never exits
    because of one, except with ``once``.

    Returns:
        The last cycle's result.

    Raises:
        TufotaError, OSError: with ``once``, a local problem ``Agent.run_once`` raises.
    """
    stop = stop or threading.Event()
    rng = random.SystemRandom()
    factor = 1
    with Agent(config) as agent:
        while True:
            try:
                result = agent.run_once()
            except (TufotaError, OSError) as e:
                if once:
                    raise
                logger.error("update cycle failed: %s; retrying with backoff", e)
                result = CycleResult(
                    state=agent._state.state,
                    action=ACTION_FAILED,
                    installed_version=None,
                    error_code=getattr(e, "code", None),
                    message=str(e),
                    backoff=True,
                )
            if on_cycle is not None:
                on_cycle(result)
            if once or stop.is_set():
                return result
            if result.reboot_pending:
                continue
            factor = min(factor * 2, config.limits.max_backoff_factor) if result.backoff else 1
            jitter = config.poll_jitter
            base = min(config.poll_interval * factor, max(config.backoff_cap, config.poll_interval))
            delay = base * rng.uniform(1 - jitter, 1 + jitter)
            logger.debug("next cycle in %.0f s", delay)
            if stop.wait(delay):
                return result
