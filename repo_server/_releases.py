"""``tufota release add``: sign and publish a release on the embedded default in one step.

This is the shortcut for ``release sign`` + ``release upload`` on the
one-machine layout: keys come from the signing directory beside ``REPO``
(never from the server's state). A hardware id seen for the first time gets
its product-line delegation, keyed to a newly generated key of its own
(``release-<hw>``) and signed by the targets key. The result goes through the same verifying
``Publisher.publish`` as any upload.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tuf.api.metadata import Metadata, Targets

from repo_server._layout import Passphrase, Repository
from repo_server._publisher import Blob, RepoState, target_storage_key
from signing import (
    DeltaRelease,
    add_deltas,
    add_product_line,
    add_release,
    empty_delegated,
    load_signer,
    sign_all,
)
from staging import ReleaseCatalog
from tufota_core import (
    FirmwareInfo,
    NotFoundError,
    format_time,
    is_delta_custom,
    product_role,
    utcnow,
)

logger = logging.getLogger(__name__)


def release_catalog(state: RepoState) -> ReleaseCatalog:
    """Every signed firmware release of the published repository, per hardware id."""
    prefix = product_role("x")[:-1]
    return ReleaseCatalog.from_targets(
        (path, target.custom)
        for name, role in state.roles.items()
        if name.startswith(prefix)
        for path, target in role.signed.targets.items()
    )


@dataclass(frozen=True)
class ReleaseResult:
    """What ``add_release_locally`` published."""

    target_path: str
    length: int
    sha256: str
    new_product_line: bool
    deltas: tuple[DeltaRelease, ...] = ()  # made for --delta-from; target None: not published


def add_release_locally(
    repo: Repository,
    firmware: Path,
    info: FirmwareInfo,
    passphrase: Passphrase,
    delta_from: Sequence[tuple[str, Path | None]] = (),
) -> ReleaseResult:
    """Sign ``firmware`` with the product line's keys from the signing directory; publish it.

    ``delta_from`` lists (version, image file or None) of earlier releases to
    publish deltas from, in the same role version; None reads that release's
    image from the repository.

    Raises:
        NotFoundError: the firmware file is missing.
        ConflictError: the version is not newer than the last release.
        VerificationError: a wrong passphrase or a signature that does not verify.
    """
    if not firmware.is_file():
        raise NotFoundError(f"firmware file {firmware} does not exist")
    now = utcnow()
    state = repo.verified_state()  # offline keys sign on top of it: never unverified
    role = product_role(info.hardware_id)
    delegations = state.targets.signed.delegations
    is_new = delegations is None or delegations.roles is None or role not in delegations.roles
    new_targets = None
    if is_new:
        # The targets keys first: a refused passphrase leaves no new key file behind.
        targets_signers = [load_signer(repo.key(k), passphrase) for k in repo.config.targets_keys]
        new_targets = add_product_line(
            state.targets,
            info.hardware_id,
            [repo.new_product_key(info.hardware_id, passphrase).key],
            1,
            now,
            repo.expiry,
        )
        sign_all(new_targets, targets_signers)
    product = state.roles.get(role) or _first_version(repo)
    signed_info = FirmwareInfo(
        hardware_id=info.hardware_id,
        version=info.version,
        severity=info.severity,
        cvss=info.cvss,
        fixes=info.fixes,
        notes=info.notes,
        released=format_time(now),
    )
    product, target = add_release(product, firmware, signed_info, now, repo.expiry)
    with tempfile.TemporaryDirectory(prefix="tufota-delta-") as work:
        sources = [
            (version, path or _stored_image(repo, product, info.hardware_id, version, Path(work)))
            for version, path in delta_from
        ]
        deltas = add_deltas(product, target, firmware, sources, Path(work))
        blobs = [Blob(target, path=firmware)]
        blobs += [Blob(d.target, path=d.path) for d in deltas if d.target is not None]
        product_keys = repo.product_key_files(new_targets or state.targets, info.hardware_id)
        sign_all(product, [load_signer(k, passphrase) for k in product_keys])
        repo.publisher(passphrase).publish({role: product}, blobs, new_targets)
    logger.info("published %s (%d bytes)", target.path, target.length)
    return ReleaseResult(target.path, target.length, target.hashes["sha256"], is_new, tuple(deltas))


def _stored_image(
    repo: Repository, product: Metadata[Targets], hardware_id: str, version: str, work: Path
) -> Path:
    """The published image of ``version``, copied out of storage into ``work``."""
    for t in product.signed.targets.values():
        if isinstance(t.custom, dict) and t.custom.get("version") == version:
            if is_delta_custom(t.custom):
                continue
            path = work / f"source-{version}"
            path.write_bytes(repo.storage.get(target_storage_key(t)))
            return path
    raise NotFoundError(f"{hardware_id} has no published release {version} to make a delta from")


def _first_version(repo: Repository) -> Metadata[Targets]:
    md = empty_delegated(utcnow(), repo.expiry.product)
    md.signed.version = 0  # add_release bumps it to 1
    return md
