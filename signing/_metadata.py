"""Offline metadata: root, top-level targets with its delegations, product-line releases.

Trust layout (DESIGN.md)::

    root (offline, threshold)
     ├─ timestamp, snapshot   online key
     └─ targets (offline)     only delegations, in this order:
         ├─ rollouts          rollouts/*          online key, terminating
         └─ firmware-<hw>     firmware/<hw>/*     product-line keys, terminating

Invariants: every function returns metadata with its version increased by
exactly one and a fresh expiry, unsigned unless it says otherwise; callers sign
with the keys of the role that the metadata belongs to. Firmware targets carry
a validated ``FirmwareInfo`` in ``custom`` and are only ever added to the
product line whose path pattern matches them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    Root,
    TargetFile,
    Targets,
)

from tufota_core import (
    ROLLOUTS_ROLE,
    ConflictError,
    FirmwareInfo,
    InputError,
    NotFoundError,
    RepositoryError,
    Version,
    firmware_target_path,
    product_paths,
    product_role,
)


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata stays valid after signing."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=365)
    product: timedelta = timedelta(days=180)
    rollouts: timedelta = timedelta(days=7)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)


def _expires(now: datetime, period: timedelta) -> datetime:
    return (now + period).replace(microsecond=0)


def new_root(
    root_keys: list[Key],
    root_threshold: int,
    targets_keys: list[Key],
    online_key: Key,
    now: datetime,
    expiry: Expiry,
) -> Metadata[Root]:
    """Version 1 of root with consistent snapshots; snapshot and timestamp share the online key.

    Raises:
        InputError: a threshold is larger than the number of keys.
    """
    if not 1 <= root_threshold <= len(root_keys):
        raise InputError(f"root threshold {root_threshold} needs at least that many keys")
    root = Root(expires=_expires(now, expiry.root), consistent_snapshot=True)
    for key in root_keys:
        root.add_key(key, Root.type)
    for key in targets_keys:
        root.add_key(key, Targets.type)
    root.add_key(online_key, "snapshot")
    root.add_key(online_key, "timestamp")
    root.roles[Root.type].threshold = root_threshold
    return Metadata(root)


def new_targets(rollouts_key: Key, now: datetime, expiry: Expiry) -> Metadata[Targets]:
    """Version 1 of top-level targets: no firmware, only the ``rollouts`` delegation."""
    targets = Targets(expires=_expires(now, expiry.targets))
    role = DelegatedRole(
        name=ROLLOUTS_ROLE, keyids=[], threshold=1, terminating=True, paths=["rollouts/*"]
    )
    targets.delegations = Delegations(keys={}, roles={ROLLOUTS_ROLE: role})
    targets.add_key(rollouts_key, ROLLOUTS_ROLE)
    return Metadata(targets)


def empty_delegated(now: datetime, period: timedelta) -> Metadata[Targets]:
    """Version 1 of a delegated targets role with no targets."""
    return Metadata(Targets(expires=_expires(now, period)))


def product_lines(targets: Metadata[Targets]) -> list[str]:
    """Hardware ids that ``targets`` delegates a product line to."""
    delegations = targets.signed.delegations
    if delegations is None or delegations.roles is None:
        return []
    prefix = product_role("x")[:-1]
    return [name[len(prefix) :] for name in delegations.roles if name.startswith(prefix)]


def add_product_line(
    targets: Metadata[Targets],
    hardware_id: str,
    keys: list[Key],
    threshold: int,
    now: datetime,
    expiry: Expiry,
) -> Metadata[Targets]:
    """Delegate ``firmware/<hardware_id>/*`` (terminating) to ``keys``; bump the version.

    Raises:
        InputError: bad threshold.
        ConflictError: the product line exists already.
    """
    if not 1 <= threshold <= len(keys):
        raise InputError(f"threshold {threshold} needs at least that many keys")
    name = product_role(hardware_id)
    delegations = targets.signed.delegations
    if delegations is None or delegations.roles is None:
        raise RepositoryError("targets metadata has no delegations to extend")
    if name in delegations.roles:
        raise ConflictError(f"product line {hardware_id} is already delegated")
    delegations.roles[name] = DelegatedRole(
        name=name,
        keyids=[],
        threshold=threshold,
        terminating=True,
        paths=product_paths(hardware_id),
    )
    for key in keys:
        targets.signed.add_key(key, name)
    targets.signed.version += 1
    targets.signed.expires = _expires(now, expiry.targets)
    targets.signatures.clear()
    return targets


def latest_version(product: Metadata[Targets]) -> str | None:
    """Highest firmware version a product line has signed, or None."""
    versions = [
        Version.parse(str(t.custom["version"]))
        for t in product.signed.targets.values()
        if isinstance(t.custom, dict) and "version" in t.custom
    ]
    return str(max(versions)) if versions else None


def add_release(
    product: Metadata[Targets],
    firmware: Path,
    info: FirmwareInfo,
    now: datetime,
    expiry: Expiry,
) -> tuple[Metadata[Targets], TargetFile]:
    """Add ``firmware`` as ``firmware/<hw>/<version>/<file>`` to a product line; bump the version.

    Raises:
        NotFoundError: the firmware file does not exist.
        ConflictError: the version is not newer than the latest signed one.
    """
    if not firmware.is_file():
        raise NotFoundError(f"firmware file {firmware} does not exist")
    latest = latest_version(product)
    if latest is not None and Version.parse(info.version) <= Version.parse(latest):
        raise ConflictError(
            f"version {info.version} is not newer than the latest release {latest} "
            f"of {info.hardware_id}"
        )
    path = firmware_target_path(info.hardware_id, info.version, firmware.name)
    target = TargetFile.from_file(path, str(firmware), ["sha256"])
    target.unrecognized_fields["custom"] = info.to_custom()
    product.signed.targets[path] = target
    product.signed.version += 1
    product.signed.expires = _expires(now, expiry.product)
    product.signatures.clear()
    return product, target


def sign_all(metadata: Metadata[Root] | Metadata[Targets], signers: list[Signer]) -> None:
    """Add one signature per signer (existing signatures are kept)."""
    for signer in signers:
        metadata.sign(signer, append=True)


def find_product(targets: Metadata[Targets], hardware_id: str) -> DelegatedRole:
    """The product line's delegation.

    Raises:
        NotFoundError: the hardware id has no product line.
    """
    delegations = targets.signed.delegations
    name = product_role(hardware_id)
    if delegations is None or delegations.roles is None or name not in delegations.roles:
        raise NotFoundError(f"hardware id {hardware_id} has no product line")
    return delegations.roles[name]
