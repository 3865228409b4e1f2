"""Offline verification of a release bundle against a trusted root.

Steps (TUF specification 5.3-5.6 applied to what the bundle carries):

1. Start from the trusted root. If the bundle carries a new root, it must be
   the next version, signed by a threshold of the trusted root's keys and of
   its own (5.3.4-5.3.5); it then becomes the trusted root.
2. The delegating targets (the bundle's new ``targets``, else its
   ``context/targets.json``, else one supplied by the caller) must carry a
   threshold of signatures by the root's targets keys.
3. Every delegated role must carry a threshold of signatures by the keys its
   delegation lists, must not be expired, and may list only paths its
   delegation allows; every firmware and delta target must carry valid
   ``custom`` fields.
4. Blob lengths and hashes were already checked by ``read_bundle``.

``verify_bundle`` raises on the first failure and never writes anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, TargetFile, Targets

from signing._bundle import ReleaseBundle
from signing._ceremony import verify_root_update
from tufota_core import DeltaInfo, FirmwareInfo, InputError, VerificationError, is_delta_custom


@dataclass(frozen=True)
class BundleCheck:
    """What a verified bundle would change."""

    root_version: int | None
    targets_version: int | None
    roles: dict[str, int]
    firmware: tuple[tuple[TargetFile, FirmwareInfo], ...]
    signatures: dict[str, tuple[int, int]]  # role -> (valid signatures, threshold)
    deltas: tuple[tuple[TargetFile, DeltaInfo], ...] = ()


def verify_delegate(
    delegator: Metadata[Root] | Metadata[Targets], name: str, md: Metadata[Targets]
) -> None:
    """Check that ``md`` carries the threshold of signatures ``delegator`` requires for ``name``.

    Raises:
        VerificationError: too few valid signatures, or ``name`` is not delegated.
    """
    try:
        delegator.verify_delegate(name, md)
    except UnsignedMetadataError as e:
        raise VerificationError(f"{name}: {e}") from e
    except ValueError as e:  # no such delegation
        raise VerificationError(f"{name} is not delegated: {e}") from e


def verify_bundle(
    bundle: ReleaseBundle,
    trusted_root: Metadata[Root],
    now: datetime,
    targets: Metadata[Targets] | None = None,
) -> BundleCheck:
    """Verify ``bundle`` offline (see the module docstring).

    Args:
        bundle: An open bundle from ``read_bundle``.
        trusted_root: The root the release engineer trusts.
        now: The time to check expiry against.
        targets: Current top-level targets, when the bundle carries none.

    Raises:
        VerificationError: a signature, threshold, expiry or path check failed.
        InputError: a firmware target's custom fields are malformed, or there
            is no targets metadata to check the roles against.
    """
    root = trusted_root
    signatures: dict[str, tuple[int, int]] = {}
    if bundle.root is not None:
        verify_root_update(root, bundle.root, now)
        root = bundle.root
        result = root.signed.get_verification_result(Root.type, root.signed_bytes, root.signatures)
        signatures[Root.type] = (len(result.signed), result.threshold)
    delegator = bundle.targets or bundle.context_targets or targets
    if delegator is None:
        if bundle.roles:
            raise InputError(
                "the bundle carries no targets metadata to check its roles against; "
                "give the current metadata (--repo or --metadata)"
            )
    else:
        verify_delegate(root, "targets", delegator)
        if delegator.signed.expires <= now:
            raise VerificationError(f"targets expired at {delegator.signed.expires}")
        result = root.signed.get_verification_result(
            Targets.type, delegator.signed_bytes, delegator.signatures
        )
        signatures[Targets.type] = (len(result.signed), result.threshold)
    firmware: list[tuple[TargetFile, FirmwareInfo]] = []
    deltas: list[tuple[TargetFile, DeltaInfo]] = []
    for name, md in sorted(bundle.roles.items()):
        assert delegator is not None
        verify_delegate(delegator, name, md)
        result = delegator.signed.get_verification_result(name, md.signed_bytes, md.signatures)
        signatures[name] = (len(result.signed), result.threshold)
        if md.signed.expires <= now:
            raise VerificationError(f"{name} expired at {md.signed.expires}")
        delegations = delegator.signed.delegations
        assert delegations is not None
        assert delegations.roles is not None
        role = delegations.roles[name]
        for path in md.signed.targets:
            if not role.is_delegated_path(path):
                raise VerificationError(f"{name} may not sign {path}")
    blob_paths = {t.path for t, _ in bundle.blobs}
    for _name, md in sorted(bundle.roles.items()):
        for path, target in sorted(md.signed.targets.items()):
            if path in blob_paths:
                if is_delta_custom(target.custom):
                    deltas.append((target, DeltaInfo.from_custom(target.custom)))
                    continue
                firmware.append((target, FirmwareInfo.from_custom(target.custom)))
    return BundleCheck(
        root_version=None if bundle.root is None else bundle.root.signed.version,
        targets_version=None if bundle.targets is None else bundle.targets.signed.version,
        roles={n: md.signed.version for n, md in bundle.roles.items()},
        firmware=tuple(firmware),
        signatures=signatures,
        deltas=tuple(deltas),
    )
