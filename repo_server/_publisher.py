"""Publishing: verify what offline keys signed, then update the repository atomically.

A publish runs under the storage lock and in this order (DESIGN.md, TUF
specification section 5 read in reverse):

1. Load the current trusted state from storage (timestamp -> snapshot -> roles).
2. Verify every incoming role against its delegator: signature threshold,
   version increase, every target inside the role's delegated paths, and every
   blob's length and hashes. Nothing is written before all checks pass.
3. Write target blobs under hash-prefixed names.
4. Write the new versioned role files (``N.<role>.json``).
5. Write a new snapshot (``N.snapshot.json``), signed with the online key.
6. Write ``timestamp.json`` last, signed with the online key.

Devices only discover new files through ``timestamp.json``, so a crash between
any two steps leaves the previous repository fully valid; re-running the same
publish completes it. Publishing the very same role bytes again is a no-op.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from securesystemslib.signer import Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    DelegatedRole,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from repo_server._storage import Storage
from signing import Expiry
from tufota_core import (
    ROLLOUTS_ROLE,
    ConflictError,
    NotFoundError,
    RepositoryError,
    RolloutDoc,
    VerificationError,
    rollout_target_path,
    utcnow,
)

logger = logging.getLogger(__name__)

_ROOT_FILE = re.compile(r"^metadata/(\d+)\.root\.json$")

# Called with a step name before each write; tests inject crashes through it.
StepHook = Callable[[str], None]


@dataclass(frozen=True)
class OnlineSigners:
    """Signers for the online roles."""

    snapshot_timestamp: Signer
    rollouts: Signer


@dataclass
class RepoState:
    """The trusted repository as currently published."""

    root: Metadata[Root]
    timestamp: Metadata[Timestamp]
    snapshot: Metadata[Snapshot]
    targets: Metadata[Targets]
    roles: dict[str, Metadata[Targets]] = field(default_factory=dict)

    def delegated_role(
        self, name: str, delegator: Metadata[Targets] | None = None
    ) -> DelegatedRole:
        delegations = (delegator or self.targets).signed.delegations
        if delegations is None or delegations.roles is None or name not in delegations.roles:
            raise NotFoundError(f"role {name} is not delegated by targets")
        return delegations.roles[name]


@dataclass
class Blob:
    """A target's bytes to store, from memory or a local file."""

    target: TargetFile
    data: bytes | None = None
    path: Path | None = None

    def storage_key(self) -> str:
        return target_storage_key(self.target)


def target_storage_key(target: TargetFile) -> str:
    """``targets/<dir>/<sha256>.<name>``: the consistent-snapshot name of a target."""
    directory, _, name = target.path.rpartition("/")
    prefix = f"targets/{directory}/" if directory else "targets/"
    return f"{prefix}{target.hashes['sha256']}.{name}"


def metadata_key(role: str, version: int | None = None) -> str:
    return f"metadata/{role}.json" if version is None else f"metadata/{version}.{role}.json"


def _load(storage: Storage, key: str, cls: type[Root | Timestamp | Snapshot | Targets]) -> Metadata:  # type: ignore[type-arg]
    try:
        md = Metadata.from_bytes(storage.get(key))
    except NotFoundError:
        raise RepositoryError(f"{key} is missing from the repository") from None
    except Exception as e:  # the tuf deserializer raises many kinds
        raise RepositoryError(f"{key} is not valid TUF metadata: {e}") from e
    if not isinstance(md.signed, cls):
        raise RepositoryError(f"{key} is not {cls.type} metadata")
    return md


def latest_root_version(storage: Storage) -> int:
    """Highest ``N`` of the stored ``N.root.json`` files (0 when none)."""
    versions = [int(m.group(1)) for k in storage.list("metadata/") if (m := _ROOT_FILE.match(k))]
    return max(versions, default=0)


def load_state(storage: Storage) -> RepoState:
    """Read the published repository, following timestamp -> snapshot -> roles.

    Raises:
        RepositoryError: the repository is not initialised or a file is missing or corrupt.
    """
    root_version = latest_root_version(storage)
    if root_version == 0 or not storage.exists(metadata_key(Timestamp.type)):
        raise RepositoryError("the repository has not been initialised (no root or timestamp)")
    root = _load(storage, metadata_key(Root.type, root_version), Root)
    timestamp = _load(storage, metadata_key(Timestamp.type), Timestamp)
    snapshot = _load(
        storage, metadata_key(Snapshot.type, timestamp.signed.snapshot_meta.version), Snapshot
    )
    targets_meta = snapshot.signed.meta.get("targets.json")
    if targets_meta is None:
        raise RepositoryError("snapshot does not list targets.json")
    targets = _load(storage, metadata_key(Targets.type, targets_meta.version), Targets)
    roles: dict[str, Metadata[Targets]] = {}
    for name, meta in snapshot.signed.meta.items():
        role = name.removesuffix(".json")
        if role != Targets.type:
            roles[role] = _load(storage, metadata_key(role, meta.version), Targets)
    return RepoState(root, timestamp, snapshot, targets, roles)


def _verify_signed_by(
    delegator: Metadata[Root] | Metadata[Targets], role: str, md: Metadata[Targets]
) -> None:
    try:
        delegator.verify_delegate(role, md)
    except UnsignedMetadataError as e:
        raise VerificationError(f"{role}: {e}") from e


class Publisher:
    """Publishes verified changes to a ``Storage`` and keeps the online roles signed."""

    def __init__(
        self,
        storage: Storage,
        signers: Callable[[], OnlineSigners],
        expiry: Expiry | None = None,
        clock: Callable[[], datetime] = utcnow,
        step_hook: StepHook | None = None,
    ) -> None:
        self.storage = storage
        self._signers = signers
        self.expiry = expiry or Expiry()
        self._clock = clock
        self._step_hook = step_hook

    def _step(self, name: str) -> None:
        if self._step_hook is not None:
            self._step_hook(name)

    def state(self) -> RepoState:
        return load_state(self.storage)

    # -- first publication -------------------------------------------------

    def publish_initial(self, root: Metadata[Root], targets: Metadata[Targets]) -> None:
        """Publish version 1 of every role into empty storage.

        Raises:
            ConflictError: the storage already holds a repository.
            VerificationError: root or targets is not signed by its threshold.
        """
        with self.storage.lock():
            if latest_root_version(self.storage) or self.storage.exists(metadata_key("timestamp")):
                raise ConflictError("the storage already holds a repository")
            try:
                root.verify_delegate(Root.type, root)
            except UnsignedMetadataError as e:
                raise VerificationError(f"root: {e}") from e
            _verify_signed_by(root, Targets.type, targets)
            signers = self._signers()
            now = self._clock()
            rollouts = Metadata(Targets(expires=now + self.expiry.rollouts))
            rollouts.sign(signers.rollouts)
            _verify_signed_by(targets, ROLLOUTS_ROLE, rollouts)
            self._step("root")
            self.storage.put(metadata_key(Root.type, 1), root.to_bytes())
            self._step("roles")
            self.storage.put(metadata_key(Targets.type, 1), targets.to_bytes())
            self.storage.put(metadata_key(ROLLOUTS_ROLE, 1), rollouts.to_bytes())
            snapshot = Metadata(Snapshot(expires=now + self.expiry.snapshot))
            snapshot.signed.meta = {
                "targets.json": MetaFile(1),
                f"{ROLLOUTS_ROLE}.json": MetaFile(1),
            }
            self._write_snapshot_and_timestamp(snapshot, None, signers, now)
        logger.info("published a new repository (root v1)")

    # -- verified updates ----------------------------------------------------

    def publish(
        self,
        roles: dict[str, Metadata[Targets]],
        blobs: list[Blob],
        targets: Metadata[Targets] | None = None,
    ) -> bool:
        """Verify and publish new versions of delegated roles (and optionally targets).

        Returns:
            False when every role was already published byte for byte (idempotent re-upload).

        Raises:
            VerificationError: a signature, threshold, path, length or hash check failed.
            ConflictError: a version does not increase.
            RepositoryError: the current repository cannot be read.
        """
        with self.storage.lock():
            return self._publish_locked(load_state(self.storage), roles, blobs, targets)

    def _publish_locked(
        self,
        state: RepoState,
        roles: dict[str, Metadata[Targets]],
        blobs: list[Blob],
        targets: Metadata[Targets] | None,
    ) -> bool:
        changed = self._verify(state, roles, blobs, targets)
        if not changed:
            return False
        self._step("blobs")
        for blob in blobs:
            key = blob.storage_key()
            if self.storage.exists(key):
                continue
            if blob.data is not None:
                self.storage.put(key, blob.data)
            elif blob.path is not None:
                self.storage.put_file(key, blob.path)
        self._step("roles")
        if targets is not None and Targets.type in changed:
            self.storage.put(metadata_key(Targets.type, targets.signed.version), targets.to_bytes())
        for name, md in roles.items():
            if name in changed:
                self.storage.put(metadata_key(name, md.signed.version), md.to_bytes())
        snapshot = state.snapshot
        for name in changed:
            version = (targets if name == Targets.type else roles[name]).signed.version  # type: ignore[union-attr]
            snapshot.signed.meta[f"{name}.json"] = MetaFile(version)
        self._write_snapshot_and_timestamp(
            snapshot, state.timestamp, self._signers(), self._clock()
        )
        logger.debug("published %s", ", ".join(sorted(changed)))
        return True

    def _verify(
        self,
        state: RepoState,
        roles: dict[str, Metadata[Targets]],
        blobs: list[Blob],
        targets: Metadata[Targets] | None,
    ) -> set[str]:
        changed: set[str] = set()
        delegator = state.targets
        if targets is not None:
            _verify_signed_by(state.root, Targets.type, targets)
            if self._is_new(Targets.type, state.targets, targets):
                changed.add(Targets.type)
            delegator = targets
        blob_by_path = {b.target.path: b for b in blobs}
        for name, md in roles.items():
            role = state.delegated_role(name, delegator)
            _verify_signed_by(delegator, name, md)
            current = state.roles.get(name)
            if current is not None and not self._is_new(name, current, md):
                continue
            if md.signed.expires <= self._clock():
                raise VerificationError(f"{name}: metadata expired at {md.signed.expires}")
            for path, target in md.signed.targets.items():
                if not role.is_delegated_path(path):
                    raise VerificationError(f"{name} may not sign {path}")
                self._verify_blob(target, blob_by_path.get(path))
            changed.add(name)
        return changed

    def _is_new(self, name: str, current: Metadata[Targets], new: Metadata[Targets]) -> bool:
        if new.signed.version == current.signed.version:
            if new.to_bytes() == current.to_bytes():
                return False
            raise ConflictError(f"{name} version {new.signed.version} is already published")
        if new.signed.version < current.signed.version:
            raise ConflictError(
                f"{name} version {new.signed.version} is older than the published "
                f"version {current.signed.version}"
            )
        return True

    def _verify_blob(self, target: TargetFile, blob: Blob | None) -> None:
        if "sha256" not in target.hashes:
            raise VerificationError(f"{target.path} has no sha256 hash")
        key = target_storage_key(target)
        if blob is None:
            if not self.storage.exists(key):
                raise VerificationError(f"{target.path}: the upload lacks its file")
            return
        try:
            if blob.data is not None:
                target.verify_length_and_hashes(blob.data)
            elif blob.path is not None:
                with blob.path.open("rb") as f:
                    target.verify_length_and_hashes(f)
            else:
                raise VerificationError(f"{target.path}: empty blob")
        except Exception as e:
            if isinstance(e, VerificationError):
                raise
            raise VerificationError(
                f"{target.path}: file does not match its signed length and hash"
            ) from e

    # -- online roles --------------------------------------------------------

    def _write_snapshot_and_timestamp(
        self,
        snapshot: Metadata[Snapshot],
        timestamp: Metadata[Timestamp] | None,
        signers: OnlineSigners,
        now: datetime,
    ) -> None:
        if timestamp is not None:
            snapshot.signed.version += 1
        snapshot.signed.expires = now + self.expiry.snapshot
        snapshot.signatures.clear()
        snapshot.sign(signers.snapshot_timestamp)
        self._step("snapshot")
        self.storage.put(metadata_key(Snapshot.type, snapshot.signed.version), snapshot.to_bytes())
        if timestamp is None:
            timestamp = Metadata(Timestamp(expires=now))
        else:
            timestamp.signed.version += 1
        timestamp.signed.snapshot_meta = MetaFile(snapshot.signed.version)
        timestamp.signed.expires = now + self.expiry.timestamp
        timestamp.signatures.clear()
        timestamp.sign(signers.snapshot_timestamp)
        self._step("timestamp")
        self.storage.put(metadata_key(Timestamp.type), timestamp.to_bytes())
        self._step("done")

    def publish_root(self, root: Metadata[Root]) -> bool:
        """Publish the next root version (rotation), then re-sign snapshot and timestamp.

        TUF specification 5.3.4-5.3.5: the new root must be signed by a
        threshold of the current root's keys and by a threshold of its own,
        and its version is exactly one more.

        Returns:
            False when that root version is already published byte for byte.

        Raises:
            VerificationError: a threshold is not met.
            ConflictError: the version is not exactly the next one.
        """
        with self.storage.lock():
            state = load_state(self.storage)
            current = state.root
            if (
                root.signed.version == current.signed.version
                and root.to_bytes() == current.to_bytes()
            ):
                return False
            if root.signed.version != current.signed.version + 1:
                raise ConflictError(
                    f"root version {root.signed.version} is not the next version "
                    f"({current.signed.version + 1})"
                )
            try:
                current.verify_delegate(Root.type, root)
            except UnsignedMetadataError as e:
                raise VerificationError(f"new root lacks the current root's threshold: {e}") from e
            try:
                root.verify_delegate(Root.type, root)
            except UnsignedMetadataError as e:
                raise VerificationError(f"new root lacks its own threshold: {e}") from e
            if root.signed.expires <= self._clock():
                raise VerificationError(f"new root expired at {root.signed.expires}")
            self._step("root")
            self.storage.put(metadata_key(Root.type, root.signed.version), root.to_bytes())
            # Online keys may have rotated too: the next snapshot and timestamp use the signers
            # the caller configured for the new root.
            self._write_snapshot_and_timestamp(
                state.snapshot, state.timestamp, self._signers(), self._clock()
            )
        logger.info("published root v%d", root.signed.version)
        return True

    def publish_rollout(self, doc: RolloutDoc) -> None:
        """Sign ``doc`` with the online ``rollouts`` key and publish it.

        Raises:
            RepositoryError: the repository cannot be read.
        """
        signers = self._signers()
        data = doc.to_bytes()
        path = rollout_target_path(doc.hardware_id)
        target = TargetFile.from_data(path, io.BytesIO(data), ["sha256"])
        with self.storage.lock():
            state = load_state(self.storage)
            rollouts = state.roles.get(ROLLOUTS_ROLE)
            if rollouts is None:
                raise RepositoryError("the repository has no rollouts role")
            rollouts.signed.targets[path] = target
            rollouts.signed.version += 1
            rollouts.signed.expires = self._clock() + self.expiry.rollouts
            rollouts.signatures.clear()
            rollouts.sign(signers.rollouts)
            # Reload the stored copy so the version check compares against it.
            state.roles[ROLLOUTS_ROLE] = load_state(self.storage).roles[ROLLOUTS_ROLE]
            self._publish_locked(state, {ROLLOUTS_ROLE: rollouts}, [Blob(target, data=data)], None)
        logger.info(
            "published rollout %s (%s, wave %d)", doc.rollout_id, doc.state, doc.current_wave + 1
        )

    def refresh_online(self, margin: timedelta | None = None) -> list[str]:
        """Re-sign the online roles that expire within ``margin``.

        Returns:
            The roles that were re-signed.
        """
        signers = self._signers()
        now = self._clock()
        with self.storage.lock():
            state = load_state(self.storage)
            renewed: list[str] = []
            rollouts = state.roles.get(ROLLOUTS_ROLE)
            rollouts_margin = margin if margin is not None else self.expiry.rollouts / 2
            if rollouts is not None and rollouts.signed.expires - now <= rollouts_margin:
                rollouts.signed.version += 1
                rollouts.signed.expires = now + self.expiry.rollouts
                rollouts.signatures.clear()
                rollouts.sign(signers.rollouts)
                self.storage.put(
                    metadata_key(ROLLOUTS_ROLE, rollouts.signed.version), rollouts.to_bytes()
                )
                state.snapshot.signed.meta[f"{ROLLOUTS_ROLE}.json"] = MetaFile(
                    rollouts.signed.version
                )
                renewed.append(ROLLOUTS_ROLE)
            snap_margin = margin if margin is not None else self.expiry.snapshot / 2
            ts_margin = margin if margin is not None else self.expiry.timestamp / 2
            if renewed or state.snapshot.signed.expires - now <= snap_margin:
                renewed.append(Snapshot.type)
                self._write_snapshot_and_timestamp(state.snapshot, state.timestamp, signers, now)
                renewed.append(Timestamp.type)
            elif state.timestamp.signed.expires - now <= ts_margin:
                ts = state.timestamp
                ts.signed.version += 1
                ts.signed.expires = now + self.expiry.timestamp
                ts.signatures.clear()
                ts.sign(signers.snapshot_timestamp)
                self.storage.put(metadata_key(Timestamp.type), ts.to_bytes())
                renewed.append(Timestamp.type)
        if renewed:
            logger.info("re-signed online roles: %s", ", ".join(renewed))
        return renewed

    def expiries(self) -> dict[str, datetime]:
        """When each published role expires."""
        state = self.state()
        result = {
            Root.type: state.root.signed.expires,
            Timestamp.type: state.timestamp.signed.expires,
            Snapshot.type: state.snapshot.signed.expires,
            Targets.type: state.targets.signed.expires,
        }
        for name, md in state.roles.items():
            result[name] = md.signed.expires
        return result
