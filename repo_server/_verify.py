"""``tufota repo verify``: check a whole published repository, offline, the way a device would.

The verifier reads only the storage (a directory or a bucket) and trusts only
the root it starts from (a given ``root.json``, else ``1.root.json``). It never
raises for what it finds: every finding is a ``Problem`` naming the file at
fault, so one run lists everything that is wrong. The steps follow the TUF
client workflow (specification section 5):

1. Root chain: ``1.root.json`` .. ``N.root.json`` with no gap, each version
   signed by a threshold of its predecessor and of itself (5.3.4-5.3.5); the
   newest root not expired.
2. ``timestamp.json`` signed by the root's timestamp threshold, not expired.
3. The snapshot the timestamp names: present, the version (and length and
   hashes, when listed) the timestamp says, signed, not expired.
4. ``targets`` and every delegated role, walking the delegation tree from
   targets: the version snapshot lists, a threshold of the keys its delegator
   names, not expired; every snapshot entry reached by the walk.
5. Every target of every role: inside its role's delegated paths, its blob
   present under its consistent-snapshot name with the signed length and
   every signed hash; firmware targets carry a valid ``custom`` field.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from repo_server._publisher import metadata_key, target_storage_key
from repo_server._storage import Storage
from tufota_core import (
    ROLLOUTS_ROLE,
    DeltaInfo,
    FirmwareInfo,
    InputError,
    TufotaError,
    is_delta_custom,
    utcnow,
)

_ROOT_FILE = re.compile(r"^metadata/(\d+)\.root\.json$")
_HASHES: dict[str, Callable[[], Any]] = {
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the repository, and the file it is wrong in."""

    key: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.severity}: {self.key}: {self.message}"

    def to_json(self) -> dict[str, str]:
        return {"file": self.key, "message": self.message, "severity": self.severity}


@dataclass
class VerifyReport:
    """What ``verify_repository`` checked and found."""

    problems: list[Problem] = field(default_factory=list)
    roles: dict[str, int] = field(default_factory=dict)
    targets: int = 0
    blob_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": [p.to_json() for p in self.problems],
            "roles": dict(sorted(self.roles.items())),
            "targets": self.targets,
            "blob_bytes": self.blob_bytes,
        }


class _StopError(Exception):
    """A problem that makes the rest of a step meaningless."""


class _Verifier:
    def __init__(
        self,
        storage: Storage,
        trusted_root: bytes | None,
        now: datetime,
        *,
        blobs: bool = True,
        expiry: bool = True,
    ) -> None:
        self.storage = storage
        self.trusted_root = trusted_root
        self.now = now
        self.blobs = blobs
        self.expiry = expiry
        self.report = VerifyReport()

    def problem(self, key: str, message: str, severity: str = "error") -> None:
        self.report.problems.append(Problem(key, message, severity))

    def load(self, key: str, cls: type[Any], meta: MetaFile | None = None) -> Metadata[Any]:
        try:
            data = self.storage.get(key)
        except TufotaError as e:
            self.problem(key, f"cannot be read: {e}")
            raise _StopError from e
        if meta is not None:
            try:
                meta.verify_length_and_hashes(data)
            except Exception as e:  # tuf's LengthOrHashMismatchError
                self.problem(key, f"does not match the length or hashes its referrer lists: {e}")
                raise _StopError from e
        try:
            md: Metadata[Any] = Metadata.from_bytes(data)
        except Exception as e:  # the tuf deserializer raises many kinds
            self.problem(key, f"is not valid TUF metadata: {e}")
            raise _StopError from e
        if not isinstance(md.signed, cls):
            self.problem(key, f"is {md.signed.type} metadata, not {cls.type}")
            raise _StopError
        if meta is not None and md.signed.version != meta.version:
            self.problem(key, f"has version {md.signed.version}, its referrer says {meta.version}")
        return md

    def signed_by(self, delegator: Metadata[Any], role: str, md: Metadata[Any], key: str) -> None:
        try:
            delegator.verify_delegate(role, md)
        except UnsignedMetadataError as e:
            self.problem(key, f"is not signed by a threshold of its {role} keys: {e}")
        except ValueError as e:  # no such delegation
            self.problem(key, f"cannot be checked: {e}")

    def fresh(self, md: Metadata[Any], key: str) -> None:
        if self.expiry and md.signed.expires <= self.now:
            self.problem(key, f"expired at {md.signed.expires.isoformat()}")

    # -- 1. root chain -----------------------------------------------------------

    def root_chain(self) -> Metadata[Root]:
        versions = sorted(
            int(m.group(1)) for k in self.storage.list("metadata/") if (m := _ROOT_FILE.match(k))
        )
        if self.trusted_root is not None:
            try:
                root: Metadata[Root] = Metadata.from_bytes(self.trusted_root)
            except Exception as e:
                self.problem("trusted root", f"is not valid TUF metadata: {e}")
                raise _StopError from e
            if not isinstance(root.signed, Root):
                self.problem("trusted root", "is not root metadata")
                raise _StopError
            first = root.signed.version
            stored = metadata_key(Root.type, first)
            if first in versions and self.storage.get(stored) != self.trusted_root:
                self.problem(stored, "differs from the trusted root")
        else:
            if 1 not in versions:
                self.problem(metadata_key(Root.type, 1), "is missing")
                raise _StopError
            root = self.load(metadata_key(Root.type, 1), Root)
            self.signed_by(root, Root.type, root, metadata_key(Root.type, 1))
            first = 1
        newest = max(versions, default=0)
        for version in range(first + 1, newest + 1):
            key = metadata_key(Root.type, version)
            if version not in versions:
                self.problem(key, "is missing: the root chain has a gap")
                break
            try:
                new = self.load(key, Root)
            except _StopError:
                break
            if new.signed.version != version:
                self.problem(key, f"has version {new.signed.version}")
                break
            before = len(self.report.problems)
            self.signed_by(root, Root.type, new, key)
            self.signed_by(new, Root.type, new, key)
            if len(self.report.problems) != before:
                break
            root = new
        self.fresh(root, metadata_key(Root.type, root.signed.version))
        self.report.roles[Root.type] = root.signed.version
        return root

    # -- 2-4. top-level roles and the delegation tree ----------------------------------

    def run(self) -> VerifyReport:
        try:
            root = self.root_chain()
            ts_key = metadata_key(Timestamp.type)
            timestamp = self.load(ts_key, Timestamp)
            self.signed_by(root, Timestamp.type, timestamp, ts_key)
            self.fresh(timestamp, ts_key)
            self.report.roles[Timestamp.type] = timestamp.signed.version
            snap_meta = timestamp.signed.snapshot_meta
            snap_key = metadata_key(Snapshot.type, snap_meta.version)
            snapshot = self.load(snap_key, Snapshot, snap_meta)
            self.signed_by(root, Snapshot.type, snapshot, snap_key)
            self.fresh(snapshot, snap_key)
            self.report.roles[Snapshot.type] = snapshot.signed.version
            self.delegation_tree(root, snapshot)
        except _StopError:
            pass
        return self.report

    def delegation_tree(self, root: Metadata[Root], snapshot: Metadata[Snapshot]) -> None:
        listed = dict(snapshot.signed.meta)
        snap_key = metadata_key(Snapshot.type, snapshot.signed.version)
        targets_meta = listed.pop("targets.json", None)
        if targets_meta is None:
            self.problem(snap_key, "does not list targets.json")
            raise _StopError
        key = metadata_key(Targets.type, targets_meta.version)
        targets = self.load(key, Targets, targets_meta)
        self.signed_by(root, Targets.type, targets, key)
        self.fresh(targets, key)
        self.report.roles[Targets.type] = targets.signed.version
        self.check_targets(Targets.type, targets, None)
        # Pre-order depth-first, as ngclient searches.
        stack: list[tuple[str, Metadata[Targets]]] = [(Targets.type, targets)]
        seen = {Targets.type}
        while stack:
            parent_name, parent = stack.pop()
            delegations = parent.signed.delegations
            if delegations is None or delegations.roles is None:
                continue
            children = []
            for name, role in delegations.roles.items():
                if name in seen:
                    continue
                seen.add(name)
                meta = listed.pop(f"{name}.json", None)
                if meta is None:
                    self.problem(
                        snap_key,
                        f"does not list {name}.json, delegated by {parent_name}: devices "
                        f"searching {', '.join(role.paths or [])} will fail",
                    )
                    continue
                key = metadata_key(name, meta.version)
                try:
                    md = self.load(key, Targets, meta)
                except _StopError:
                    continue
                self.signed_by(parent, name, md, key)
                self.fresh(md, key)
                self.report.roles[name] = md.signed.version
                self.check_targets(name, md, role)
                children.append((name, md))
            stack.extend(reversed(children))
        for name in sorted(listed):
            self.problem(snap_key, f"lists {name}, which no role delegates")

    # -- 5. targets and their blobs ------------------------------------------------------

    def check_targets(self, name: str, md: Metadata[Targets], role: Any) -> None:
        role_key = metadata_key(name, md.signed.version)
        for path, target in sorted(md.signed.targets.items()):
            self.report.targets += 1
            if role is not None and not role.is_delegated_path(path):
                self.problem(role_key, f"signs {path}, outside its delegated paths")
            if name != ROLLOUTS_ROLE and name != Targets.type:
                try:
                    if is_delta_custom(target.custom):
                        DeltaInfo.from_custom(target.custom)
                    else:
                        FirmwareInfo.from_custom(target.custom)
                except InputError as e:
                    self.problem(role_key, f"{path}: {e}")
            self.check_blob(target)

    def check_blob(self, target: TargetFile) -> None:
        if not self.blobs:
            return
        if "sha256" not in target.hashes:
            self.problem(target.path, "has no sha256 hash, so it has no stored name")
            return
        key = target_storage_key(target)
        try:
            info = self.storage.stat(key)
        except TufotaError:
            self.problem(key, f"is missing (the file of {target.path})")
            return
        if info.size != target.length:
            self.problem(key, f"is {info.size} bytes, signed as {target.length}")
            return
        hashers = {}
        for algorithm in target.hashes:
            if algorithm not in _HASHES:
                self.problem(key, f"is signed with unsupported hash {algorithm}")
                return
            hashers[algorithm] = _HASHES[algorithm]()
        length = 0
        try:
            for chunk in self.storage.iter_range(key, 0, max(info.size - 1, 0)):
                length += len(chunk)
                for hasher in hashers.values():
                    hasher.update(chunk)
        except TufotaError as e:
            self.problem(key, f"cannot be read: {e}")
            return
        if info.size == 0:
            length = 0
        self.report.blob_bytes += length
        for algorithm, hasher in hashers.items():
            if hasher.hexdigest() != target.hashes[algorithm]:
                self.problem(key, f"does not match its signed {algorithm} (of {target.path})")
                return


def verify_repository(
    storage: Storage,
    trusted_root: bytes | None = None,
    now: datetime | None = None,
    *,
    blobs: bool = True,
    expiry: bool = True,
) -> VerifyReport:
    """Check every signature, reference and blob of the repository in ``storage``.

    Args:
        storage: the served tree.
        trusted_root: root metadata to start the chain from; ``1.root.json`` when None.
        now: the time expiry is checked against.
        blobs: also read and hash every blob (False: metadata only).
        expiry: report expired metadata (False: signatures and references only,
            for offline signers who re-sign on top of a lapsed timestamp).

    Returns:
        The report; ``report.ok`` is False when any error was found.
    """
    return _Verifier(storage, trusted_root, now or utcnow(), blobs=blobs, expiry=expiry).run()
