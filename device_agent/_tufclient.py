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
* A file appears under ``downloads/<sha256>.bin`` only after ngclient verified
  its length and hashes against signed metadata; it is fsynced and renamed
  into place, so a crash leaves no partially written file under that name.
* Failures map to: network/HTTP -> ``TransportError`` (``server_unreachable``);
  bad metadata -> ``VerificationError`` (``metadata_verification_failed``);
  bad target bytes -> ``VerificationError`` (``target_hash_mismatch``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from tuf.api import exceptions as tuf_exceptions

# Imported from the defining modules (see _identity.py).
from tuf.api.metadata import TargetFile
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from device_agent._config import AgentConfig
from device_agent._errors import (
    METADATA_VERIFICATION_FAILED,
    ROLLOUT_DOC_INVALID,
    SERVER_UNREACHABLE,
    TARGET_HASH_MISMATCH,
    TARGET_NOT_FOUND,
    WRONG_HARDWARE,
    coded,
)
from device_agent._fs import fsync_dir
from tufota_core import (
    InputError,
    NotFoundError,
    RepositoryError,
    RolloutDoc,
    TransportError,
    VerificationError,
    rollout_target_path,
)

logger = logging.getLogger(__name__)


_TUF_ERRORS = (tuf_exceptions.RepositoryError, tuf_exceptions.DownloadError, OSError)


def _wrap(error: Exception, what: str) -> Exception:
    """Translate an ngclient exception raised while doing ``what``."""
    if isinstance(error, tuf_exceptions.DownloadLengthMismatchError):
        return coded(VerificationError(f"{what}: {error}"), TARGET_HASH_MISMATCH)
    if isinstance(error, tuf_exceptions.DownloadError):
        return coded(TransportError(f"{what}: {error}"), SERVER_UNREACHABLE)
    if isinstance(error, tuf_exceptions.LengthOrHashMismatchError):
        return coded(VerificationError(f"{what}: {error}"), TARGET_HASH_MISMATCH)
    if isinstance(error, tuf_exceptions.RepositoryError):
        return coded(VerificationError(f"{what}: {error}"), METADATA_VERIFICATION_FAILED)
    return RepositoryError(f"{what}: cannot use local storage: {error}")


class TufClient:
    """One refresh's worth of verified repository state (ngclient refreshes once per Updater)."""

    def __init__(self, config: AgentConfig, fetcher: FetcherInterface) -> None:
        """Load the trust anchor and prepare the metadata cache.

        Raises:
            NotFoundError: the provisioned trusted root file does not exist.
            VerificationError: it is not valid root metadata.
        """
        self._config = config
        self.metadata_dir = config.state_dir / "metadata"
        self.download_dir = config.state_dir / "downloads"
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
                metadata_base_url=f"{config.base_url}/metadata/",
                target_dir=str(self.download_dir),
                target_base_url=f"{config.base_url}/targets/",
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
            raise _wrap(e, "metadata refresh failed") from e

    def targetinfo(self, path: str) -> TargetFile | None:
        """Verified target info for ``path`` via the delegation walk (spec 5.7), or None.

        Raises:
            TransportError, VerificationError: as for ``refresh``.
        """
        try:
            return self._updater.get_targetinfo(path)
        except _TUF_ERRORS as e:
            raise _wrap(e, f"cannot look up target {path}") from e

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
            raise _wrap(e, f"cannot download {info.path}") from e
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

    def staged_path(self, info: TargetFile) -> Path:
        """Where the verified image of ``info`` is kept until installed."""
        digest = info.hashes.get("sha256") or next(iter(info.hashes.values()))
        return self.download_dir / f"{digest}.bin"

    def download(self, info: TargetFile) -> Path:
        """Download and verify a target; reuse an already verified copy.

        Raises:
            VerificationError: code ``target_hash_mismatch``; nothing is kept.
            TransportError: code ``server_unreachable``.
        """
        final = self.staged_path(info)
        if self._updater.find_cached_target(info, str(final)) is not None:
            logger.debug("reusing verified download %s", final)
            return final
        part = final.with_suffix(".part")
        try:
            # ngclient verifies length and hashes before it writes ``part``.
            self._updater.download_target(info, filepath=str(part))
            with part.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(part, final)
            fsync_dir(final.parent)
        except _TUF_ERRORS as e:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            raise _wrap(e, f"download of {info.path} failed") from e
        return final

    def clean_downloads(self, keep: Path | None = None) -> None:
        """Remove staged images other than ``keep``."""
        for entry in self.download_dir.iterdir():
            if entry != keep and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
