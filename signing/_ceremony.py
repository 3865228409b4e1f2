"""The root ceremony: propose, sign on separate machines, merge, check, finish.

A *proposal* file (``tufota.root-proposal/1``) holds the root metadata being
signed and, for a rotation, the previous root it must also satisfy::

    {"format": "tufota.root-proposal/1", "previous": <root metadata | null>,
     "root": <root metadata>}

Invariants:

* The signed part of a proposal never changes once proposed: signing only adds
  signatures, and ``merge_proposals`` refuses copies whose signed bytes or
  previous root differ. So signatures made on separate copies (air-gapped
  laptops, USB sticks) always combine.
* A signature is added only by a key that the proposal's root role or the
  previous root's root role lists, and only after ``Key.verify_signature``
  accepted it; signatures that do not verify are dropped on merge.
* ``finished_root`` returns root metadata only when the TUF rules for a new
  root hold (specification 5.3.4 and 5.3.5): a threshold of the previous
  root's keys (rotation) and a threshold of its own keys, version exactly one
  more than the previous, not expired.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from signing._fs import atomic_write
from signing._keys import sign_checked
from signing._metadata import Expiry, _expires
from tufota_core import ConflictError, InputError, NotFoundError, VerificationError

PROPOSAL_FORMAT = "tufota.root-proposal/1"
MAX_PROPOSAL_BYTES = 4 * 1024 * 1024
ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)


@dataclass
class RootProposal:
    """Root metadata being signed, and the root it replaces (None for version 1)."""

    root: Metadata[Root]
    previous: Metadata[Root] | None = None

    def to_bytes(self) -> bytes:
        data = {
            "format": PROPOSAL_FORMAT,
            "previous": None if self.previous is None else self.previous.to_dict(),
            "root": self.root.to_dict(),
        }
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "proposal") -> RootProposal:
        """Parse a proposal; plain root metadata is accepted as a proposal without a previous root.

        Raises:
            InputError: not a proposal or root metadata.
        """
        try:
            obj = json.loads(data)
        except ValueError as e:
            raise InputError(f"{name} is not JSON: {e}") from e
        if isinstance(obj, dict) and obj.get("format") == PROPOSAL_FORMAT:
            root = _root_from_dict(obj.get("root"), name)
            previous_obj = obj.get("previous")
            previous = None if previous_obj is None else _root_from_dict(previous_obj, name)
            return cls(root, previous)
        return cls(_root_from_dict(obj, name))

    @classmethod
    def load(cls, path: Path) -> RootProposal:
        """Read a proposal file.

        Raises:
            NotFoundError: the file does not exist.
            InputError: it is not a proposal or root metadata, or is too large.
        """
        return cls.from_bytes(_read_capped(path), str(path))

    def save(self, path: Path) -> None:
        """Write the proposal atomically."""
        atomic_write(path, self.to_bytes())


def _read_capped(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_PROPOSAL_BYTES:
            raise InputError(f"{path} is larger than {MAX_PROPOSAL_BYTES} bytes")
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"{path} does not exist") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e}") from e


def _root_from_dict(obj: Any, name: str) -> Metadata[Root]:
    try:
        md: Metadata[Any] = Metadata.from_dict(json.loads(json.dumps(obj)))
    except Exception as e:  # the tuf deserializer raises many kinds
        raise InputError(f"{name} does not hold valid root metadata: {e}") from e
    if not isinstance(md.signed, Root):
        raise InputError(f"{name} holds {md.signed.type} metadata, not root")
    return md


def load_root(path: Path) -> Metadata[Root]:
    """Read root metadata (a plain ``root.json`` or a finished proposal's root).

    Raises:
        NotFoundError: the file does not exist.
        InputError: it is not root metadata.
    """
    return RootProposal.from_bytes(_read_capped(path), str(path)).root


def _check_threshold(name: str, threshold: int, keys: Sequence[Key]) -> None:
    ids = {k.keyid for k in keys}
    if len(ids) != len(keys):
        raise InputError(f"{name}: the same key is given twice")
    if not 1 <= threshold <= len(keys):
        raise InputError(
            f"{name} threshold {threshold} is larger than its {len(keys)} key(s) or below 1"
        )


def propose_root(
    root_keys: Sequence[Key],
    threshold: int,
    targets_keys: Sequence[Key],
    targets_threshold: int,
    online_key: Key,
    now: datetime,
    expiry: Expiry,
) -> RootProposal:
    """An unsigned version 1 of root (consistent snapshots; snapshot and timestamp online).

    Raises:
        InputError: a threshold is larger than its key count, or a key repeats.
    """
    _check_threshold("root", threshold, root_keys)
    _check_threshold("targets", targets_threshold, targets_keys)
    root = Root(expires=_expires(now, expiry.root), consistent_snapshot=True)
    for key in root_keys:
        root.add_key(key, Root.type)
    for key in targets_keys:
        root.add_key(key, Targets.type)
    root.add_key(online_key, Snapshot.type)
    root.add_key(online_key, Timestamp.type)
    root.roles[Root.type].threshold = threshold
    root.roles[Targets.type].threshold = targets_threshold
    return RootProposal(Metadata(root))


def _keys_of(root: Root, role: str) -> list[Key]:
    return [root.keys[k] for k in root.roles[role].keyids]


def propose_rotation(
    current: Metadata[Root],
    now: datetime,
    expiry: Expiry,
    *,
    root_keys: Sequence[Key] | None = None,
    threshold: int | None = None,
    targets_keys: Sequence[Key] | None = None,
    targets_threshold: int | None = None,
    online_key: Key | None = None,
) -> RootProposal:
    """The next root version: the given roles get new keys/thresholds, the rest is kept.

    Also used to renew an expiring root without changing keys.

    Raises:
        InputError: a threshold is larger than its key count, or a key repeats.
    """
    old = current.signed
    new_root_keys = root_keys if root_keys is not None else _keys_of(old, Root.type)
    new_threshold = threshold if threshold is not None else old.roles[Root.type].threshold
    new_targets_keys = targets_keys if targets_keys is not None else _keys_of(old, Targets.type)
    new_targets_threshold = (
        targets_threshold if targets_threshold is not None else old.roles[Targets.type].threshold
    )
    if online_key is None:
        online = _keys_of(old, Timestamp.type)
        if len(online) != 1 or _keys_of(old, Snapshot.type) != online:
            raise InputError("the current root has several online keys; name one with --online-key")
        online_key = online[0]
    proposal = propose_root(
        new_root_keys,
        new_threshold,
        new_targets_keys,
        new_targets_threshold,
        online_key,
        now,
        expiry,
    )
    proposal.root.signed.version = old.version + 1
    proposal.root.signed.consistent_snapshot = old.consistent_snapshot
    proposal.previous = Metadata.from_bytes(current.to_bytes())
    return proposal


def signing_keys(proposal: RootProposal) -> dict[str, Key]:
    """Keys whose signature counts for the proposal: new root keys and previous root keys."""
    keys = {k.keyid: k for k in _keys_of(proposal.root.signed, Root.type)}
    if proposal.previous is not None:
        keys.update({k.keyid: k for k in _keys_of(proposal.previous.signed, Root.type)})
    return keys


def sign_proposal(proposal: RootProposal, signer: Signer) -> None:
    """Add (or replace) the signer's signature.

    Raises:
        InputError: the key is not a root key of the proposal or of the previous root.
        VerificationError: the signature does not verify with the listed key.
    """
    keys = signing_keys(proposal)
    keyid = signer.public_key.keyid
    if keyid not in keys:
        raise InputError(
            f"key {keyid[:12]} is not a root key of this proposal or the previous root"
        )
    sign_checked(proposal.root, signer, keys[keyid])


def merge_proposals(proposals: list[RootProposal]) -> RootProposal:
    """Combine the valid signatures of copies of one proposal.

    Raises:
        InputError: no proposals.
        ConflictError: the copies are not of the same proposal.
    """
    if not proposals:
        raise InputError("nothing to merge")
    first = proposals[0]
    keys = signing_keys(first)
    merged = RootProposal(Metadata.from_bytes(first.root.to_bytes()), first.previous)
    merged.root.signatures.clear()
    payload = first.root.signed_bytes
    previous = None if first.previous is None else first.previous.to_bytes()
    for copy in proposals:
        if copy.root.signed_bytes != payload:
            raise ConflictError("the copies propose different root metadata; re-run the ceremony")
        if (None if copy.previous is None else copy.previous.to_bytes()) != previous:
            raise ConflictError("the copies name different previous roots")
        for keyid, signature in copy.root.signatures.items():
            key = keys.get(keyid)
            if key is None:
                continue
            try:
                key.verify_signature(signature, payload)
            except Exception:  # noqa: S112 - an invalid signature is simply not merged
                continue
            merged.root.signatures[keyid] = signature
    return merged


@dataclass(frozen=True)
class KeyState:
    """One listed key and whether the proposal carries a valid signature by it."""

    keyid: str
    present: bool
    valid: bool


@dataclass(frozen=True)
class ThresholdState:
    """Signatures a threshold group (the new root or the previous root) has and needs."""

    name: str
    threshold: int
    keys: tuple[KeyState, ...]

    @property
    def valid(self) -> int:
        return sum(k.valid for k in self.keys)

    @property
    def met(self) -> bool:
        return self.valid >= self.threshold


@dataclass(frozen=True)
class ProposalStatus:
    """What ``tufota root status`` shows."""

    version: int
    expires: datetime
    roles: dict[str, tuple[int, tuple[str, ...]]]
    groups: tuple[ThresholdState, ...]
    problems: tuple[str, ...] = field(default=())

    @property
    def complete(self) -> bool:
        return not self.problems and all(g.met for g in self.groups)


def _group(name: str, role_root: Root, payload: bytes, md: Metadata[Root]) -> ThresholdState:
    states = []
    for keyid in role_root.roles[Root.type].keyids:
        signature = md.signatures.get(keyid)
        valid = False
        if signature is not None:
            try:
                role_root.keys[keyid].verify_signature(signature, payload)
                valid = True
            except Exception:  # an invalid signature counts as absent
                valid = False
        states.append(KeyState(keyid, signature is not None, valid))
    return ThresholdState(name, role_root.roles[Root.type].threshold, tuple(states))


def proposal_status(proposal: RootProposal, now: datetime) -> ProposalStatus:
    """Roles, keys, thresholds, expiry and signatures (a bad signature counts as absent)."""
    root = proposal.root.signed
    payload = proposal.root.signed_bytes
    roles = {name: (role.threshold, tuple(role.keyids)) for name, role in root.roles.items()}
    groups = [_group(f"root v{root.version}", root, payload, proposal.root)]
    problems: list[str] = []
    if proposal.previous is not None:
        prev = proposal.previous.signed
        groups.insert(0, _group(f"previous root v{prev.version}", prev, payload, proposal.root))
        if root.version != prev.version + 1:
            problems.append(f"version {root.version} does not follow v{prev.version}")
    elif root.version != 1:
        problems.append(f"version {root.version} has no previous root to be checked against")
    if root.expires <= now:
        problems.append(f"expired at {root.expires:%Y-%m-%d %H:%M}")
    return ProposalStatus(root.version, root.expires, roles, tuple(groups), tuple(problems))


def finished_root(proposal: RootProposal, now: datetime) -> Metadata[Root]:
    """The proposal's root, once it satisfies every rule for a new root.

    Raises:
        VerificationError: a threshold is not met, or the root is expired or misnumbered.
    """
    status = proposal_status(proposal, now)
    if status.problems:
        raise VerificationError(f"root v{status.version}: {'; '.join(status.problems)}")
    for group in status.groups:
        if not group.met:
            raise VerificationError(
                f"root v{status.version} has {group.valid} of the {group.threshold} "
                f"signatures the {group.name} requires"
            )
    return proposal.root


def verify_root_update(trusted: Metadata[Root], new: Metadata[Root], now: datetime) -> None:
    """Check ``new`` as a client would before trusting it after ``trusted`` (TUF 5.3.4-5.3.5).

    Raises:
        VerificationError: not the next version, or a threshold is not met.
    """
    if new.signed.version != trusted.signed.version + 1:
        raise VerificationError(
            f"root v{new.signed.version} does not follow the trusted root v{trusted.signed.version}"
        )
    finished_root(RootProposal(new, trusted), now)
