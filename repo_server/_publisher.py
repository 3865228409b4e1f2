"""Publishing: verify what offline keys signed, then update the repository atomically.

A publish runs under the storage lock and in this order (DESIGN.md, TUF
specification section 5 read in reverse):

1. Load the current trusted state from storage (timestamp -> snapshot -> roles).
2. Verify everything before writing anything:
   a. a new root against the current root's threshold and its own (5.3.4-5.3.5);
   b. new targets against the (new) root;
   c. every incoming role against its (new) delegator: signature threshold,
      version increase, not expired, every target inside the role's delegated
      paths, every blob's length and hashes, firmware ``custom`` describing its
      path, published releases unchanged and new versions newer;
   d. every published role the upload leaves alone against a new delegator;
   e. the server's next snapshot and timestamp against the (new) root, so the
      online key is known to satisfy it.
3. Write the new root (``N.root.json``), then target blobs under hash-prefixed names.
4. Write the new versioned role files (``N.<role>.json``).
5. Write the new snapshot (``N.snapshot.json``), signed with the online key.
6. Write ``timestamp.json`` last, signed with the online key.

Devices only discover new files through ``timestamp.json`` (and new roots by
probing ``N+1.root.json``, which stays valid with the old timestamp as long as
the online key does not change), so a crash between any two steps leaves the
previous repository fully valid; re-running the same publish completes it.
Publishing the very same role bytes again is a no-op. ``step_hook`` is called
with ``root``, ``blobs``, ``roles``, ``snapshot``, ``timestamp`` and ``done``
before each stage; tests inject crashes through it.

The online ``rollouts`` role holds only ``rollouts/<hardware_id>.json``
documents the server wrote. A published copy holding anything else (e.g.
``firmware/...`` or ``evil.bin``) was signed by someone holding the online
key: whenever the server re-signs the role (``publish_rollout``,
``refresh_online``) it rebuilds the role from its own namespace, drops every
other target, logs an error naming them, and keeps them in
``Publisher.forged_targets`` for the watchdog and operators. It never
re-signs a forged entry and never lets one stop its own publishing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.exceptions import LengthOrHashMismatchError, UnsignedMetadataError
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
from signing import Expiry, verify_delegate
from tufota_core import (
    ROLLOUTS_ROLE,
    ConflictError,
    DeltaInfo,
    FirmwareInfo,
    InputError,
    NotFoundError,
    RepositoryError,
    RolloutDoc,
    TufotaError,
    VerificationError,
    Version,
    delta_target_path,
    firmware_target_path,
    is_delta_custom,
    rollout_target_path,
    safe_text,
    utcnow,
)

logger = logging.getLogger(__name__)

_ROLLOUT_DOC = re.compile(r"^rollouts/([^/]{1,63})\.json$")


def _is_rollout_doc_path(path: str) -> bool:
    """Whether ``path`` is one the server writes into the online role (rollout documents)."""
    match = _ROLLOUT_DOC.match(path)
    if match is None:
        return False
    try:
        return rollout_target_path(match.group(1)) == path
    except InputError:  # not a hardware id
        return False


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

    def all_roles(self) -> list[tuple[str, Metadata[Any]]]:
        """Every published role by name: the top-level four, then delegations by name."""
        return [
            (Root.type, self.root),
            (Timestamp.type, self.timestamp),
            (Snapshot.type, self.snapshot),
            (Targets.type, self.targets),
            *sorted(self.roles.items()),
        ]


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
        self.forged_targets: tuple[str, ...] = ()  # forged rollouts entries dropped, not yet taken
        # Replicas on one database also publish one at a time through it (see ``_locked``).
        self.serialize: Callable[[], contextlib.AbstractContextManager[object]] | None = None
        # Replicas hand forged entries to the leader's watchdog through the database.
        self.on_forged: Callable[[tuple[str, ...]], None] | None = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The database's publish lock (when replicas share one), then the storage's lock."""
        outer = self.serialize() if self.serialize is not None else contextlib.nullcontext()
        with outer, self.storage.lock():
            yield

    def take_forged_targets(self) -> tuple[str, ...]:
        """The forged entries dropped since the last call (for the watchdog's alert)."""
        taken, self.forged_targets = self.forged_targets, ()
        return taken

    def _forged_paths(self, rollouts: Metadata[Targets]) -> list[str]:
        """Entries of the online role the server cannot have written.

        Outside ``rollouts/<hw>.json``, or a document whose stored file is
        missing or does not match the signed length and hashes (the server
        always writes the file with the entry).
        """
        forged = []
        for path, target in rollouts.signed.targets.items():
            if not _is_rollout_doc_path(path):
                forged.append(path)
                continue
            try:
                target.verify_length_and_hashes(self.storage.get(target_storage_key(target)))
            except (TufotaError, LengthOrHashMismatchError, KeyError):  # KeyError: no sha256
                forged.append(path)
        return sorted(forged)

    def _drop_forged(self, rollouts: Metadata[Targets]) -> None:
        """Remove every target of the online role that the server could not have written."""
        forged = self._forged_paths(rollouts)
        for path in forged:
            del rollouts.signed.targets[path]
        if forged:
            self.forged_targets = tuple(sorted({*self.forged_targets, *forged}))
            if self.on_forged is not None:
                try:
                    self.on_forged(tuple(forged))
                except TufotaError as e:  # the local record still reaches this replica's watchdog
                    logger.warning("cannot share the forged entries with other replicas: %s", e)
            shown = ", ".join(repr(safe_text(p, 80)) for p in forged[:5])
            more = f" and {len(forged) - 5} more" if len(forged) > 5 else ""
            logger.error(
                "the published %s role holds targets the server never wrote: %s%s; "
                "dropped them on re-signing (online key compromise? see docs/signing.md)",
                ROLLOUTS_ROLE,
                shown,
                more,
            )

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
        with self._locked():
            if latest_root_version(self.storage) or self.storage.exists(metadata_key("timestamp")):
                raise ConflictError(f"{self.storage!r} already holds a repository")
            try:
                root.verify_delegate(Root.type, root)
            except UnsignedMetadataError as e:
                raise VerificationError(f"root: {e}") from e
            verify_delegate(root, Targets.type, targets)
            signers = self._signers()
            now = self._clock()
            rollouts = Metadata(Targets(expires=now + self.expiry.rollouts))
            rollouts.sign(signers.rollouts)
            verify_delegate(targets, ROLLOUTS_ROLE, rollouts)
            snapshot = Metadata(Snapshot(expires=now + self.expiry.snapshot))
            snapshot.signed.meta = {
                "targets.json": MetaFile(1),
                f"{ROLLOUTS_ROLE}.json": MetaFile(1),
            }
            timestamp = self._sign_online(root, snapshot, None, signers)
            self._step("root")
            self.storage.put(metadata_key(Root.type, 1), root.to_bytes())
            self._step("roles")
            self.storage.put(metadata_key(Targets.type, 1), targets.to_bytes())
            self.storage.put(metadata_key(ROLLOUTS_ROLE, 1), rollouts.to_bytes())
            self._write_online(snapshot, timestamp)
        logger.info("published a new repository (root v1)")

    # -- verified updates ----------------------------------------------------

    def publish(
        self,
        roles: dict[str, Metadata[Targets]],
        blobs: list[Blob],
        targets: Metadata[Targets] | None = None,
        root: Metadata[Root] | None = None,
    ) -> bool:
        """Verify and publish a new root, new targets and new delegated roles, all or nothing.

        Everything is verified before the first write: the new root against the
        current one, the new targets against the (new) root, each role against
        its (new) delegator, every published role that the upload does not
        replace against its (new) delegator, and the server's own snapshot and
        timestamp signatures against the (new) root.

        Returns:
            False when everything was already published byte for byte (idempotent re-upload).

        Raises:
            VerificationError: a signature, threshold, path, length, hash or expiry check failed.
            ConflictError: a version does not increase, or a published release would change.
            InputError: a firmware target's ``custom`` field does not describe its path.
            RepositoryError: the current repository cannot be read.
        """
        with self._locked():
            return self._publish_locked(load_state(self.storage), roles, blobs, targets, root)

    def _publish_locked(
        self,
        state: RepoState,
        roles: dict[str, Metadata[Targets]],
        blobs: list[Blob],
        targets: Metadata[Targets] | None,
        root: Metadata[Root] | None = None,
    ) -> bool:
        new_root = root if root is not None and self._verify_root(state.root, root) else None
        trusted_root = new_root or state.root
        changed = self._verify(state, trusted_root, roles, blobs, targets)
        if not changed and new_root is None:
            return False
        snapshot = state.snapshot
        for name in changed:
            md = targets if name == Targets.type else roles[name]
            assert md is not None
            snapshot.signed.meta[f"{name}.json"] = MetaFile(md.signed.version)
        timestamp = self._sign_online(trusted_root, snapshot, state.timestamp, self._signers())
        if new_root is not None:
            self._step("root")
            self.storage.put(metadata_key(Root.type, new_root.signed.version), new_root.to_bytes())
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
        self._write_online(snapshot, timestamp)
        logger.debug("published %s", ", ".join(sorted(changed)) or "root")
        return True

    def _verify_root(self, current: Metadata[Root], root: Metadata[Root]) -> bool:
        """TUF specification 5.3.4-5.3.5, on the server side.

        Returns:
            False when this root is already published byte for byte.
        """
        if root.signed.version == current.signed.version and root.to_bytes() == current.to_bytes():
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
        return True

    def _verify(
        self,
        state: RepoState,
        trusted_root: Metadata[Root],
        roles: dict[str, Metadata[Targets]],
        blobs: list[Blob],
        targets: Metadata[Targets] | None,
    ) -> set[str]:
        """Steps 2a-2e of the module docstring; returns the roles that change."""
        changed: set[str] = set()
        delegator = state.targets
        if targets is not None:
            verify_delegate(trusted_root, Targets.type, targets)
            if self._is_new(Targets.type, state.targets, targets):
                if targets.signed.expires <= self._clock():
                    raise VerificationError(
                        f"targets: metadata expired at {targets.signed.expires}"
                    )
                changed.add(Targets.type)
                delegator = targets
        elif trusted_root is not state.root:
            verify_delegate(trusted_root, Targets.type, state.targets)
        blob_by_path = {b.target.path: b for b in blobs}
        for name, md in roles.items():
            try:
                role = state.delegated_role(name, delegator)
            except NotFoundError:
                raise VerificationError(
                    f"{name} is not a role that targets version {delegator.signed.version} "
                    "delegates (is the product line created?)"
                ) from None
            verify_delegate(delegator, name, md)
            current = state.roles.get(name)
            if current is not None and not self._is_new(name, current, md):
                continue
            if md.signed.expires <= self._clock():
                raise VerificationError(f"{name}: metadata expired at {md.signed.expires}")
            for path, target in md.signed.targets.items():
                if not role.is_delegated_path(path):
                    raise VerificationError(f"{name} may not sign {path}")
                if name != ROLLOUTS_ROLE:
                    _check_release(name, path, target, current)
                self._verify_blob(target, blob_by_path.get(path))
            changed.add(name)
        if delegator is not state.targets:
            # A published role the upload leaves alone must stay valid under its
            # new delegator, or devices would stop trusting it.
            for name, md in state.roles.items():
                if name in roles:
                    continue
                try:
                    state.delegated_role(name, delegator)
                except NotFoundError:
                    raise VerificationError(
                        f"targets version {delegator.signed.version} drops the delegation of "
                        f"the published role {name}"
                    ) from None
                try:
                    delegator.verify_delegate(name, md)
                except UnsignedMetadataError as e:
                    raise VerificationError(
                        f"the published role {name} is not signed by the keys targets version "
                        f"{delegator.signed.version} delegates it to; upload {name} re-signed "
                        f"with them ({e})"
                    ) from e
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

    def _sign_online(
        self,
        trusted_root: Metadata[Root],
        snapshot: Metadata[Snapshot],
        timestamp: Metadata[Timestamp] | None,
        signers: OnlineSigners,
    ) -> Metadata[Timestamp]:
        """Bump and re-sign the next snapshot and timestamp, check them; write nothing.

        Raises:
            VerificationError: the server's online key does not satisfy the
                root's snapshot or timestamp role (say, a new root rotated the
                online key and the server has not been given the new one).
        """
        now = self._clock()
        if timestamp is not None:
            snapshot.signed.version += 1
        snapshot.signed.expires = now + self.expiry.snapshot
        snapshot.signatures.clear()
        snapshot.sign(signers.snapshot_timestamp)
        if timestamp is None:
            timestamp = Metadata(Timestamp(expires=now))
        else:
            timestamp.signed.version += 1
        timestamp.signed.snapshot_meta = MetaFile(snapshot.signed.version)
        timestamp.signed.expires = now + self.expiry.timestamp
        timestamp.signatures.clear()
        timestamp.sign(signers.snapshot_timestamp)
        for role, md in ((Snapshot.type, snapshot), (Timestamp.type, timestamp)):
            try:
                trusted_root.verify_delegate(role, md)
            except UnsignedMetadataError as e:
                raise VerificationError(
                    f"the server's online key cannot sign {role} under root version "
                    f"{trusted_root.signed.version}: {e}"
                ) from e
        return timestamp

    def _write_online(self, snapshot: Metadata[Snapshot], timestamp: Metadata[Timestamp]) -> None:
        self._step("snapshot")
        self.storage.put(metadata_key(Snapshot.type, snapshot.signed.version), snapshot.to_bytes())
        self._step("timestamp")
        self.storage.put(metadata_key(Timestamp.type), timestamp.to_bytes())
        self._step("done")

    def publish_root(self, root: Metadata[Root]) -> bool:
        """Publish the next root version (rotation), then re-sign snapshot and timestamp.

        TUF specification 5.3.4-5.3.5: the new root must be signed by a
        threshold of the current root's keys and by a threshold of its own,
        and its version is exactly one more. The published targets and the
        server's online signatures must stay valid under the new root.

        Returns:
            False when that root version is already published byte for byte.

        Raises:
            VerificationError: a threshold is not met.
            ConflictError: the version is not exactly the next one.
        """
        published = self.publish({}, [], None, root)
        if published:
            logger.info("published root v%d", root.signed.version)
        return published

    def publish_rollout(self, doc: RolloutDoc) -> None:
        """Sign ``doc`` with the online ``rollouts`` key and publish it.

        Raises:
            RepositoryError: the repository cannot be read.
        """
        signers = self._signers()
        data = doc.to_bytes()
        path = rollout_target_path(doc.hardware_id)
        target = TargetFile.from_data(path, io.BytesIO(data), ["sha256"])
        with self._locked():
            state = load_state(self.storage)
            rollouts = state.roles.get(ROLLOUTS_ROLE)
            if rollouts is None:
                raise RepositoryError("the repository has no rollouts role")
            self._drop_forged(rollouts)
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
        """Re-sign the online roles that expire within ``margin`` (default: half their period).

        Returns:
            The roles that were re-signed.

        Raises:
            RepositoryError: the repository cannot be read.
            VerificationError: the online key no longer satisfies the root.
        """
        signers = self._signers()
        now = self._clock()
        with self._locked():
            state = load_state(self.storage)
            renewed: list[str] = []
            rollouts = state.roles.get(ROLLOUTS_ROLE)
            rollouts_margin = margin if margin is not None else self.expiry.rollouts / 2
            forged = rollouts is not None and bool(self._forged_paths(rollouts))
            if rollouts is not None and (
                forged or rollouts.signed.expires - now <= rollouts_margin
            ):
                self._drop_forged(rollouts)
                rollouts.signed.version += 1
                rollouts.signed.expires = now + self.expiry.rollouts
                rollouts.signatures.clear()
                rollouts.sign(signers.rollouts)
                verify_delegate(state.targets, ROLLOUTS_ROLE, rollouts)
                state.snapshot.signed.meta[f"{ROLLOUTS_ROLE}.json"] = MetaFile(
                    rollouts.signed.version
                )
                renewed.append(ROLLOUTS_ROLE)
            snap_margin = margin if margin is not None else self.expiry.snapshot / 2
            ts_margin = margin if margin is not None else self.expiry.timestamp / 2
            if renewed or state.snapshot.signed.expires - now <= snap_margin:
                timestamp = self._sign_online(state.root, state.snapshot, state.timestamp, signers)
                if rollouts is not None and renewed:
                    self._step("roles")
                    self.storage.put(
                        metadata_key(ROLLOUTS_ROLE, rollouts.signed.version), rollouts.to_bytes()
                    )
                self._write_online(state.snapshot, timestamp)
                renewed += [Snapshot.type, Timestamp.type]
            elif state.timestamp.signed.expires - now <= ts_margin:
                ts = state.timestamp
                ts.signed.version += 1
                ts.signed.expires = now + self.expiry.timestamp
                ts.signatures.clear()
                ts.sign(signers.snapshot_timestamp)
                try:
                    state.root.verify_delegate(Timestamp.type, ts)
                except UnsignedMetadataError as e:
                    raise VerificationError(
                        f"the server's online key cannot sign timestamp: {e}"
                    ) from e
                self._step("timestamp")
                self.storage.put(metadata_key(Timestamp.type), ts.to_bytes())
                renewed.append(Timestamp.type)
        if renewed:
            logger.info("re-signed online roles: %s", ", ".join(renewed))
        return renewed

    def expiries(self) -> dict[str, datetime]:
        """When each published role expires."""
        return {name: md.signed.expires for name, md in self.state().all_roles()}


def _check_delta(
    role: str, path: str, target: TargetFile, current: Metadata[Targets] | None
) -> None:
    """A delta target sits at its own path and starts from a release this role published.

    Devices check the result against the signed full image themselves; here
    a delta from bytes no device was ever given is refused.

    Raises:
        InputError: malformed ``custom``, another path, or an unknown source.
    """
    try:
        info = DeltaInfo.from_custom(target.custom)
        expected = delta_target_path(
            info.hardware_id,
            info.result_version,
            info.result_target.rsplit("/", 1)[-1],
            info.source_version,
        )
    except InputError as e:
        raise InputError(f"{role}: {path}: {e}") from e
    if expected != path:
        raise InputError(f"{role}: {path}: its custom field describes the delta {expected}")
    published = current.signed.targets.values() if current is not None else ()
    if not any(
        t.length == info.source_length
        and t.hashes.get("sha256") == info.source_sha256
        and isinstance(t.custom, dict)
        and t.custom.get("version") == info.source_version
        for t in published
    ):
        raise InputError(
            f"{role}: {path}: source {info.source_version} is not a published release "
            "with that length and hash"
        )


def _check_release(
    role: str, path: str, target: TargetFile, current: Metadata[Targets] | None
) -> None:
    """A firmware target describes itself, and published releases never change.

    Raises:
        InputError: the ``custom`` field is malformed or names another hardware, version or file.
        ConflictError: the path is published with other bytes, or the version is not
            newer than every published release of the product line.
    """
    published = current.signed.targets.get(path) if current is not None else None
    if published is not None:
        if published.hashes != target.hashes or published.length != target.length:
            raise ConflictError(
                f"{path} is already published with other content; release a new version"
            )
        return
    if is_delta_custom(target.custom):
        _check_delta(role, path, target, current)
        return
    try:
        info = FirmwareInfo.from_custom(target.custom)
        expected = firmware_target_path(info.hardware_id, info.version, path.rsplit("/", 1)[-1])
    except InputError as e:
        raise InputError(f"{role}: {path}: {e}") from e
    if expected != path:
        raise InputError(
            f"{role}: {path}: custom says hardware {info.hardware_id} version {info.version}"
        )
    if current is None:
        return
    for other in current.signed.targets.values():
        try:
            version = FirmwareInfo.from_custom(other.custom).version
        except InputError:
            continue
        if Version.parse(info.version) <= Version.parse(version):
            raise ConflictError(
                f"{role}: {path}: version {info.version} is not newer than the published "
                f"release {version}"
            )
