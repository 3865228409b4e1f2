"""The agent's TUF client: refresh, read the rollout document, download firmware.

All verification is ``tuf.ngclient``'s (TUF specification, section 5 "Detailed
client workflow"): root rotation, timestamp/snapshot/targets freshness and
rollback checks, delegation walk to the terminating ``rollouts`` and
``firmware-<hw>`` roles, and target length and hash. This module only wires it
up and translates failures into tufota errors with report codes.

Invariants:
* The trust anchor is the provisioned ``root.json`` (passed as ``bootstrap``);
  newer roots come only through ngclient's verified rotation chain, cached
  under ``state_dir/metadata/root_history``.
* Firmware bytes are fetched by ``_download.Downloader`` (one pass, resumable)
  against the ``TargetFile`` ngclient verified; the file appears at its final
  name only after its length and every hash matched.
* Failures map to specific report codes: network/HTTP -> ``TransportError``
  (``server_unreachable``, ``slow_retrieval``); bad metadata ->
  ``VerificationError`` with ``metadata_expired`` (freeze),
  ``metadata_rollback`` (a version lower than one already trusted),
  ``metadata_version_mismatch`` (mix-and-match: a file that is not the version
  the snapshot or timestamp names), ``bad_signature`` (threshold not met, e.g.
  an unknown key), ``metadata_too_large`` (endless data), else
  ``metadata_verification_failed``; bad target bytes -> ``target_hash_mismatch``
  / ``target_length_mismatch``.
* Expiry is judged by the device's clock, so a ``metadata_expired`` message
  shows that clock beside the metadata's expiry (when ngclient kept the
  expired file) and says the clock may be wrong: a device a year ahead sees
  every repository as frozen.
"""

from __future__ import annotations

import contextlib
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from tuf.api import exceptions as tuf_exceptions

# Imported from the defining modules (see _identity.py).
from tuf.api.metadata import TargetFile
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from device_agent._config import AgentConfig
from device_agent._download import Downloader, DownloadResult, Expected
from device_agent._errors import (
    BAD_SIGNATURE,
    METADATA_EXPIRED,
    METADATA_ROLLBACK,
    METADATA_TOO_LARGE,
    METADATA_VERIFICATION_FAILED,
    METADATA_VERSION_MISMATCH,
    ROLLOUT_DOC_INVALID,
    SERVER_UNREACHABLE,
    SLOW_RETRIEVAL,
    TARGET_HASH_MISMATCH,
    TARGET_LENGTH_MISMATCH,
    TARGET_NOT_FOUND,
    WRONG_HARDWARE,
    coded,
)
from tufota_core import (
    InputError,
    NotFoundError,
    RepositoryError,
    RolloutDoc,
    TransportError,
    VerificationError,
    format_time,
    rollout_target_path,
)

logger = logging.getLogger(__name__)


_ROLE_MISMATCH = re.compile(r"^Expected \S+ v\d+, got v\d+")
_TUF_ERRORS = (tuf_exceptions.RepositoryError, tuf_exceptions.DownloadError, OSError)


def _metadata_code(error: tuf_exceptions.RepositoryError) -> str:
    if isinstance(error, tuf_exceptions.ExpiredMetadataError):
        return METADATA_EXPIRED
    if isinstance(error, tuf_exceptions.BadVersionNumberError):
        # ngclient has one class for both; its messages tell them apart. A file
        # that is not the version its parent names (mix-and-match) reads
        # "Expected snapshot version N, got M" or "Expected <role> vN, got vM.";
        # every other case is a version lower than one already trusted.
        text = str(error)
        if text.startswith("Expected snapshot version") or _ROLE_MISMATCH.match(text):
            return METADATA_VERSION_MISMATCH
        return METADATA_ROLLBACK
    if isinstance(error, tuf_exceptions.UnsignedMetadataError):
        return BAD_SIGNATURE
    if isinstance(error, tuf_exceptions.LengthOrHashMismatchError):
        return METADATA_VERSION_MISMATCH
    return METADATA_VERIFICATION_FAILED


def _wrap(error: Exception, what: str, *, target: bool = False) -> Exception:
    """Translate an ngclient exception raised while doing ``what``."""
    if isinstance(error, tuf_exceptions.DownloadLengthMismatchError):
        code = TARGET_LENGTH_MISMATCH if target else METADATA_TOO_LARGE
        return coded(VerificationError(f"{what}: {error}"), code)
    if isinstance(error, tuf_exceptions.SlowRetrievalError):
        return coded(TransportError(f"{what}: {error}"), SLOW_RETRIEVAL)
    if isinstance(error, tuf_exceptions.DownloadError):
        return coded(TransportError(f"{what}: {error}"), SERVER_UNREACHABLE)
    if isinstance(error, tuf_exceptions.LengthOrHashMismatchError) and target:
        return coded(VerificationError(f"{what}: {error}"), TARGET_HASH_MISMATCH)
    if isinstance(error, tuf_exceptions.RepositoryError):
        return coded(VerificationError(f"{what}: {error}"), _metadata_code(error))
    return RepositoryError(f"{what}: cannot use local storage: {error}")


class TufClient:
    """One refresh's worth of verified repository state (ngclient refreshes once per Updater)."""

    def __init__(
        self, config: AgentConfig, fetcher: FetcherInterface, *, base_url: str | None = None
    ) -> None:
        """Load the trust anchor and prepare the metadata cache.

        Args:
            config: The agent configuration.
            fetcher: How metadata is fetched.
            base_url: Where ``metadata/`` and ``targets/`` are (default: the
                server URL; an offline bundle passes its ``file://`` URL).

        Raises:
            NotFoundError: the provisioned trusted root file does not exist.
            VerificationError: it is not valid root metadata.
        """
        self._config = config
        base = (base_url or config.base_url).rstrip("/")
        self.metadata_dir = config.metadata_path
        self.download_dir = config.download_path
        self.targets_url = f"{base}/targets/"
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.download_dir.mkdir(parents=True, exist_ok=True)
        try:
            bootstrap = config.trusted_root.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"trusted root {config.trusted_root} does not exist") from None
        except OSError as e:
            raise InputError(f"cannot read trusted root {config.trusted_root}: {e}") from e
        try:
            self._updater = Updater(
                metadata_dir=str(self.metadata_dir),
                metadata_base_url=f"{base}/metadata/",
                target_dir=str(self.download_dir),
                target_base_url=self.targets_url,
                fetcher=fetcher,
                config=UpdaterConfig(prefix_targets_with_hash=True),
                bootstrap=bootstrap,
            )
        except (tuf_exceptions.RepositoryError, ValueError) as e:
            raise coded(
                VerificationError(f"trusted root {config.trusted_root} is not valid: {e}"),
                METADATA_VERIFICATION_FAILED,
            ) from e

    def refresh(self) -> None:
        """Update root, timestamp, snapshot and targets metadata (spec 5.3-5.6).

        Raises:
            TransportError: code ``server_unreachable``.
            VerificationError: code ``metadata_verification_failed``.
        """
        try:
            self._updater.refresh()
        except _TUF_ERRORS as e:
            raise self._error(e, "metadata refresh failed") from e

    def _error(self, error: Exception, what: str) -> Exception:
        """``_wrap``, with the device clock and the expiry in a ``metadata_expired`` message."""
        if not isinstance(error, tuf_exceptions.ExpiredMetadataError):
            return _wrap(error, what)
        text = str(error)
        expires = None
        for role in ("root", "timestamp", "snapshot"):
            if f"{role}.json" in text:
                # ngclient keeps an expired root, timestamp or snapshot it loaded.
                with contextlib.suppress(Exception):
                    expires = getattr(self._updater._trusted_set, role).expires
        dates = f"expired at {format_time(expires)}, " if expires is not None else ""
        return coded(
            VerificationError(
                f"{what}: {text}: {dates}device clock {format_time(datetime.now(UTC))} "
                "(the device clock may be wrong: expiry is checked against it)"
            ),
            METADATA_EXPIRED,
        )

    def targetinfo(self, path: str) -> TargetFile | None:
        """Verified target info for ``path`` via the delegation walk (spec 5.7), or None.

        Raises:
            TransportError, VerificationError: as for ``refresh``.
        """
        try:
            return self._updater.get_targetinfo(path)
        except _TUF_ERRORS as e:
            raise self._error(e, f"cannot look up target {path}") from e

    def rollout_doc(self) -> RolloutDoc | None:
        """The verified rollout document for this hardware, or None when there is none.

        Raises:
            TransportError: code ``server_unreachable``.
            VerificationError: ``metadata_verification_failed``, ``target_hash_mismatch``,
                ``rollout_doc_invalid`` (malformed or too large) or ``wrong_hardware``.
        """
        path = rollout_target_path(self._config.hardware_id)
        info = self.targetinfo(path)
        if info is None:
            return None
        limit = self._config.limits.max_rollout_doc_bytes
        if info.length > limit:
            raise coded(
                VerificationError(f"rollout document is {info.length} bytes, over {limit}"),
                ROLLOUT_DOC_INVALID,
            )
        data = self._download_to_memory(info)
        try:
            doc = RolloutDoc.from_bytes(data)
        except InputError as e:
            raise coded(VerificationError(str(e)), ROLLOUT_DOC_INVALID) from e
        if doc.hardware_id != self._config.hardware_id:
            raise coded(
                VerificationError(f"{path} names hardware {doc.hardware_id}"), WRONG_HARDWARE
            )
        return doc

    def _download_to_memory(self, info: TargetFile) -> bytes:
        part = self.download_dir / "rollout.json.part"
        try:
            self._updater.download_target(info, filepath=str(part))
            return part.read_bytes()
        except _TUF_ERRORS as e:
            raise _wrap(e, f"cannot download {info.path}", target=True) from e
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

    def firmware_target(self, path: str) -> TargetFile:
        """Verified target info of the firmware a rollout names.

        Raises:
            VerificationError: code ``target_not_found`` when no trusted role signs it.
            TransportError: code ``server_unreachable``.
        """
        info = self.targetinfo(path)
        if info is None:
            raise coded(
                VerificationError(f"firmware target {path} is not signed by a trusted role"),
                TARGET_NOT_FOUND,
            )
        return info

    def target_url(self, info: TargetFile) -> str:
        """The URL of ``info``'s bytes (hash-prefixed under consistent snapshots, as ngclient)."""
        path = info.path
        # ngclient has no public accessor for the trusted root; read it as download_target does.
        if self._updater._trusted_set.root.consistent_snapshot:
            dirname, sep, name = path.rpartition("/")
            path = f"{dirname}{sep}{next(iter(info.hashes.values()))}.{name}"
        return self.targets_url + quote(path)

    def download(self, info: TargetFile, dest: Path, downloader: Downloader) -> DownloadResult:
        """Fetch the verified bytes of ``info`` to ``dest`` (resuming, or reusing a verified copy).

        Raises:
            VerificationError: ``target_hash_mismatch`` or ``target_length_mismatch``;
                nothing is kept.
            TransportError: ``server_unreachable``, ``slow_retrieval``,
                ``download_failed`` or ``data_budget_exhausted``; a partial file is
                kept for the next attempt.
            RepositoryError: the local disk cannot be written.
        """
        return downloader.fetch(self.target_url(info), Expected.from_target(info), dest)

    def clean_downloads(self, keep: Path | None = None) -> None:
        """Remove staged images and partial downloads other than ``keep``."""
        if not self.download_dir.is_dir():
            return
        for entry in self.download_dir.iterdir():
            if entry != keep and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
